"""Which code a config makes a process run, and whether it comes from installed packages.

A config's ``objective``, ``weight`` and ``direction`` take registered names or import paths
(``'package.module:attribute'``); resolving an import path imports that module, which runs its
top-level code. A workdir's ``config.json`` is therefore code: training, evaluating or reranking
a workdir someone sent you imports what its config names (see ``docs/trust.md``).

:func:`check_trusted_import_paths` is the guard for a received workdir: import paths whose
module comes from the installed packages (site-packages, the standard library, decomp itself)
pass; a module that would be imported from anywhere else (the current directory, the workdir, a
folder on ``PYTHONPATH``) is refused by name unless the caller allows code (the command-line
flag proposed for it is ``--allow-code``). Nothing is imported to find out: the module's file
is located with the import system's path finder, which reads no module.

>>> check_trusted_import_paths({'objective': 'sft', 'weight': 'decomp.weights:sft'})
{'weight': 'decomp.weights:sft'}
"""

from __future__ import annotations

import dataclasses
import importlib.machinery
import os
import site
import sys
import sysconfig
from typing import Any, Mapping

# The config fields that may name code by import path.
IMPORT_PATH_FIELDS = ('objective', 'weight', 'direction')
ALLOW_CODE_FLAG = '--allow-code'


class UntrustedCodeError(ValueError):
  """A config names code that is not part of the installed packages."""


def _is_import_path(spec: Any) -> bool:
  module, sep, attribute = spec.partition(':') if isinstance(spec, str) else ('', '', '')
  return bool(sep and module and attribute)


def import_paths(config: Any) -> dict[str, str]:
  """``{field: 'package.module:attribute'}`` of the fields of ``config`` (a mapping such as a
  workdir's ``config.json``, or a ``TrainConfig``) that name code by import path."""
  section = getattr(config, 'objective', None)
  if dataclasses.is_dataclass(section) and not isinstance(config, Mapping):  # a TrainConfig
    values = {'objective': section.name, 'weight': section.weight,
              'direction': section.direction}
  elif isinstance(config, Mapping) and isinstance(config.get('objective'), Mapping):
    section = config['objective']  # a config.json with sections
    values = {'objective': section.get('name'), 'weight': section.get('weight'),
              'direction': section.get('direction')}
  elif isinstance(config, Mapping):  # a flat config.json of an earlier version
    values = {field: config.get(field) for field in IMPORT_PATH_FIELDS}
  else:
    raise TypeError(f'expected a config mapping or TrainConfig, got {type(config).__name__}')
  return {field: value for field, value in values.items() if _is_import_path(value)}


def _installed_roots() -> list[str]:
  """Folders whose modules count as installed: the interpreter's library and site-packages
  (of the virtual environment and its base) and the folder holding decomp itself."""
  roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
  for key in ('stdlib', 'platstdlib', 'purelib', 'platlib'):
    path = sysconfig.get_paths().get(key)
    if path:
      roots.add(path)
  try:
    roots.update(site.getsitepackages())
  except AttributeError:  # pragma: no cover - some embedded interpreters lack it
    pass
  if site.ENABLE_USER_SITE and site.getusersitepackages():
    roots.add(site.getusersitepackages())
  roots.add(os.path.dirname(os.path.abspath(__file__)))  # decomp's own modules
  return sorted(os.path.realpath(r) for r in roots if r)


def _top_level_location(module_name: str) -> str | None:
  """Where the top-level package of ``module_name`` is (its file or folder), without importing
  anything: an already imported module's file, else the path finder's answer over ``sys.path``
  in import order. None for a built-in module; raises ``LookupError`` when it is nowhere."""
  top = module_name.split('.')[0]
  module = sys.modules.get(top)
  if module is not None:
    location = getattr(module, '__file__', None)
    if location is None and getattr(module, '__path__', None):
      location = next(iter(module.__path__), None)
    if location is None:
      return None  # built in (sys, builtins) or frozen
    return location
  if top in sys.builtin_module_names:
    return None
  spec = importlib.machinery.PathFinder.find_spec(top, sys.path)
  if spec is None:
    frozen = importlib.machinery.FrozenImporter.find_spec(top)
    if frozen is not None:
      return None
    raise LookupError(f'no module named {top!r} on sys.path')
  if spec.origin not in (None, 'namespace') and os.path.exists(spec.origin):
    return spec.origin
  locations = list(spec.submodule_search_locations or [])
  return locations[0] if locations else spec.origin


def module_origin(module_name: str) -> tuple[bool, str]:
  """``(installed, where)``: whether ``module_name`` would be imported from the installed
  packages, and from which file or folder (``'built in'`` for built-in modules)."""
  try:
    location = _top_level_location(module_name)
  except LookupError as e:
    return False, str(e)
  if location is None:
    return True, 'built in'
  real = os.path.realpath(location)
  installed = any(real == root or real.startswith(root + os.sep) for root in _installed_roots())
  return installed, location


def check_trusted_import_paths(config: Any, *, allow_code: bool = False) -> dict[str, str]:
  """The import paths ``config`` names (``{field: path}``), after checking that each module
  comes from the installed packages.

  Call it before resolving the objective of a config you did not write (a received workdir's
  ``config.json``): a module found in the current directory, the workdir or another folder on
  ``sys.path`` would run as soon as the objective is resolved.

  Raises:
    UntrustedCodeError: naming every import path whose module is not installed (or not found),
      unless ``allow_code``.
  """
  named = import_paths(config)
  if allow_code:
    return named
  refused = []
  for field, path in named.items():
    installed, where = module_origin(path.partition(':')[0])
    if not installed:
      refused.append(f'{field}={path} ({where})')
  if refused:
    raise UntrustedCodeError(
        'the config names code that is not from an installed package, which would run on '
        f'import: {"; ".join(refused)}. Run it only if you trust where the config came from '
        f'(pass {ALLOW_CODE_FLAG}); see docs/trust.md')
  return named
