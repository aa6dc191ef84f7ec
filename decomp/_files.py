"""Files that are whole or absent: written to a temporary sibling, fsynced, renamed into place.

A reader, or a run killed mid-write, sees the old file or the new one, never half of one: the
training logs, checkpoints' metadata and rerank outputs all write through here.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Callable


def fsync_dir(path: str) -> None:
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:  # pragma: no cover - e.g. platforms without directory fds
    return
  try:
    os.fsync(fd)
  except OSError:  # pragma: no cover
    pass
  finally:
    os.close(fd)


def write_atomic(path: str, write: Callable[[Any], None], *, binary: bool = False) -> None:
  """Calls ``write(file)`` on a temporary sibling of ``path``, fsyncs it, renames it into place.

  A reader (or a run killed mid-write) sees the old file or the new one, never half of one.
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  # The suffix keeps the real extension (np.savez appends '.npz' to names without it).
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path),
                             suffix='.tmp' + os.path.splitext(path)[1])
  try:
    os.fchmod(fd, 0o644)  # readable like any other log file (mkstemp creates it 0600)
    with os.fdopen(fd, 'wb' if binary else 'w') as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    if isinstance(e, OSError) and e.filename is None:  # a failed write (a full disk): say where
      raise OSError(e.errno, e.strerror, path) from e
    raise
  fsync_dir(directory)


def make_writable_dir(path: str, what: str) -> None:
  """Creates directory ``path`` if needed and checks that files can be written in it, before any
  work; ValueError ``'<what>: ...'`` naming the reason otherwise."""
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise ValueError(f'{what}: cannot create {path} ({e.strerror})') from None
  if not os.access(path, os.W_OK | os.X_OK):
    raise ValueError(f'{what}: {path} is not writable')
