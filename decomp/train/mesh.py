"""Device mesh from a config's ``{'axis': size}`` mapping, and the batch's sharding on it.

One size may be ``-1`` ("all remaining devices"). The data axes (``data``, and ``fsdp`` when a
mesh names it) shard the batch's group dimension; the ``model`` axis is for tensor parallelism.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

BATCH_AXES = ('data', 'fsdp')  # mesh axes the batch's leading (group) dimension is split over


def resolve_mesh_shape(shape: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Fills in a ``-1`` size and checks that the mesh uses exactly ``num_devices`` devices.

  Raises:
    ValueError: naming the mesh and the device count when they do not fit.
  """
  if not shape:
    raise ValueError('mesh: needs at least one axis, e.g. {"data": -1}')
  sizes = dict(shape)
  for name, size in sizes.items():
    if not isinstance(size, int) or isinstance(size, bool) or (size < 1 and size != -1):
      raise ValueError(f'mesh {dict(shape)}: axis {name!r} has size {size!r}; use a positive '
                       'integer or -1')
  free = [name for name, size in sizes.items() if size == -1]
  if len(free) > 1:
    raise ValueError(f'mesh {dict(shape)}: at most one axis may be -1, got {free}')
  fixed = math.prod(size for size in sizes.values() if size != -1)
  if free:
    if num_devices % fixed:
      raise ValueError(f'mesh {dict(shape)} does not divide the {num_devices} devices: the fixed '
                       f'axes use {fixed}')
    sizes[free[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise ValueError(f'mesh {dict(shape)} uses {fixed} devices but {num_devices} are available')
  return sizes


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A :class:`Mesh` over ``devices`` (default: all global devices) with the given axis sizes.

  Axes are laid out in the mapping's order, the last axis varying fastest, so a ``model`` axis
  placed last keeps tensor-parallel groups on neighbouring devices (one host).
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = resolve_mesh_shape(shape, len(devices))
  # Auto axes: jit's in/out shardings drive the partitioner (GSPMD), as in big_vision / flax
  # examples; jax.make_mesh would default to explicit-sharding axes.
  axis_types = (AxisType.Auto,) * len(sizes)
  # jax.make_mesh knows the physical topology on accelerators; on CPU both are the same.
  try:
    return jax.make_mesh(tuple(sizes.values()), tuple(sizes), axis_types, devices=devices)
  except ValueError:  # pragma: no cover - e.g. multi-slice topologies
    grid = np.asarray(devices, dtype=object).reshape(tuple(sizes.values()))
    return Mesh(grid, tuple(sizes), axis_types=axis_types)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  """The mesh axes that split the batch dimension (those of :data:`BATCH_AXES` it names)."""
  return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def data_parallel_size(mesh: Mesh) -> int:
  """How many shards the batch's group dimension is split into."""
  return math.prod(mesh.shape[a] for a in batch_axes(mesh))


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
  """Sharding of a batch array ``[B, ...]`` split over the data axes, the rest replicated."""
  axes = batch_axes(mesh)
  first = axes if len(axes) > 1 else (axes[0] if axes else None)
  return NamedSharding(mesh, PartitionSpec(first, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  """Fully replicated sharding (scalars, RNG keys, small state)."""
  return NamedSharding(mesh, PartitionSpec())
