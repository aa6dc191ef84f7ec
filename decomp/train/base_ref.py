"""The base a checkpoint of adapters or a head was trained on: its path and a content hash.

A run that trains LoRA adapters or the LM head alone (``finetune.trains`` = ``lora``,
``lora+lm_head``, ``head``) saves only what trains (the ``model`` item's ``params``) and the
optimizer state: its frozen weights are the base's, read from the base again on resume and when
the run is opened, so a checkpoint of a 0.6B LoRA run is megabytes, not the base's gigabytes.
Each such checkpoint records its base (``meta['base']`` = :func:`reference`), and restoring
checks it (:func:`check`): a base that moved, was deleted or changed is a
:class:`~decomp.train.errors.BaseChangedError` naming it, never a run that silently scores with
other weights. A random-shape model (``model=random``) records no path: its frozen weights are
drawn again from the config's seed.

The hash is SHA-256 over the base directory's files (relative names and contents; hidden files
such as the cache's manifest are skipped). Each file's digest is remembered by path, size and
modification time under ``$DECOMP_CACHE``, so a multi-gigabyte base is read once, not at every
save and restore.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from decomp.train import cache
from decomp.train import config as config_lib
from decomp.train import logs
from decomp.train.errors import BaseChangedError

DIGESTS_FILE = 'file_digests.json'  # under the cache dir: {path: [size, mtime_ns, sha256]}


def saves_frozen(cfg: config_lib.TrainConfig) -> bool:
  """Whether a checkpoint of ``cfg`` holds the frozen weights too: only when the body trains
  (``full``: what stays frozen is small); adapters and heads restore their base from it."""
  return cfg.finetune.mode == 'full'


def _base_files(directory: str) -> list[str]:
  files = []
  for root, dirs, names in os.walk(directory):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    files.extend(os.path.relpath(os.path.join(root, n), directory) for n in sorted(names)
                 if not n.startswith('.') and not n.endswith('.lock'))
  return files


def content_hash(directory: str) -> str:
  """SHA-256 over the names and contents of ``directory``'s files (hex); file digests are cached
  by (path, size, mtime)."""
  memo_path = os.path.join(cache.cache_dir(), DIGESTS_FILE)
  try:
    memo = logs.read_json(memo_path)
  except (FileNotFoundError, ValueError):
    memo = {}
  changed = False
  total = hashlib.sha256()
  for relative in _base_files(directory):
    path = os.path.abspath(os.path.join(directory, relative))
    stat = os.stat(path)
    known = memo.get(path)
    if known and known[:2] == [stat.st_size, stat.st_mtime_ns]:
      digest = known[2]
    else:
      digest = cache.file_sha256(path)
      memo[path] = [stat.st_size, stat.st_mtime_ns, digest]
      changed = True
    total.update(f'{relative}\0{digest}\n'.encode())
  if changed:
    try:
      logs.write_json_atomic(memo_path, memo)
    except OSError:  # a read-only cache: the next hash reads the files again
      pass
  return total.hexdigest()


def reference(directory: str | None) -> dict[str, Any]:
  """What a checkpoint records of its base: ``{'path', 'sha256'}`` (both None for random
  weights drawn from the config's seed)."""
  if directory is None:
    return {'path': None, 'sha256': None}
  directory = os.path.abspath(directory)
  return {'path': directory, 'sha256': content_hash(directory)}


def check(recorded: dict[str, Any] | None, directory: str | None = None) -> str | None:
  """The base directory to read frozen weights from, checked against the checkpoint's record.

  Args:
    recorded: the checkpoint's ``meta['base']``.
    directory: where the base is now (default: the recorded path); another path with the same
      content is accepted (e.g. a moved cache).

  Raises:
    BaseChangedError: the checkpoint records no base, or the base is missing or changed.
  """
  if not recorded:
    raise BaseChangedError('the checkpoint holds neither the frozen weights nor a reference to '
                           'its base: it cannot be restored')
  if recorded['path'] is None:
    if directory is not None:
      raise BaseChangedError(f'the checkpoint was trained on random weights, not on {directory}')
    return None
  directory = os.path.abspath(directory or recorded['path'])
  moved = '' if directory == recorded['path'] else f' (recorded at {recorded["path"]})'
  if not os.path.isdir(directory):
    raise BaseChangedError(
        f'the base model {directory}{moved} the checkpoint was trained on is gone (moved or '
        'deleted): a checkpoint of adapters or a head holds only what trained, so its base must '
        'stay where it was (a playground base is rebuilt by training or evaluating the run)')
  now = content_hash(directory)
  if now != recorded['sha256']:
    raise BaseChangedError(
        f'the base model {directory}{moved} changed since the checkpoint was trained on it (its '
        f'files hash to sha256 {now[:12]}..., the checkpoint recorded {recorded["sha256"][:12]}'
        '...): the adapters would run on other weights; restore the base the run was trained on')
  return directory
