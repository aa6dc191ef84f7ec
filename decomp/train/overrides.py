"""From text to a :class:`~decomp.train.config.TrainConfig`: ``key=value`` overrides, config
files, and ``config.json`` files of earlier decomp versions.

A key is a full path (``optim.learning_rate``), a short key (a field name found in one section
only: ``learning_rate``, ``negatives``), a section name given a plain value (``model=DIR`` sets
``model.path``, ``data=DIR`` ``data.source``, ``finetune=lora`` ``finetune.trains``,
``objective=cl`` ``objective.name``), or a key of the flat configs before sections
(:data:`LEGACY_KEYS`: ``prompt``, ``pretrain_steps``, ``base_seed``, ``train_lm_head``, ...).
Mapping fields take a dotted sub-key (``mesh.data=4``, ``playground.tasks=t2t,t2i``) or JSON.

>>> cfg = apply_overrides(TrainConfig(), ['length_buckets=32,64', 'playground.tasks=t2t,t2i'])
>>> cfg.data.length_buckets, cfg.data.playground['tasks']
((32, 64), ['t2t', 't2i'])
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import json
import os
import typing
from typing import Any, Mapping, Sequence

from decomp.train.config import SECTIONS, TrainConfig, fields
from decomp.train.knobs import ConfigError, playground_types

# A section given a plain value sets this field of it.
SECTION_VALUE = {'model': 'path', 'data': 'source', 'finetune': 'trains', 'objective': 'name',
                 'readout': 'preset'}

# The keys of the flat config (decomp before sections) -> their path now. ``config.json`` files
# of earlier runs are migrated through the same table (``from_dict``).
LEGACY_KEYS = {
    'model': 'model.path', 'tokenizer': 'model.tokenizer', 'vision': 'model.vision',
    'dtype': 'model.dtype', 'param_dtype': 'model.param_dtype',
    'prompt': 'readout.preset', 'label_words': 'readout.label_words',
    'label_pooling': 'readout.label_pooling', 'label_head': 'readout.label_head',
    'finetune': 'finetune.trains', 'objective': 'objective.name', 'data': 'data.source',
    'playground': 'data.playground', 'steps': 'optim.steps',
    'learning_rate': 'optim.learning_rate', 'batch_size': 'data.batch_size',
    'pretrain_steps': 'base.steps', 'pretrain_learning_rate': 'base.learning_rate',
    'pretrain_batch_size': 'base.batch_size', 'pretrain_qa_per_group': 'base.qa_per_group',
    'pretrain_match_per_group': 'base.match_per_group',
    'pretrain_match_format': 'base.match_format',
    'pretrain_match_negatives': 'base.match_negatives',
    'pretrain_vision_steps': 'base.vision_steps', 'pretrain_freeze_vision': 'base.freeze_vision',
    'base_seed': 'base.seed', 'seed': 'seed', 'name': 'name',
}
# Legacy keys with no field of their own now (folded into another one).
FOLDED_KEYS = ('train_lm_head',)


def _paths() -> dict[str, Any]:
  return {path: f for path, f, _ in fields()}


def _short_keys() -> dict[str, str]:
  """Field name -> path, for names that occur in one section only (plus the legacy table)."""
  seen: dict[str, list[str]] = {}
  for path in _paths():
    seen.setdefault(path.rpartition('.')[2], []).append(path)
  short = {name: paths[0] for name, paths in seen.items() if len(paths) == 1}
  short.update(LEGACY_KEYS)
  return short


def resolve_key(key: str) -> tuple[str, str]:
  """``(path of a field, sub-key into a mapping field or '')`` of an override key."""
  paths = _paths()
  short = _short_keys()
  head, _, rest = key.partition('.')
  if head in SECTIONS and rest:  # section.field[.sub]
    name, _, sub = rest.partition('.')
    if f'{head}.{name}' in paths:
      return f'{head}.{name}', sub
    raise _unknown(key, [p for p in paths if p.startswith(head + '.')])
  if key in paths:
    return key, ''
  if key in SECTION_VALUE:
    return f'{key}.{SECTION_VALUE[key]}', ''
  if head in short:
    return short[head], rest
  raise _unknown(key, list(paths) + list(short))


def _unknown(key: str, names) -> KeyError:
  close = difflib.get_close_matches(key, list(names), n=3)
  hint = f'; did you mean {", ".join(close)}?' if close else ''
  return KeyError(f'unknown config key {key!r}{hint}')


def _annotation(path: str) -> Any:
  section, _, name = path.rpartition('.')
  owner = SECTIONS[section] if section else TrainConfig
  return typing.get_type_hints(owner)[name]


def _parse(path: str, text: str, annotation: Any) -> Any:
  """``text`` read as a value of ``annotation``."""
  def bad(kind):
    return ConfigError(f'config {path}: cannot read {text!r} as {kind}')
  stripped = text.strip()
  lowered = stripped.lower()
  if annotation is Any:  # a tri-state field ('auto', true, false)
    return {'true': True, 'false': False}.get(lowered, stripped)
  if annotation is bool:
    if lowered in ('1', 'true', 'yes', 'on'):
      return True
    if lowered in ('0', 'false', 'no', 'off'):
      return False
    raise bad('a boolean')
  if annotation is int:
    try:
      return int(stripped)
    except ValueError:
      raise bad('an integer') from None
  if annotation is float:
    try:
      return float(stripped)
    except ValueError:
      raise bad('a number') from None
  if typing.get_origin(annotation) is tuple:
    item = typing.get_args(annotation)[0]
    if stripped.startswith(('[', '(')):
      try:
        values = ast.literal_eval(stripped)
      except (ValueError, SyntaxError):
        raise bad('a list') from None
      values = values if isinstance(values, (list, tuple)) else (values,)
      return tuple(_parse(path, str(v), item) if not isinstance(v, item) else v for v in values)
    return tuple(_parse(path, part, item) for part in stripped.split(',') if part.strip())
  if annotation is dict:
    try:
      value = json.loads(stripped)
    except json.JSONDecodeError:
      raise bad('a JSON object') from None
    if not isinstance(value, dict):
      raise bad('a JSON object')
    return value
  return text


def _literal(text: str) -> Any:
  """A value inside a mapping field (``mesh.data=4``): a Python/JSON literal, else the text."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return {'true': True, 'false': False, 'null': None}.get(text.lower(), text)


def _playground_value(key: str, text: str) -> Any:
  types = playground_types()
  if key not in types:
    raise ConfigError(f'config data.playground: unknown PlaygroundConfig key {key!r}; known: '
                      f'{sorted(types)}')
  value = _parse(f'data.playground.{key}', text, types[key])
  return list(value) if isinstance(value, tuple) else value


def _with_values(cfg: TrainConfig, values: Mapping[str, Any]) -> TrainConfig:
  """``cfg`` with ``{path: value}`` set; every changed section is checked once, at the end."""
  sections: dict[str, dict[str, Any]] = {}
  top: dict[str, Any] = {}
  for path, value in values.items():
    section, _, name = path.rpartition('.')
    (sections.setdefault(section, {}) if section else top)[name] = value
  changes = {name: dataclasses.replace(getattr(cfg, name), **kw) for name, kw in sections.items()}
  return dataclasses.replace(cfg, **changes, **top)


def _fold_train_lm_head(trains: str, on: bool) -> str:
  mode = trains.split('+')[0]
  if mode == 'head':
    return 'head'
  return f'{mode}+lm_head' if on else mode


def apply_overrides(cfg: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
  """A copy of ``cfg`` with ``key=value`` overrides applied (keys: see the module docstring).

  Values are parsed to the field's type; lists take ``a,b`` or a literal ``[a, b]``; mapping
  fields take JSON or a dotted sub-key. The result is checked as a whole (ConfigError).
  """
  current = {path: value for path, _, value in fields(cfg)}
  values: dict[str, Any] = {}
  lm_head = None
  for item in overrides:
    if '=' not in item:
      raise ConfigError(f'override {item!r} is not of the form key=value')
    key, text = item.split('=', 1)
    key = key.strip()
    if key == 'train_lm_head':
      lm_head = _parse(key, text, bool)
      continue
    path, sub = resolve_key(key)
    if sub:
      if _annotation(path) is not dict:
        raise ConfigError(f'override {item!r}: {path!r} is not a mapping field')
      mapping = dict(values.get(path, current[path]))
      head, _, deeper = sub.partition('.')
      if deeper:
        raise ConfigError(f'override {item!r}: {path}.{head} is not a mapping')
      mapping[head] = (_playground_value(head, text) if path == 'data.playground'
                       else _literal(text))
      values[path] = mapping
    else:
      values[path] = _parse(path, text, _annotation(path))
  if lm_head is not None:
    trains = values.get('finetune.trains', current['finetune.trains'])
    values['finetune.trains'] = _fold_train_lm_head(trains, lm_head)
  return _with_values(cfg, values)


def migrate(data: Mapping[str, Any]) -> dict[str, Any]:
  """A flat ``config.json`` of decomp before sections -> the nested form (one way)."""
  nested: dict[str, Any] = {}
  paths = _paths()
  lm_head = bool(data.get('train_lm_head', False))
  for key, value in data.items():
    if key in FOLDED_KEYS:
      continue
    if key in LEGACY_KEYS:
      path = LEGACY_KEYS[key]
    else:
      matches = [p for p in paths if p.rpartition('.')[2] == key]
      if len(matches) != 1:
        raise _unknown(key, [p.rpartition('.')[2] for p in paths])
      path = matches[0]
    section, _, name = path.rpartition('.')
    (nested.setdefault(section, {}) if section else nested)[name] = value
  if lm_head:
    finetune = nested.setdefault('finetune', {})
    finetune['trains'] = _fold_train_lm_head(finetune.get('trains', 'full'), True)
  return nested


def from_dict(data: Mapping[str, Any], *, source: str = 'config') -> TrainConfig:
  """A config from its ``config.json`` mapping (nested; a flat one of an older decomp is
  migrated); unknown keys are errors naming ``source``."""
  if any(k not in SECTIONS and k not in ('name', 'seed') for k in data):
    try:
      data = migrate(data)
    except KeyError as e:
      raise KeyError(f'{source}: {e.args[0]}') from None
  kwargs: dict[str, Any] = {}
  for key, value in data.items():
    if key in SECTIONS:
      if not isinstance(value, Mapping):
        raise ConfigError(f'{source}: section {key!r} is not a mapping')
      section = SECTIONS[key]
      names = {f.name for f in dataclasses.fields(section)}
      unknown = [k for k in value if k not in names]
      if unknown:
        raise _unknown(f'{key}.{unknown[0]}', [f'{key}.{n}' for n in names])
      hints = typing.get_type_hints(section)
      kwargs[key] = section(**{k: tuple(v) if typing.get_origin(hints[k]) is tuple
                               and isinstance(v, list) else v for k, v in value.items()})
    else:
      kwargs[key] = value
  return TrainConfig(**kwargs)


def from_file(path: str) -> TrainConfig:
  """A config from a ``.json`` file (e.g. a workdir's ``config.json``) or a ``.py`` file whose
  ``get_config()`` returns a :class:`TrainConfig` (or a mapping of its fields)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'config file {path!r} does not exist')
  if path.endswith('.json'):
    try:
      with open(path, encoding='utf-8') as f:
        data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ConfigError(f'config file {path!r} is not valid JSON: {e}') from None
    if not isinstance(data, Mapping):
      raise ConfigError(f'config file {path!r} holds no JSON object')
    if 'architectures' in data:
      raise ConfigError(f'{path} is the config.json of a Hugging Face model, not of a decomp '
                        'run: pass the model as --set model=DIR and give the run its own workdir')
    return from_dict(data, source=path)
  if path.endswith('.py'):
    spec = importlib.util.spec_from_file_location('_decomp_user_config', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, 'get_config'):
      raise ConfigError(f'config file {path!r} defines no get_config()')
    cfg = module.get_config()
    if isinstance(cfg, Mapping):
      cfg = from_dict(cfg, source=path)
    if not isinstance(cfg, TrainConfig):
      raise ConfigError(f'{path}: get_config() returned {type(cfg).__name__}, not a '
                        'TrainConfig')
    return cfg
  raise ConfigError(f'config file {path!r}: expected a .json or .py file')
