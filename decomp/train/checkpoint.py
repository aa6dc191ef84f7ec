"""Orbax checkpoints of a training run: {model, optimizer, step and data position}.

A step holds two array items, ``model`` (``params``: trained weights, ``frozen``: the rest) and
``optimizer`` (``opt_state``), so the parameters restore alone (:class:`decomp.train.Run` never
builds an optimizer); checkpoints of earlier versions hold one item ``state`` with all three.
A run of adapters or a head saves no ``frozen``: its meta records the base instead
(:mod:`decomp.train.base_ref`), and a restore returns only the keys the step holds.
``meta`` is a small JSON dict (``step``, ``data_index``: the next training group to
read, and anything else the loop needs to continue exactly). Orbax writes each step to a
temporary directory and renames it when complete, so a run killed while saving leaves the
previous checkpoints intact. In a multi-host run every process calls :meth:`save` and
:meth:`restore`; Orbax writes each array shard and the metadata once.

Verification: once a step is on disk, process 0 writes ``<step>/decomp_checksums.json`` (size and
SHA-256 of every file of the step). :meth:`Checkpoints.restore` checks those checksums (when the
step has them: a run killed right after a save may not), Orbax's metadata and read, and that
every restored float is finite. A step failing any of these is reported in one line with its
path, and the restore falls back to the newest intact step.

(Over 400 lines: saving, the verified restore and the muting of Orbax's abandoned reads are one
concern, a checkpoint that is either intact or named.)
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import re
import shutil
import sys
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from decomp.train import logs
from decomp.train.errors import CheckpointSaveError, CorruptCheckpointError

CHECKPOINT_DIR = 'checkpoints'
CORRUPT_DIR = 'checkpoints_corrupt'  # where a training run moves the corrupt steps it skipped
MANIFEST_FILE = 'decomp_checksums.json'

_log = logging.getLogger(__name__)


class Checkpoints:
  """A thin wrapper around :class:`orbax.checkpoint.CheckpointManager` for one workdir.

  Args:
    workdir: the run's directory; checkpoints go to ``workdir/checkpoints/<step>/``.
    keep: how many most recent checkpoints to keep.
    async_save: write in a background thread (the device->host copy still happens in ``save``,
      so the saved buffers may be donated right after it returns).
    read_only: only read (nothing is created, cleaned up or saved).
  """

  def __init__(self, workdir: str, *, keep: int = 2, async_save: bool = True,
               read_only: bool = False):
    self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    if read_only:  # e.g. evaluating a run that may still be training: touch nothing
      options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    else:
      options = ocp.CheckpointManagerOptions(
          max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
          # A killed run can leave a half-written step directory behind; remove it on start.
          cleanup_tmp_directories=True)
    _quiet_closed_event_loop()
    try:
      self._manager = ocp.CheckpointManager(
          self.directory, options=options, item_handlers=_handlers())
    except OSError as e:  # e.g. an unwritable workdir: the directory cannot be created
      raise CheckpointSaveError(f'cannot create {self.directory}: {e.strerror}') from e
    self._read_only = read_only
    self._unverified: list[int] = []  # saved steps whose checksums are not written yet
    self._last_save: int | None = None  # the step of the latest save() (it may still run)
    self.skipped: list[int] = []  # corrupt steps the last restore() fell back from

  def latest_step(self) -> int | None:
    """The step of the newest complete checkpoint, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict) -> None:
    """Saves ``state`` (``{'params'[, 'frozen'], 'opt_state'}`` of jax arrays) as the items
    ``model`` and ``optimizer``, and ``meta`` (JSON-able dict), as ``step``."""
    meta = dict(meta, step=int(step))
    self.wait()  # what save() does first anyway: the last step is done
    items = {item: ocp.args.StandardSave({k: state[k] for k in keys if k in state})
             for item, keys in ITEMS.items()}
    self._unverified.append(int(step))
    self._last_save = int(step)
    try:
      self._manager.save(int(step), args=ocp.args.Composite(
          **items, meta=ocp.args.JsonSave(meta)), force=True)
    except Exception as e:
      raise self._save_failed(e) from e
    self.poll()

  def poll(self) -> None:
    """Writes the checksums of saved steps once their asynchronous save is complete (cheap:
    the training loop calls it every step, so a killed run rarely leaves a step without them)."""
    if self._unverified and not self._manager.is_saving_in_progress():
      self._write_checksums()

  def _write_checksums(self) -> None:
    for step in list(self._unverified):
      path = self._step_dir(step)
      if jax.process_index() == 0 and os.path.isdir(path):
        write_checksums(path)
      self._unverified.remove(step)

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restores ``(state, meta)`` of ``step``, verified; default: the newest intact step.

    Args:
      abstract_state: ``{'params', 'frozen'[, 'opt_state']}`` of :class:`jax.ShapeDtypeStruct`
        with ``sharding`` set: the arrays come back with those shardings (so a run may resume
        on another mesh); without ``opt_state`` the optimizer item is not read. A key the step
        does not hold (``frozen`` of a run of adapters or a head) is left out of the result.
      step: the step to read; a corrupt one raises :class:`CorruptCheckpointError`. With None,
        corrupt steps are reported (one warning line each) and skipped (``self.skipped``).

    Raises:
      FileNotFoundError: no checkpoint.
      CorruptCheckpointError: ``step`` (or, by default, every step) is corrupt or incomplete.
      ValueError: the checkpoint's arrays do not match ``abstract_state`` (another config).
    """
    _quiet_closed_event_loop()
    self.skipped = []
    if step is not None:
      return self._restore_verified(abstract_state, step)
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    reasons = []
    for i, candidate in enumerate(steps):
      try:
        restored = self._restore_verified(abstract_state, candidate)
      except CorruptCheckpointError as e:
        reasons.append(str(e))
        self.skipped.append(candidate)
        fallback = (f'falling back to step {steps[i + 1]}' if i + 1 < len(steps)
                    else 'no older checkpoint is left')
        _log.warning('%s; %s', e, fallback)
        continue
      return restored
    raise CorruptCheckpointError(
        f'no intact checkpoint in {self.directory} ({"; ".join(reasons)}); remove the '
        'checkpoints to start over')

  def _restore_verified(self, abstract_state: Any, step: int) -> tuple[Any, dict]:
    path = self._step_dir(step)
    if not os.path.isdir(path):
      raise FileNotFoundError(f'no checkpoint {path}')
    verify_checksums(path)
    targets = _restore_targets(path, abstract_state)
    try:
      metadata = self._manager.item_metadata(step)
      metadata = {item: metadata[item] for item in targets}
    except Exception as e:  # empty or missing _METADATA, an emptied step directory, ...
      raise CorruptCheckpointError(f'checkpoint {path} is corrupt or incomplete: unreadable '
                                   f'metadata ({_one_line(e)})') from e
    if 'model' in targets and metadata['model'] is not None:  # 'frozen' may not be saved
      saved = getattr(metadata['model'], 'tree', metadata['model'])
      targets['model'] = {k: v for k, v in targets['model'].items() if k in saved}
    for item, target in targets.items():
      _check_matches(path, metadata[item], target)
    failure = None
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          **{item: ocp.args.StandardRestore(t) for item, t in targets.items()},
          meta=ocp.args.JsonRestore()))
    except Exception as e:  # kept as text: the error's frames hold Orbax's abandoned reads
      failure = _one_line(e)
    if failure is not None:
      _drop_abandoned_reads()
      raise CorruptCheckpointError(
          f'checkpoint {path} could not be read (corrupt or incomplete, or written by a '
          f'different config?): {failure}')
    state = {k: v for item in targets for k, v in restored[item].items()
             if k in abstract_state}
    bad = nonfinite_arrays(state)
    if bad:
      raise CorruptCheckpointError(f'checkpoint {path} is corrupt: non-finite values in '
                                   f'{", ".join(bad[:3])}{" ..." if len(bad) > 3 else ""}')
    return state, dict(restored['meta'])

  def set_aside(self, steps: list[int]) -> list[str]:
    """Moves corrupt steps out of the way (to ``<workdir>/checkpoints_corrupt/<step>``), so that
    the run can save those steps again; nothing is deleted. Returns the new paths."""
    if self._read_only:
      raise ValueError('set_aside: this Checkpoints is read only')
    moved = []
    target_dir = os.path.join(os.path.dirname(self.directory), CORRUPT_DIR)
    if jax.process_index() == 0:
      for step in steps:
        target, n = os.path.join(target_dir, str(step)), 1
        while os.path.exists(target):
          target, n = os.path.join(target_dir, f'{step}-{n}'), n + 1
        os.makedirs(target_dir, exist_ok=True)
        shutil.move(self._step_dir(step), target)
        moved.append(target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices('decomp_checkpoints_set_aside')
    self._manager.reload()
    return moved

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk (and their checksums written).

    Raises:
      CheckpointSaveError: a save failed (one line: the step, the cause, the last good step).
    """
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # raised again by every later wait: report the failed save once
      raise self._save_failed(e) from e
    self._write_checksums()

  def _save_failed(self, error: BaseException) -> CheckpointSaveError:
    """The named error of a failed save; the failed (unfinished) steps are forgotten."""
    self._unverified = []
    code = re.search(r"os_error_code='?(\d+)", str(error))  # TensorStore's errno of a failed write
    cause = (f'{os.strerror(int(code.group(1)))} (errno {code.group(1)})' if code
             else getattr(error, 'strerror', None) or _one_line(error))
    complete = sorted(int(n) for n in os.listdir(self.directory) if n.isdigit()) \
        if os.path.isdir(self.directory) else []
    kept = (f'the last good checkpoint is step {complete[-1]} (a rerun resumes from it)'
            if complete else 'no checkpoint was saved before')
    return CheckpointSaveError(
        f'could not save checkpoint step {self._last_save} in {self.directory}: '
        f'{cause}. Is the disk full, the workdir unwritable or a file-size limit (ulimit -f) '
        f'reached? {kept}')

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _one_line(error: BaseException, limit: int = 300) -> str:
  """The first line of an error message, shortened (TensorStore errors span pages)."""
  # Orbax appends the whole TensorStore spec ('See full TensorStore details: ...'); the cause
  # (e.g. 'OUT_OF_RANGE: Error reading ...') says more.
  text = str(error).strip().split('\n')[0].split(' See full TensorStore details')[0]
  cause = str(error.__cause__ or '').strip()
  if cause:
    text += f' ({cause.splitlines()[0]})'
  text = text if len(text) <= limit else text[:limit] + '...'
  return f'{type(error).__name__}: {text}'


def _file_digest(path: str) -> str:
  with open(path, 'rb') as f:
    return hashlib.file_digest(f, 'sha256').hexdigest()


def _step_files(step_dir: str) -> list[str]:
  files = []
  for root, _, names in os.walk(step_dir):
    for name in names:
      rel = os.path.relpath(os.path.join(root, name), step_dir)
      if rel != MANIFEST_FILE:
        files.append(rel)
  return sorted(files)


def write_checksums(step_dir: str) -> None:
  """Writes ``<step_dir>/decomp_checksums.json``: size and SHA-256 of every file of the step."""
  files = {rel: {'size': os.path.getsize(os.path.join(step_dir, rel)),
                 'sha256': _file_digest(os.path.join(step_dir, rel))}
           for rel in _step_files(step_dir)}
  logs.write_json_atomic(os.path.join(step_dir, MANIFEST_FILE), {'files': files})


def verify_checksums(step_dir: str) -> bool:
  """Checks a step against its checksums; False when it has none (nothing to check).

  Raises:
    CorruptCheckpointError: a listed file is missing or differs in size or content, or the
      checksum file itself is unreadable.
  """
  path = os.path.join(step_dir, MANIFEST_FILE)
  if not os.path.exists(path):
    return False
  try:
    files = logs.read_json(path)['files']
  except (ValueError, KeyError, TypeError) as e:
    raise CorruptCheckpointError(f'checkpoint {step_dir} is corrupt: unreadable {MANIFEST_FILE} '
                                 f'({_one_line(e)})') from None
  for rel, want in sorted(files.items()):
    file = os.path.join(step_dir, rel)
    if not os.path.isfile(file):
      raise CorruptCheckpointError(f'checkpoint {step_dir} is incomplete: {rel} is missing')
    if os.path.getsize(file) != want['size']:
      raise CorruptCheckpointError(f'checkpoint {step_dir} is corrupt: {rel} has '
                                   f'{os.path.getsize(file)} bytes, {want["size"]} were saved')
    if _file_digest(file) != want['sha256']:
      raise CorruptCheckpointError(f'checkpoint {step_dir} is corrupt: {rel} does not match the '
                                   'checksum written when it was saved')
  return True


def nonfinite_arrays(state: Any) -> list[str]:
  """Names of the floating-point arrays of ``state`` holding NaN or inf (one device round trip)."""
  leaves = [(_key_name(k), v) for k, v in jax.tree_util.tree_flatten_with_path(state)[0]
            if jnp.issubdtype(jnp.result_type(v), jnp.inexact)]
  if not leaves:
    return []
  # One reduction per array (arrays may live on different devices), one transfer for all.
  finite = jax.device_get([jnp.all(jnp.isfinite(v)) for _, v in leaves])
  return [name for (name, _), ok in zip(leaves, finite) if not ok]


def _drop_abandoned_reads() -> None:
  """Collects the array reads Orbax abandoned when one of them failed, muting what they report
  when collected ('exception was never retrieved', 'Exception ignored in <coroutine>'): one
  traceback per array, each with the full TensorStore spec."""
  asyncio_log = logging.getLogger('asyncio')
  old_hook, old_disabled = sys.unraisablehook, asyncio_log.disabled
  sys.unraisablehook, asyncio_log.disabled = (lambda unraisable: None), True
  try:
    gc.collect()
  finally:
    sys.unraisablehook, asyncio_log.disabled = old_hook, old_disabled


_QUIET_INSTALLED = False


def _is_orbax_read_noise(value=None, obj=None) -> bool:
  """What Orbax's abandoned reads of a corrupt checkpoint report when they finish or are
  collected: TensorStore callbacks into a closed event loop, read coroutines never awaited."""
  if isinstance(value, RuntimeError) and str(value) == 'Event loop is closed':
    return True
  code = getattr(obj, 'cr_code', None)
  return code is not None and f'{os.sep}orbax{os.sep}' in code.co_filename


class _AbandonedReadFilter(logging.Filter):
  """Drops asyncio's 'exception was never retrieved' records of Orbax's failed reads and
  writes (the coroutines of the other arrays of a failed save)."""

  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    text = str(error or record.getMessage())
    return not ('never retrieved' in str(record.msg)
                and ('Encountered error while reading' in text or 'Error writing' in text
                     or f'{os.sep}orbax{os.sep}' in record.getMessage()))


class _BackgroundSaveFilter(logging.Filter):
  """Drops the tracebacks Orbax's save threads log when a write fails (a full disk: one per
  thread, each with the whole TensorStore spec); the same error reaches the training loop,
  which names it in one line (:class:`CheckpointSaveError`)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.levelno >= logging.ERROR and record.exc_info
                and f'{os.sep}orbax{os.sep}' in record.pathname)


def _quiet_closed_event_loop() -> None:
  """Drops the tracebacks Orbax's abandoned reads and writes print after it gave up on a
  corrupt checkpoint or a failed save ('RuntimeError: Event loop is closed' from TensorStore
  callbacks in their threads; never-awaited coroutines; its save threads' logged errors):
  hundreds of lines that bury the one-line error. Installed
  once, on the thread and unraisable hooks only (the main thread's ``sys.excepthook`` is left
  alone); every other exception goes to the previous hooks."""
  global _QUIET_INSTALLED
  if _QUIET_INSTALLED:
    return
  _QUIET_INSTALLED = True
  old_unraisable, old_thread = sys.unraisablehook, threading.excepthook
  sys.unraisablehook = lambda u: (None if _is_orbax_read_noise(u.exc_value, u.object)
                                  else old_unraisable(u))
  threading.excepthook = lambda a: None if _is_orbax_read_noise(a.exc_value) else old_thread(a)
  logging.getLogger('asyncio').addFilter(_AbandonedReadFilter())
  logging.getLogger('absl').addFilter(_BackgroundSaveFilter())


# The array items of a step and the state keys each holds.
ITEMS = {'model': ('params', 'frozen'), 'optimizer': ('opt_state',)}
LEGACY_ITEM = 'state'  # one item with every key: checkpoints before the items were split


# Orbax writes an array replicated over several devices in slices, one per replica, each cut by
# an eager jax op (a dispatch, and a compile per new shape). For the small arrays of a LoRA run,
# a head or a test model that costs far more than writing them whole: 2.7 s of a tiny model's
# 3-second save on 8 CPU devices. Arrays whose per-replica slice would be under this many bytes
# are written whole by one replica (larger ones still in parallel).
MIN_REPLICA_SLICE_BYTES = 4 << 20


def _type_handler_registry():
  from orbax.checkpoint._src.serialization import type_handler_registry as registry_lib
  from orbax.checkpoint import type_handlers
  from orbax.checkpoint._src.metadata import array_metadata_store as array_metadata_store_lib
  handlers = [(ty, handler) for ty, handler in registry_lib._DEFAULT_TYPE_HANDLERS
              if ty is not jax.Array]
  array = type_handlers.ArrayHandler(
      array_metadata_store=array_metadata_store_lib.Store(),
      min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES)
  return registry_lib.create_type_handler_registry((jax.Array, array), *handlers)


def _standard_handler() -> ocp.StandardCheckpointHandler:
  """A ``StandardCheckpointHandler`` (same class, format and ``StandardSave`` /
  ``StandardRestore`` arguments) whose arrays go through the array handler of
  :data:`MIN_REPLICA_SLICE_BYTES`."""
  handler = ocp.StandardCheckpointHandler()
  if not isinstance(getattr(handler, '_impl', None), ocp.PyTreeCheckpointHandler):
    raise RuntimeError('orbax-checkpoint changed StandardCheckpointHandler: update '
                       'decomp.train.checkpoint._standard_handler')
  handler._impl = ocp.PyTreeCheckpointHandler(type_handler_registry=_type_handler_registry())
  return handler


def _handlers() -> dict:
  return {**{item: _standard_handler() for item in (*ITEMS, LEGACY_ITEM)},
          'meta': ocp.JsonCheckpointHandler()}


def _restore_targets(path: str, abstract_state: Any) -> dict[str, Any]:
  """``{item: restore target}`` for the keys of ``abstract_state``."""
  if os.path.isdir(os.path.join(path, LEGACY_ITEM)):
    missing = [k for keys in ITEMS.values() for k in keys if k not in abstract_state]
    if missing:
      raise ValueError(f'checkpoint {path} predates separate model and optimizer items: it '
                       f'restores only whole (with {missing})')
    return {LEGACY_ITEM: abstract_state}
  return {item: {k: abstract_state[k] for k in keys if k in abstract_state}
          for item, keys in ITEMS.items() if any(k in abstract_state for k in keys)}


def _key_name(path) -> str:
  """'params/decoder/embed_tokens/value' for dict keys, attributes and sequence indices alike
  (Orbax stores an nnx Variable's ``.value`` attribute as a dict key)."""
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)


def _check_matches(path: str, metadata: Any, abstract_state: Any) -> None:
  """Names the first array whose saved shape/dtype differs from the restore target."""
  if metadata is None:
    raise CorruptCheckpointError(f'checkpoint {path} has no array metadata (corrupt, or not a '
                                 'decomp checkpoint)')
  saved = {_key_name(k): v for k, v in jax.tree_util.tree_flatten_with_path(
      getattr(metadata, 'tree', metadata),
      is_leaf=lambda m: hasattr(m, 'shape') and hasattr(m, 'dtype'))[0]}
  for key, want in jax.tree_util.tree_flatten_with_path(abstract_state)[0]:
    name = _key_name(key)
    got = saved.get(name)
    if got is None:
      raise ValueError(f'checkpoint {path} has no array {name} (written by a different config?)')
    if tuple(got.shape) != tuple(want.shape) or np.dtype(got.dtype) != np.dtype(want.dtype):
      raise ValueError(f'checkpoint {path}: array {name} is {got.dtype}{list(got.shape)}, the run '
                       f'expects {want.dtype}{list(want.shape)} (written by a different config?)')


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a pytree of arrays: a restore target."""
  return jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=getattr(a, 'sharding', None)),
      tree)


def load_state(workdir: str, step: int | None = None) -> tuple[dict, dict]:
  """Reads a checkpoint of ``workdir`` onto one device, without the run's config or mesh.

  Returns:
    ``(state, meta)``: ``state`` is the saved tree (``params``, ``opt_state`` and, unless the
    run trained adapters or a head, ``frozen``) with numpy arrays; ``meta`` holds ``step``,
    ``data_index`` and the ``base`` reference.
  """
  directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
  options = ocp.CheckpointManagerOptions(read_only=True, create=False)
  with ocp.CheckpointManager(directory, options=options, item_handlers=_handlers()) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {directory}')
    verify_checksums(os.path.join(directory, str(step)))
    step_dir = os.path.join(directory, str(step))
    items = [i for i in (*ITEMS, LEGACY_ITEM) if os.path.isdir(os.path.join(step_dir, i))]
    metadata = manager.item_metadata(step)
    if not items or any(metadata[i] is None for i in items):
      raise ValueError(f'{step_dir}: no array metadata (not a decomp checkpoint?)')
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = {i: jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        getattr(metadata[i], 'tree', metadata[i]),
        is_leaf=lambda m: hasattr(m, 'shape') and hasattr(m, 'dtype')) for i in items}
    restored = manager.restore(step, args=ocp.args.Composite(
        **{item: ocp.args.StandardRestore(tree) for item, tree in abstract.items()},
        meta=ocp.args.JsonRestore()))
  state = {k: v for item in abstract for k, v in restored[item].items()}
  return jax.tree.map(lambda a: np.asarray(a), state), dict(restored['meta'])
