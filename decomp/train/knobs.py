"""The machinery of config sections: a field with its checks and meaning (:func:`knob`), and
:class:`Section`, which checks every field of a frozen section dataclass when it is built."""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from typing import Any, Mapping


def knob(default, *, min=None, max=None, below=None, above=None, choices=None,
         resume: bool = False, evaluate: bool = False, shape: bool = False):
  """A config field with its checks and meaning.

  Args:
    min / max: inclusive bounds; above / below: exclusive bounds (numbers must be finite).
    choices: the allowed values.
    resume: may differ between a run and its resumption (changes no trained value).
    evaluate: may differ when a finished run is evaluated again (``evaluate_workdir``).
    shape: a random model's shape (a checkpoint fixes its own: refused with a directory).
  """
  meta = dict(min=min, max=max, below=below, above=above, choices=choices, resume=resume,
              evaluate=evaluate, shape=shape)
  if isinstance(default, (dict, list)):
    return dataclasses.field(default_factory=lambda: json.loads(json.dumps(default)),
                             metadata=meta)
  return dataclasses.field(default=default, metadata=meta)


def defaults(section: type) -> dict[str, Any]:
  """``{field: default}`` of a section class (without building one)."""
  return {f.name: (f.default_factory() if f.default is dataclasses.MISSING else f.default)
          for f in dataclasses.fields(section)}


class ConfigError(ValueError):
  """A config value that cannot run (named: ``config section.field=value: why``)."""


def bad_value(path: str, value: Any, message: str) -> ConfigError:
  return ConfigError(f'config {path}={value!r}: {message}')


def _check_type(path: str, value: Any, annotation: Any) -> None:
  origin = typing.get_origin(annotation)
  if annotation is Any:
    return
  if annotation is bool:
    if not isinstance(value, bool):
      raise bad_value(path, value, 'expected true or false')
  elif annotation is int:
    if isinstance(value, bool) or not isinstance(value, int):
      raise bad_value(path, value, 'expected an integer')
  elif annotation is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise bad_value(path, value, 'expected a number')
    if not math.isfinite(value):
      raise bad_value(path, value, 'must be a finite number')
  elif annotation is str:
    if not isinstance(value, str):
      raise bad_value(path, value, 'expected a string')
  elif origin is tuple:
    item = typing.get_args(annotation)[0]
    if not isinstance(value, tuple):
      raise bad_value(path, value, 'expected a list')
    for element in value:
      _check_type(path, element, item)
  elif origin is dict or annotation is dict:
    if not isinstance(value, dict):
      raise bad_value(path, value, 'expected a mapping')


class Section:
  """Checks every field of a frozen section dataclass against its type and its knob metadata,
  then the section's own cross-field rules (``_check``)."""

  def __post_init__(self):
    hints = typing.get_type_hints(type(self))
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      path = f'{self.SECTION}.{f.name}' if self.SECTION else f.name
      _check_type(path, value, hints[f.name])
      meta = f.metadata
      if meta.get('choices') is not None and value not in meta['choices']:
        raise bad_value(path, value, f'expected one of {list(meta["choices"])}')
      for key, ok, word in (('min', lambda v, b: v >= b, '>='), ('max', lambda v, b: v <= b, '<='),
                            ('above', lambda v, b: v > b, '>'), ('below', lambda v, b: v < b, '<')):
        bound = meta.get(key)
        if bound is not None and isinstance(value, (int, float)) and not ok(value, bound):
          raise bad_value(path, value, f'must be {word} {bound}')
    self._check()

  def _check(self) -> None:
    pass

  def bad(self, name: str, message: str) -> ConfigError:
    return bad_value(f'{self.SECTION}.{name}', getattr(self, name), message)


def playground_types() -> dict[str, Any]:
  from decomp.data.playground import PlaygroundConfig
  return typing.get_type_hints(PlaygroundConfig)


def check_playground_options(options: Mapping[str, Any]) -> None:
  """The ``data.playground`` overrides name fields of PlaygroundConfig with values of their
  types (a list where the field is a tuple)."""
  types = playground_types()
  unknown = sorted(set(options) - set(types))
  if unknown:
    raise ConfigError(f'config data.playground: unknown PlaygroundConfig keys {unknown}; known: '
                      f'{sorted(types)}')
  for key, value in options.items():
    annotation = types[key]
    if typing.get_origin(annotation) is tuple:
      ok = isinstance(value, (list, tuple)) and all(
          isinstance(v, typing.get_args(annotation)[0]) for v in value)
    elif annotation is float:
      ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
      ok = isinstance(value, annotation) and not (annotation is int and isinstance(value, bool))
    if not ok:
      raise ConfigError(f'config data.playground.{key}={value!r}: expected {annotation}')
