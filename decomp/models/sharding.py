"""Logical sharding names -> mesh shardings.

Every parameter of the decoder carries logical axis names (one per dimension) in its nnx
Variable metadata under flax's key 'out_sharding', e.g. the token embedding [V, d] is
('vocab', 'embed') and an MLP up-projection [d, I] is ('embed', 'mlp'). Rules map each logical
name to a mesh axis (or None: replicated). A logical dimension whose size the mesh axis does not
divide, or whose mesh axis is absent from the mesh or already used by an earlier dimension of the
same array, is replicated instead of raising: the rules stay usable across model sizes and
mesh shapes.

Typical use (the trainer):

  mesh = jax.make_mesh((2, 4), ('data', 'model'))
  abstract = nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))
  shardings = model_shardings(abstract, mesh, DEFAULT_RULES)  # matches nnx.state(model)
  # ... jit(init, out_shardings=shardings), or for a live model: shard_model(model, mesh)
"""

from __future__ import annotations

import math
import types
from typing import Any, Iterable, Mapping, Sequence

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ['DEFAULT_RULES', 'FSDP_RULES', 'METADATA_KEY', 'logical_to_mesh_sharding',
           'logical_to_partition_spec', 'model_shardings', 'shard_model', 'variable_names']

# The metadata key flax 0.12 uses for per-dimension sharding names (it is also what
# `nnx.get_partition_spec` reads).
METADATA_KEY = 'out_sharding'

MeshAxes = str | tuple[str, ...] | None
Rules = Mapping[str, MeshAxes] | Iterable[tuple[str, MeshAxes]]

# Logical names used by decomp.models: batch, length (activations); vocab, embed, mlp, heads,
# kv_heads, norm, lora_rank (parameters).
DEFAULT_RULES: Mapping[str, MeshAxes] = types.MappingProxyType({
    'batch': 'data',
    'length': None,
    'vocab': 'model',
    'embed': None,
    'mlp': 'model',
    'heads': 'model',
    'kv_heads': 'model',
    'norm': None,
    'lora_rank': None,
})
# Fully-sharded data parallel: additionally shard the model width over the data axis, so
# parameters (and optimizer state) are split across data-parallel replicas too.
FSDP_RULES: Mapping[str, MeshAxes] = types.MappingProxyType({**DEFAULT_RULES, 'embed': 'data'})


def _rules_dict(rules: Rules | None) -> dict[str, MeshAxes]:
  if rules is None:
    return dict(DEFAULT_RULES)
  if isinstance(rules, Mapping):
    return dict(rules)
  # flax-style sequence of (logical, mesh) pairs: the first match wins.
  out: dict[str, MeshAxes] = {}
  for logical, axes in rules:
    out.setdefault(logical, axes)
  return out


def logical_to_partition_spec(names: Sequence[str | None], mesh: Mesh, rules: Rules | None = None,
                              *, shape: Sequence[int] | None = None) -> PartitionSpec:
  """PartitionSpec for an array with logical dimension `names`.

  Args:
    names: one logical name (or None) per dimension.
    mesh: the device mesh (only its axis names and sizes are used).
    rules: logical name -> mesh axis name, tuple of mesh axis names, or None. Names missing from
      the rules are replicated. Defaults to DEFAULT_RULES.
    shape: the array's shape; when given, a dimension the mesh axes do not divide is replicated.
  """
  rules = _rules_dict(rules)
  if shape is not None and len(shape) != len(names):
    raise ValueError(f'sharding names {tuple(names)} do not match shape {tuple(shape)}')
  used: set[str] = set()
  spec: list[Any] = []
  for dim, name in enumerate(names):
    axes = rules.get(name) if name is not None else None
    if axes is None:
      spec.append(None)
      continue
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    axes = tuple(a for a in axes if a in mesh.shape and a not in used)
    size = math.prod(mesh.shape[a] for a in axes)
    if not axes or (shape is not None and shape[dim] % size):
      spec.append(None)
      continue
    used.update(axes)
    spec.append(axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*spec)


def logical_to_mesh_sharding(names: Sequence[str | None], mesh: Mesh, rules: Rules | None = None,
                             *, shape: Sequence[int] | None = None) -> NamedSharding:
  """NamedSharding for an array with logical dimension `names` (see logical_to_partition_spec)."""
  return NamedSharding(mesh, logical_to_partition_spec(names, mesh, rules, shape=shape))


def variable_names(variable: nnx.Variable) -> tuple[str | None, ...] | None:
  """The logical names stored on an nnx Variable, or None when it has none."""
  names = variable.get_metadata().get(METADATA_KEY)
  return None if names is None else tuple(names)


def _variable_sharding(variable: nnx.Variable, mesh: Mesh, rules: Rules | None) -> NamedSharding:
  value = variable.get_value()
  shape = tuple(getattr(value, 'shape', ()))
  names = variable_names(variable)
  if names is None:
    return NamedSharding(mesh, PartitionSpec())
  return logical_to_mesh_sharding(names, mesh, rules, shape=shape)


def model_shardings(model_or_state: Any, mesh: Mesh, rules: Rules | None = None) -> nnx.State:
  """NamedShardings for every Variable, as a tree shaped like `nnx.state(model)`.

  Accepts a Module (live or from `nnx.eval_shape`) or an nnx.State. Variables without logical
  names (RNG counts, step counters) are replicated. The result's leaves are Variables whose
  values are NamedShardings, the same convention as `nnx.get_named_sharding`, usable as jit
  `out_shardings` / `jax.device_put` targets for the state.
  """
  state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state)
  return jax.tree.map(lambda v: v.replace(_variable_sharding(v, mesh, rules)), state,
                      is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: Mesh, rules: Rules | None = None) -> nnx.Module:
  """Moves a live model's Variables onto `mesh` in place (and returns the model)."""
  state = nnx.state(model)
  shardings = model_shardings(state, mesh, rules)
  nnx.update(model, jax.device_put(state, shardings))
  return model
