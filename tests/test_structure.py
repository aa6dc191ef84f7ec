"""Facts about the library's structure anyone can check: no import cycle among decomp's modules
(lazy, function-level imports included), reranking reaches neither the training loop nor the
playground base's recipe, and every module is short or says why it is not."""

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'decomp')
LONG_MODULE_REASON = '(Over 400 lines:'


def _modules() -> dict[str, str]:
  out = {}
  for folder, _, files in os.walk(ROOT):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        module = 'decomp.' + os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
        out[module.removesuffix('.__init__')] = path
  return out


def _graph() -> dict[str, set[str]]:
  """Module -> the decomp modules it imports anywhere in its file. ``from pkg import mod`` is an
  edge to ``pkg.mod`` only (not to ``pkg``'s ``__init__``)."""
  modules = _modules()
  graph = {}
  for module, path in modules.items():
    deps = set()
    for node in ast.walk(ast.parse(open(path, encoding='utf-8').read())):
      if isinstance(node, ast.Import):
        deps.update(a.name for a in node.names)
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        subs = [f'{node.module}.{a.name}' for a in node.names
                if f'{node.module}.{a.name}' in modules]
        deps.update(subs)
        if len(subs) < len(node.names):
          deps.add(node.module)
    graph[module] = {d for d in deps if d in modules and d != module}
  return graph


def _reachable(graph, start):
  seen, todo = set(), [start]
  while todo:
    module = todo.pop()
    if module in seen:
      continue
    seen.add(module)
    todo.extend(graph[module])
    parts = module.split('.')  # importing a.b.c runs a.b's __init__ first
    todo.extend('.'.join(parts[:i]) for i in range(2, len(parts)) if '.'.join(parts[:i]) in graph)
  return seen


def test_no_import_cycle_among_decomps_modules():
  graph = _graph()
  index, low, stack, on_stack, cycles = {}, {}, [], set(), []

  def visit(v):  # Tarjan's strongly connected components
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        cycles.append(sorted(component))

  for module in sorted(graph):
    if module not in index:
      visit(module)
  assert not cycles, cycles


@pytest.mark.parametrize('forbidden', ['decomp.train.loop', 'decomp.playground.base',
                                       'decomp.playground.sequences'])
def test_rerank_reaches_neither_the_training_loop_nor_the_base_recipe(forbidden):
  assert forbidden not in _reachable(_graph(), 'decomp.rerank')


def test_the_engine_never_imports_the_playground_base():
  graph = _graph()
  engine = [m for m in graph if m.startswith('decomp.train.') and m != 'decomp.train.loop']
  for module in engine:  # the loop is train()'s entry point: it resolves model=playground
    assert not any(d.startswith('decomp.playground') for d in graph[module]), module


def test_modules_are_short_or_say_why():
  long = []
  for module, path in _modules().items():
    text = open(path, encoding='utf-8').read()
    if text.count('\n') > 420 and LONG_MODULE_REASON not in text[:3000]:
      long.append(f'{module}: {text.count(chr(10))} lines')
  assert not long, long


FAMILY_WORDS = ('qwen', 'gemma', 'llama')
GENERIC_MODULES = ('decomp/models/reranker.py', 'decomp/models/build.py',
                   'decomp/models/prompt.py', 'decomp/models/backbone.py', 'decomp/train',
                   'decomp/rerank.py')


def _code_names(path: str) -> set[str]:
  """Identifiers and attribute names of a file's code (comments and strings left out)."""
  import tokenize
  with open(path, 'rb') as f:
    return {t.string for t in tokenize.tokenize(f.readline) if t.type == tokenize.NAME}


def test_generic_modules_name_no_model_family_in_code():
  """Families are reached through decomp.models.families (one table by `architectures`)."""
  repo = os.path.dirname(ROOT)
  paths = []
  for entry in GENERIC_MODULES:
    full = os.path.join(repo, entry)
    paths += ([os.path.join(full, f) for f in os.listdir(full) if f.endswith('.py')]
              if os.path.isdir(full) else [full])
  named = {os.path.relpath(p, repo): sorted(n for n in _code_names(p)
                                            if any(w in n.lower() for w in FAMILY_WORDS))
           for p in paths}
  assert not {p: n for p, n in named.items() if n}, named
