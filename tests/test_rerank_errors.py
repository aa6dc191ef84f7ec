"""Every refusal of ``python -m decomp.rerank`` is one ``error: <message>`` line and exit 2, and
everything that can be checked without the model (arguments, model path, preset, collections,
splits, rows, run files, output paths and names, tags, partial files) is checked before it
loads: here ``load_scorer`` fails the test if it is reached."""

import json
import os

import pytest

from decomp import rerank as rerank_lib

QWEN3_CONFIG = {'architectures': ['Qwen3ForCausalLM'], 'model_type': 'qwen3', 'vocab_size': 64,
                'hidden_size': 16, 'intermediate_size': 32, 'num_hidden_layers': 1,
                'num_attention_heads': 2, 'num_key_value_heads': 1, 'head_dim': 8}


def _collection(path, name=None, **edits):
  """A valid BEIR collection; ``edits`` replace whole files (relative path -> bytes or str)."""
  os.makedirs(path / 'qrels', exist_ok=True)
  files = {'corpus.jsonl': ''.join(json.dumps({'_id': f'd{i}', 'text': f'doc {i}'}) + '\n'
                                   for i in range(3)),
           'queries.jsonl': json.dumps({'_id': 'q0', 'text': 'a query'}) + '\n',
           'qrels/test.tsv': 'query-id\tcorpus-id\tscore\nq0\td0\t1\n'}
  if name:
    files['collection.json'] = json.dumps({'name': name})
  files.update(edits)
  for rel, content in files.items():
    if content is None:  # this file left out
      continue
    (path / rel).write_bytes(content if isinstance(content, bytes) else content.encode())
  return str(path)


@pytest.fixture
def world(tmp_path):
  model = tmp_path / 'model'
  model.mkdir()
  (model / 'config.json').write_text(json.dumps(QWEN3_CONFIG))
  (model / 'model.safetensors').write_bytes(b'')
  (model / 'tokenizer.json').write_text('{}')
  workdir = tmp_path / 'workdir'
  (workdir / 'checkpoints' / '3').mkdir(parents=True)
  (workdir / 'config.json').write_text('{}')
  run = tmp_path / 'bm25.trec'
  run.write_text(''.join(f'q0 Q0 d{i} {i + 1} {3 - i} bm25\n' for i in range(3)))
  return tmp_path, str(model), str(workdir), str(run)


def _case(root, model, workdir, run, name):
  """(argv, expected message fragment) of one refusal (its files written only for it)."""
  coll = lambda **edits: _collection(root / 'coll', **edits)
  base = lambda data=None, run_file=run, out=str(root / 'out.trec'): [
      '--model', model, '--data', data or coll(), '--run', run_file, '--out', out, '--quiet']
  on = lambda model_path: ['--model', model_path] + base()[2:]
  (root / 'afile').write_text('x')
  cases = {
      'missing collection': lambda: (base(str(root / 'nowhere')), 'not a directory'),
      'missing split': lambda: (base() + ['--split', 'dev'], "splits here: ['test']"),
      'bad split name': lambda: (base() + ['--split', '../x'], 'split'),
      'malformed corpus row': lambda: (
          base(coll(**{'corpus.jsonl': '{"_id": "d0", "text": \n'})), 'corpus.jsonl:1'),
      'non-UTF-8 row': lambda: (
          base(coll(**{'queries.jsonl': b'{"_id": "q0", "text": "\xff"}\n'})), 'queries.jsonl'),
      'NaN score in the run': lambda: (
          base(run_file=str(_write(root / 'nan.trec', 'q0 Q0 d0 1 nan bm25\n'))), 'nan.trec:1'),
      'torn run line': lambda: (base(run_file=str(_write(
          root / 'torn.trec', 'q0 Q0 d0 1 3 bm25\nq0 Q0 d1 2'))), 'torn.trec:2'),
      'missing run file': lambda: (base(run_file=str(root / 'none.trec')), 'none.trec'),
      'no qrels file': lambda: (base(coll(**{'qrels/test.tsv': None})), 'qrels'),
      'model not a directory': lambda: (on(str(root / 'nope')), 'not a directory'),
      'half-written model dir': lambda: (
          on(_model_without(root, model, 'model.safetensors')), 'safetensors'),
      'model dir without tokenizer': lambda: (
          on(_model_without(root, model, 'tokenizer.json')), 'no tokenizer'),
      'unsupported architecture': lambda: (
          on(_model_with(root, model, architectures=['Bert'])), 'Bert'),
      'unknown preset': lambda: (base() + ['--preset', 'nope'], 'unknown preset'),
      'preset with a workdir': lambda: (
          on(workdir) + ['--preset', 'gmr'], 'reads its own prompt preset'),
      'step missing from the workdir': lambda: (
          on(workdir) + ['--step', '999'], 'no checkpoint step 999'),
      'step with a model dir': lambda: (base() + ['--step', '3'], 'not a workdir'),
      'batch size 0': lambda: (base() + ['--batch-size', '0'], '--batch-size'),
      'top-k 0': lambda: (base() + ['--top-k', '0'], '--top-k'),
      'image size 0': lambda: (base() + ['--image-size', '0'], '--image-size'),
      'runs for collections': lambda: (base() + ['--run', run, run], '2 runs for 1 collections'),
      'tag with whitespace': lambda: (base() + ['--tag', 'my tag'], 'no whitespace'),
      'out is a directory': lambda: (base(out=str(root)), 'is a directory'),
      'out under a file': lambda: (base(out=str(root / 'afile' / 'out.trec')), 'cannot create'),
      'several collections into a file': lambda: (
          ['--model', model, '--data', coll(), _collection(root / 'other'), '--run', run,
           '--out', str(root / 'afile'), '--quiet'], 'this is a file'),
      'two collections with one name': lambda: (
          ['--model', model, '--data', _collection(root / 'a', name='same'),
           _collection(root / 'b', name='same'), '--run', run, '--out', str(root / 'outs'),
           '--quiet'], "two collections are named 'same'"),
      'corrupt partial file': lambda: (
          base(out=_partial(root, 'not json\n')), 'not a decomp rerank'),
      'partial of another rerank': lambda: (base(out=_partial(root, json.dumps(
          {'rerank': {'top_k': 5}}) + '\n')), 'top_k (5 -> 100)'),
  }
  return cases[name]()


def _write(path, text):
  path.write_text(text)
  return path


def _model_without(root, model, name):
  import shutil
  copy = root / f'model-without-{name}'
  shutil.copytree(model, copy)
  os.remove(copy / name)
  return str(copy)


def _model_with(root, model, **config):
  import shutil
  copy = root / 'model-edited'
  shutil.copytree(model, copy)
  (copy / 'config.json').write_text(json.dumps({**QWEN3_CONFIG, **config}))
  return str(copy)


def _partial(root, text):
  out = root / 'resumed.trec'
  (root / ('resumed.trec' + rerank_lib.PARTIAL_SUFFIX)).write_text(text)
  return str(out)


CASES = ['missing collection', 'missing split', 'bad split name', 'malformed corpus row',
         'non-UTF-8 row', 'NaN score in the run', 'torn run line', 'missing run file',
         'no qrels file', 'model not a directory', 'half-written model dir',
         'model dir without tokenizer', 'unsupported architecture', 'unknown preset',
         'preset with a workdir', 'step missing from the workdir', 'step with a model dir',
         'batch size 0', 'top-k 0', 'image size 0', 'runs for collections',
         'tag with whitespace', 'out is a directory', 'out under a file',
         'several collections into a file', 'two collections with one name',
         'corrupt partial file', 'partial of another rerank']


@pytest.mark.parametrize('name', CASES)
def test_refusals_are_one_line_before_the_model_loads(name, world, capsys, monkeypatch):
  root, model, workdir, run = world
  argv, fragment = _case(root, model, workdir, run, name)

  def no_model(*args, **kwargs):
    raise AssertionError('the model was loaded before the refusal')

  monkeypatch.setattr(rerank_lib, 'load_scorer', no_model)
  assert rerank_lib.main(argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: '), err
  assert fragment in err[0]
  assert not os.path.exists(root / 'out.trec') and not os.path.exists(root / 'outs' / 'same.trec')


def test_debug_shows_the_traceback(world):
  root, model, workdir, run = world
  argv, _ = _case(root, model, workdir, run, 'tag with whitespace')
  with pytest.raises(ValueError, match='no whitespace'):
    rerank_lib.main(argv + ['--debug'])


def test_notebook_call_refuses_batch_size_zero():
  with pytest.raises(ValueError, match='batch_size must be a positive integer'):
    rerank_lib.rerank('anywhere', 'q', ['d'], batch_size=0)
