"""Orbax checkpoints of a training run: {train state pytree, step, data position}.

The train state is a pytree of arrays (trainable and frozen model weights, optimiser state, RNG
key data); ``meta`` is a small JSON dict (``step``, ``data_index``: the next training group to
read, and anything else the loop needs to continue exactly). Orbax writes each step to a
temporary directory and renames it when complete, so a run killed while saving leaves the
previous checkpoints intact. In a multi-host run every process calls :meth:`save` and
:meth:`restore`; Orbax writes each array shard and the metadata once.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT_DIR = 'checkpoints'


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
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_handlers=_handlers())

  def latest_step(self) -> int | None:
    """The step of the newest complete checkpoint, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict) -> None:
    """Saves ``state`` (pytree of jax arrays) and ``meta`` (JSON-able dict) as ``step``."""
    meta = dict(meta, step=int(step))
    self._manager.save(
        int(step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=True)

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restores ``(state, meta)`` of ``step`` (default: the latest).

    Args:
      abstract_state: pytree of :class:`jax.ShapeDtypeStruct` with ``sharding`` set: the arrays
        come back with those shardings (so a run may resume on another mesh).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    _check_matches(os.path.join(self.directory, str(step)),
                   self._manager.item_metadata(step)['state'], abstract_state)
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    except Exception as e:
      raise ValueError(
          f'checkpoint {os.path.join(self.directory, str(step))} could not be restored into the '
          f'current train state (corrupt, or written by a different config?): '
          f'{type(e).__name__}: {e}') from e
    return restored['state'], dict(restored['meta'])

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _handlers() -> dict:
  return {'state': ocp.StandardCheckpointHandler(), 'meta': ocp.JsonCheckpointHandler()}


def _key_name(path) -> str:
  """'params/decoder/embed_tokens/value' for dict keys, attributes and sequence indices alike
  (Orbax stores an nnx Variable's ``.value`` attribute as a dict key)."""
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)


def _check_matches(path: str, metadata: Any, abstract_state: Any) -> None:
  """Names the first array whose saved shape/dtype differs from the restore target."""
  if metadata is None:
    raise ValueError(f'checkpoint {path} has no array metadata (corrupt or not a decomp '
                     'checkpoint)')
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
    ``(state, meta)``: ``state`` is the saved tree (``params``, ``frozen``, ``opt_state``,
    ``rng``) with numpy arrays; ``meta`` holds ``step`` and ``data_index``.
  """
  directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
  options = ocp.CheckpointManagerOptions(read_only=True, create=False)
  with ocp.CheckpointManager(directory, options=options, item_handlers=_handlers()) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {directory}')
    metadata = manager.item_metadata(step)['state']
    if metadata is None:
      raise ValueError(f'{directory}/{step}: no array metadata (not a decomp checkpoint?)')
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    tree = getattr(metadata, 'tree', metadata)
    abstract = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree,
        is_leaf=lambda m: hasattr(m, 'shape') and hasattr(m, 'dtype'))
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
  return jax.tree.map(lambda a: np.asarray(a), restored['state']), dict(restored['meta'])
