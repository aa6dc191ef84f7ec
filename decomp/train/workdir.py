"""Rules of a run's workdir: one run at a time, and a checkpoint always has its config.

* :class:`WorkdirLock` -- ``<workdir>/run.lock`` holds the pid and host of the run using the
  workdir (an advisory ``flock``, which the kernel releases when the holder dies, even by
  SIGKILL). A second run is refused with the holder's pid and host; a lock file left by a dead
  run is taken over with a message. The file is removed when the run ends.
* :func:`check_resumable` -- a workdir's ``config.json`` must agree with the new config on every
  key that shapes training, and checkpoints without a ``config.json`` are refused (any
  shape-compatible config could otherwise take them over).
* ``config.json`` is written by ``train`` only once the run can start (after every check, the
  model build and the restore), so a failed start leaves a workdir a corrected command may use.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time

from decomp.train import checkpoint as ckpt_lib
from decomp.train import config as config_lib
from decomp.train import logs
from decomp.train.errors import WorkdirLockedError

LOCK_FILE = 'run.lock'

# Which config fields may differ between a run and its resumption is metadata on the fields
# (``knob(resume=True)``, read by ``config.free_on_resume``): they change no trained value.
# ``optim.steps`` is not among them (it sets the learning-rate schedule of every step);
# ``optim.on_nonfinite`` is, so that a diverged run can be resumed skipping the bad updates.

_log = logging.getLogger(__name__)


def checkpoint_steps(workdir: str) -> list[int]:
  """Steps with a checkpoint directory in ``workdir`` (complete or not; no Orbax involved)."""
  directory = os.path.join(workdir, ckpt_lib.CHECKPOINT_DIR)
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory)
                if name.isdigit() and os.path.isdir(os.path.join(directory, name)))


def check_resumable(workdir: str, cfg: config_lib.TrainConfig) -> None:
  """A workdir's config.json must agree with ``cfg`` on everything that shapes the run; a
  workdir with checkpoints must have its config.json."""
  path = os.path.join(workdir, logs.CONFIG_FILE)
  if not os.path.exists(path):
    steps = checkpoint_steps(workdir)
    if steps:
      raise ValueError(f'{workdir} holds checkpoints (steps {steps}) but no {logs.CONFIG_FILE}: '
                       'the config they were trained with is unknown; put its config.json back '
                       'or use a new workdir')
    return
  from decomp.train.overrides import from_file
  old = config_lib.flat_dict(from_file(path))
  new = config_lib.flat_dict(cfg)
  free = config_lib.free_on_resume()
  diff = sorted(k for k in set(old) | set(new) if k not in free and old.get(k) != new.get(k))
  if diff:
    details = ', '.join(f'{k}: {old.get(k)!r} -> {new.get(k)!r}' for k in diff)
    raise ValueError(f'{workdir} holds a run with a different config ({details}); use a new '
                     'workdir or the same config')


def _holder(text: str) -> str:
  if not text.strip():
    return 'a run that is starting'
  try:
    info = json.loads(text)
    return f'pid {info["pid"]} on host {info["host"]} (since {info.get("since", "?")})'
  except (ValueError, KeyError, TypeError):
    return repr(text[:80])


class WorkdirLock:
  """An exclusive lock on a workdir for the lifetime of a run (context manager).

  Raises:
    WorkdirLockedError: on entry, when a live run holds the workdir.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd: int | None = None

  def acquire(self) -> None:
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = _holder(os.pread(fd, 4096, 0).decode('utf-8', 'replace'))
        os.close(fd)
        raise WorkdirLockedError(
            f'{os.path.dirname(self.path)} is in use by another run: {holder} (lock file '
            f'{self.path}); wait for it to end or use another workdir') from None
      except OSError as e:  # a file system without locks (some network mounts): say so, go on
        os.close(fd)
        os.remove(self.path)
        _log.warning('%s: cannot lock the workdir (%s); make sure no other run uses it',
                     self.path, e)
        return
      try:  # the file we locked may have been removed by a run that just ended: retry
        same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    previous = os.pread(fd, 4096, 0).decode('utf-8', 'replace').strip()
    if previous:  # written by a run that died without removing it (the kernel freed the lock)
      _log.warning('%s: taking over the stale lock of %s, which no longer runs', self.path,
                   _holder(previous))
    record = json.dumps({'pid': os.getpid(), 'host': socket.gethostname(),
                         'since': time.strftime('%Y-%m-%dT%H:%M:%S')}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, record + b'\n', 0)
    os.fsync(fd)
    self._fd = fd

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      os.remove(self.path)  # while still holding it: a waiting run then locks a fresh file
    except FileNotFoundError:
      pass
    os.close(self._fd)
    self._fd = None

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()
