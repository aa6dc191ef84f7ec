"""The local cache of built artefacts: the playground tokenizer and base checkpoints.

``$DECOMP_CACHE`` or ``~/.cache/decomp``; every entry is built once, atomically, under a lock, so
parallel runs of a sweep and the processes of a multi-host run share one build. Each entry holds
a manifest of its files' SHA-256; an entry built with a ``check`` is verified on every use
(manifest, then the check, e.g. loading it) and rebuilt, with a warning naming it, when corrupt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from typing import Any, Callable

MANIFEST = '.decomp-manifest.json'  # {relative path: sha256} of an entry's files

_log = logging.getLogger(__name__)


def cache_dir() -> str:
  """``$DECOMP_CACHE`` or ``~/.cache/decomp``: built tokenizers and base checkpoints."""
  return os.environ.get('DECOMP_CACHE') or os.path.join(os.path.expanduser('~'), '.cache',
                                                         'decomp')


def _digests(directory: str) -> dict[str, str]:
  out = {}
  for root, dirs, files in os.walk(directory):
    dirs.sort()
    for name in sorted(files):
      file = os.path.join(root, name)
      relative = os.path.relpath(file, directory)
      if relative == MANIFEST:
        continue
      out[relative] = file_sha256(file)
  return out


def file_sha256(path: str) -> str:
  """The SHA-256 of one file's contents (hex), read in 1 MiB blocks."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def entry_problem(path: str, check: Callable[[str], Any] | None = None) -> str | None:
  """Why the cache entry ``path`` cannot be used (a file changed or missing since it was built,
  or ``check(path)`` raised), or None when it is intact."""
  manifest = os.path.join(path, MANIFEST)
  if os.path.exists(manifest):
    try:
      with open(manifest) as f:
        recorded = json.load(f)
    except (OSError, ValueError) as e:
      return f'its manifest is unreadable ({e})'
    actual = _digests(path)
    changed = sorted(name for name, digest in recorded.items() if actual.get(name) != digest)
    if changed:
      return f'files changed or missing since it was built: {", ".join(changed[:5])}'
  if check is not None:
    try:
      check(path)
    except Exception as e:  # whatever a broken entry makes the loader raise
      return f'it does not load ({type(e).__name__}: {e})'
  return None


def build_once(path: str, build: Callable[[str], Any],
               check: Callable[[str], Any] | None = None) -> str:
  """Builds ``path`` (a directory) once: into a temporary sibling, then an atomic rename, so a
  killed build never leaves a half-written directory behind. Concurrent callers (parallel runs
  of a sweep, the processes of a multi-host run) wait on a lock file and reuse the result.

  With ``check`` (a function that raises on a broken entry, e.g. by loading it) an existing
  entry is verified first (:func:`entry_problem`) and a corrupt one rebuilt in its place."""
  import fcntl
  import shutil

  def problem() -> str | None:  # None: the entry is there and intact
    if not os.path.isdir(path):
      return 'missing'
    return None if check is None else entry_problem(path, check)

  if problem() is None:
    return path
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  with open(path + '.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the holder exits, even if killed
    try:
      found = problem()  # another process may have built (or repaired) it meanwhile
      if found is None:
        return path
      tmp = tempfile.mkdtemp(dir=parent, prefix='.' + os.path.basename(path) + '.')
      try:
        build(tmp)
        with open(os.path.join(tmp, MANIFEST), 'w') as f:
          json.dump(_digests(tmp), f, indent=1)
        if os.path.isdir(path):  # corrupt: swap the new build in, then drop the old one
          _log.warning('cache entry %s is corrupt (%s); rebuilt it', path, found)
          broken = f'{tmp}.corrupt-{time.strftime("%Y%m%dT%H%M%S")}'
          os.rename(path, broken)
          os.rename(tmp, path)
          shutil.rmtree(broken, ignore_errors=True)
        else:
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
                    lambda d: tokenizer_lib.build_tokenizer(d), check=tokenizer_lib.check_tokenizer)
