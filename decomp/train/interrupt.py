"""Ctrl-C (SIGINT) of the training CLI: a clean stop at any moment, one line, exit status 130.

Python turns SIGINT into a ``KeyboardInterrupt`` wherever the main thread happens to be (inside
an Orbax save, a log write, the lock file); and an interpreter that shuts down while XLA's
compile threads or Orbax's save threads still run can crash (a segfault, rc -11, after the
traceback). So the CLI (:func:`handling_sigint`) installs its own handler:

* inside the training loop (:func:`defer`), the first Ctrl-C only sets a flag the loop honours
  between steps (:func:`check`): it stops after the current step, its logs written, the
  asynchronous checkpoint finished and the workdir unlocked. A step that does not end within
  :data:`GRACE_S` (it is compiling) is stopped where it is;
* anywhere else (reading data, building the model, compiling), or on a second Ctrl-C, it raises
  :class:`Interrupted` at once; ``finally`` blocks still release the workdir.

The CLI then prints ``interrupted: <where>; rerun the same command to resume`` and leaves with
``os._exit(130)``: no interpreter shutdown, whose thread teardown is what crashed. The workdir
keeps its last complete checkpoint (a killed save leaves only a temporary directory, removed on
the next start), so the same command resumes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

EXIT_STATUS = 130  # 128 + SIGINT, what shells report for a process stopped by Ctrl-C


class Interrupted(KeyboardInterrupt):
  """Ctrl-C stopped the run; the message says where."""


_state = {'defer': False, 'requested': False}


# How long a deferred Ctrl-C waits for the loop to reach the end of its step: a step that is
# compiling (seconds to minutes) is stopped in the middle instead, which is safe too (the workdir
# survives even SIGKILL), just less tidy.
GRACE_S = 3.0


def _handler(signum, frame) -> None:
  if signum == signal.SIGINT and _state['defer'] and not _state['requested']:
    _state['requested'] = True  # the loop stops after this step; a second Ctrl-C stops now
    signal.signal(signal.SIGALRM, _handler)
    signal.setitimer(signal.ITIMER_REAL, GRACE_S)
    return
  raise Interrupted('stopped before the run finished' if signum == signal.SIGINT else
                    f'stopped in the middle of a step (compiling?) {GRACE_S:.0f} s after Ctrl-C')


@contextlib.contextmanager
def handling_sigint():
  """Installs the handler for the block (the main thread only; elsewhere a no-op)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = signal.signal(signal.SIGINT, _handler), signal.getsignal(signal.SIGALRM)
  _state.update(defer=False, requested=False)
  try:
    yield
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGINT, previous[0])
    signal.signal(signal.SIGALRM, previous[1])
    _state.update(defer=False, requested=False)


def defer(on: bool) -> None:
  """While on, a first Ctrl-C waits for :func:`check` (the training loop, between steps)."""
  _state['defer'] = on


def check(step: int, last_checkpoint: int | None) -> None:
  """Raises :class:`Interrupted` if Ctrl-C was pressed; ``step`` is the last finished step."""
  if _state['requested']:
    signal.setitimer(signal.ITIMER_REAL, 0)
    kept = (f'the last checkpoint is step {last_checkpoint}' if last_checkpoint
            else 'no checkpoint was saved yet')
    raise Interrupted(f'stopped after step {step}; {kept}')


def exit_interrupted(error: BaseException) -> None:
  """Prints the one line of an interrupted run and leaves at once with status 130 (no
  interpreter shutdown while XLA / Orbax threads may still run)."""
  where = str(error) if isinstance(error, Interrupted) and str(error) else (
      'stopped before the run finished')
  print(f'interrupted: {where}; rerun the same command to resume', file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(EXIT_STATUS)
