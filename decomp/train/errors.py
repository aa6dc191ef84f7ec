"""Named failures of a run: what went wrong is the user's to fix, not a bug of decomp.

The CLI prints such an error as one ``error: <message>`` line (exit 2) instead of a traceback;
``ValueError`` / ``FileNotFoundError`` / ``KeyError`` raised by the config, data and model checks
are treated the same way (see ``decomp.train.__main__.USER_ERRORS``).
"""

from __future__ import annotations


class RunError(Exception):
  """A run cannot start or continue, for a reason its message names."""


class NonFiniteError(RunError):
  """A training step produced a non-finite loss, gradient or parameter (the run diverged).

  Attributes:
    step: the optimiser step whose update was non-finite.
    quantities: which of 'loss', 'gradient', 'parameters' were non-finite.
  """

  def __init__(self, message: str, *, step: int, quantities: tuple[str, ...]):
    super().__init__(message)
    self.step = step
    self.quantities = quantities


class WorkdirLockedError(RunError):
  """Another live run holds the workdir."""


class CorruptCheckpointError(RunError, ValueError):
  """A checkpoint step is corrupt or incomplete (checksum, metadata, read or finiteness)."""


class BaseChangedError(RunError, ValueError):
  """A checkpoint that holds only what trained (adapters, a head) cannot find the base it was
  trained on: the base directory moved, was deleted, or its files changed since."""


class CheckpointSaveError(RunError):
  """A checkpoint could not be written (a full disk, an unwritable workdir, a file-size limit);
  the checkpoints saved before it are intact."""


def user_errors() -> tuple[type[BaseException], ...]:
  """Exceptions whose message names a problem of the input, not a bug of decomp: a command
  prints them as one ``error: <message>`` line (:func:`report_error`)."""
  return (RunError, ValueError, KeyError, FileNotFoundError, NotADirectoryError,
          IsADirectoryError, PermissionError)


def report_error(error: BaseException) -> int:
  """Prints ``error`` as one ``error: <message>`` line on stderr; returns the exit status 2."""
  import sys
  message = error.args[0] if isinstance(error, KeyError) and error.args else error
  print('error: ' + ' '.join(str(message).split()), file=sys.stderr)
  return 2


class OutOfMemoryError(RunError):
  """The training step did not fit in device memory (XLA's ``RESOURCE_EXHAUSTED``, at compile
  time or in a step)."""


def out_of_memory(error: BaseException, cfg) -> OutOfMemoryError | None:
  """``error`` as an :class:`OutOfMemoryError` naming what to change, or None when it is not
  XLA running out of memory. ``cfg`` is the run's TrainConfig."""
  text = str(error)
  if 'RESOURCE_EXHAUSTED' not in text:
    return None
  detail = ' '.join(text.split())[:300]
  p, d = cfg.parallel, cfg.data
  return OutOfMemoryError(
      f'the training step does not fit in device memory ({detail}). Set remat=block (now '
      f'{p.remat}: recomputes each layer in the backward pass), doc_chunk=K (now {p.doc_chunk}: '
      f'K of the {d.list_size} documents of a list at a time), accumulate_steps, layout=fsdp, or '
      f'a smaller batch_size={d.batch_size} / negatives={d.negatives} / max_length='
      f'{d.max_length}; `python -m decomp.plan` with this run\'s --config and --set prints what '
      'fits. The workdir keeps its last checkpoint: the same command resumes from it')
