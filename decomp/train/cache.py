"""The local cache of built artefacts: the playground tokenizer and base checkpoints.

``$DECOMP_CACHE`` or ``~/.cache/decomp``; every entry is built once, atomically, under a lock, so
parallel runs of a sweep and the processes of a multi-host run share one build.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Callable


def cache_dir() -> str:
  """``$DECOMP_CACHE`` or ``~/.cache/decomp``: built tokenizers and base checkpoints."""
  return os.environ.get('DECOMP_CACHE') or os.path.join(os.path.expanduser('~'), '.cache',
                                                         'decomp')


def build_once(path: str, build: Callable[[str], Any]) -> str:
  """Builds ``path`` (a directory) once: into a temporary sibling, then an atomic rename, so a
  killed build never leaves a half-written directory behind. Concurrent callers (parallel runs
  of a sweep, the processes of a multi-host run) wait on a lock file and reuse the result."""
  import fcntl
  import shutil
  if os.path.isdir(path):
    return path
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  with open(path + '.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the holder exits, even if killed
    try:
      if os.path.isdir(path):
        return path
      tmp = tempfile.mkdtemp(dir=parent, prefix='.' + os.path.basename(path) + '.')
      try:
        build(tmp)
        os.rename(tmp, path)
      finally:
        shutil.rmtree(tmp, ignore_errors=True)
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
  return path


def playground_tokenizer_dir() -> str:
  """The playground's word-level tokenizer, built once under :func:`cache_dir`."""
  from decomp.data import tokenizer as tokenizer_lib
  from decomp.train.config import config_hash
  key = config_hash({'vocabulary': tokenizer_lib.vocabulary()})
  return build_once(os.path.join(cache_dir(), f'tokenizer-{key}'),
                     lambda d: tokenizer_lib.build_tokenizer(d))
