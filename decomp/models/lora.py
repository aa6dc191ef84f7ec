"""LoRA adapters for the decoder's linear projections, and what to train.

`apply_lora` wraps chosen projections (q/k/v/o, gate/up/down) in `LoRALinear`:
y = base(x) + (alpha / rank) * x @ A @ B, with A [in, r] (PEFT's Kaiming-uniform init) and
B [r, out] zero-initialised so the model output is unchanged at first. A and B are `nnx.LoRAParam`
(a subclass of `nnx.Param`) carrying logical sharding names (in_name, 'lora_rank') and
('lora_rank', out_name).

`trainable_filter` says what an optimizer should update; use it as
`nnx.Optimizer(model, tx, wrt=filter)` and `nnx.grad(loss, argnums=nnx.DiffState(0, filter))`.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from decomp.models.decoder import Decoder, Linear
from decomp.models.sharding import METADATA_KEY

__all__ = ['DEFAULT_TARGETS', 'LoRALinear', 'LoRAParam', 'apply_lora', 'has_lora', 'is_lm_head',
           'merge_lora', 'trainable_filter']

LoRAParam = nnx.LoRAParam
DEFAULT_TARGETS = ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj')
_ATTENTION = ('q_proj', 'k_proj', 'v_proj', 'o_proj')
_MLP = ('gate_proj', 'up_proj', 'down_proj')
# PEFT initialises A with kaiming_uniform(a=sqrt(5)), i.e. U(-1/sqrt(in), 1/sqrt(in)).
_A_INIT = nnx.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


class LoRALinear(nnx.Module):
  """A frozen-able base `Linear` plus a low-rank update (alpha / rank) * A @ B."""

  def __init__(self, base: Linear, *, rank: int, alpha: float, rngs: nnx.Rngs):
    self.base = base
    self.rank = rank
    self.alpha = float(alpha)
    self.scale = float(alpha) / rank
    in_name, out_name = base.names
    param_dtype = base.kernel[...].dtype
    self.lora_a = LoRAParam(_A_INIT(rngs.params(), (base.in_features, rank), param_dtype),
                            eager_sharding=False, **{METADATA_KEY: (in_name, 'lora_rank')})
    self.lora_b = LoRAParam(jnp.zeros((rank, base.out_features), param_dtype),
                            eager_sharding=False, **{METADATA_KEY: ('lora_rank', out_name)})

  def __call__(self, x: jax.Array) -> jax.Array:
    """x [..., in] -> [..., out]."""
    dtype = self.base.dtype
    x = x.astype(dtype)
    # 2-D [tokens, in] matmuls, as in Linear: XLA CPU's backward of 3-D ones takes a slow
    # transposing copy (it made LoRA steps 2x slower than full fine-tuning).
    flat = x.reshape(-1, x.shape[-1])
    update = (flat @ self.lora_a[...].astype(dtype)) @ self.lora_b[...].astype(dtype)
    update = update.reshape(x.shape[:-1] + (update.shape[-1],))
    return self.base(x) + update * jnp.asarray(self.scale, dtype)

  def merged_kernel(self) -> jax.Array:
    """base kernel + scale * A @ B, [in, out], in the base kernel's dtype (computed in float32)."""
    kernel = self.base.kernel[...]
    delta = self.lora_a[...].astype(jnp.float32) @ self.lora_b[...].astype(jnp.float32)
    return (kernel.astype(jnp.float32) + self.scale * delta).astype(kernel.dtype)


def _projection_owners(model: Decoder):
  """(owner module, attribute name) for every projection the decoder has."""
  for layer in model.layers:
    for name in _ATTENTION:
      yield layer.self_attn, name
    for name in _MLP:
      yield layer.mlp, name


def apply_lora(model: Decoder, *, rank: int = 16, alpha: float = 32.0,
               targets: Sequence[str] = DEFAULT_TARGETS, rngs: nnx.Rngs) -> Decoder:
  """Wraps the `targets` projections of every layer in LoRALinear, in place; returns the model.

  The base weights stay `nnx.Param`; select what trains with `trainable_filter`.
  Raises ValueError for an unknown target name, a non-positive rank, or a model that already
  has adapters on a target.
  """
  if isinstance(targets, str):
    targets = (targets,)
  unknown = sorted(set(targets) - set(DEFAULT_TARGETS))
  if unknown:
    raise ValueError(f'unknown LoRA targets {unknown}; choose from {DEFAULT_TARGETS}')
  if not isinstance(rank, int) or rank <= 0:
    raise ValueError(f'LoRA rank must be a positive int, got {rank!r}')
  for owner, name in _projection_owners(model):
    if name not in targets:
      continue
    module = getattr(owner, name)
    if isinstance(module, LoRALinear):
      raise ValueError(f'{name} already has a LoRA adapter; merge_lora first')
    setattr(owner, name, LoRALinear(module, rank=rank, alpha=alpha, rngs=rngs))
  return model


def merge_lora(model: Decoder) -> Decoder:
  """Folds every adapter into its base kernel and removes it, in place; returns the model."""
  for owner, name in _projection_owners(model):
    module = getattr(owner, name)
    if isinstance(module, LoRALinear):
      module.base.kernel[...] = module.merged_kernel()
      setattr(owner, name, module.base)
  return model


def has_lora(model: Decoder) -> bool:
  """Whether any projection carries an adapter."""
  return any(isinstance(getattr(o, n), LoRALinear) for o, n in _projection_owners(model))


def is_lm_head(path, value) -> bool:
  """nnx filter: the LM-head parameter (the token embedding when embeddings are tied)."""
  del path
  return isinstance(value, nnx.Variable) and bool(value.get_metadata().get('lm_head', False))


def trainable_filter(*, lora: bool, train_lm_head: bool):
  """The nnx filter of trained parameters.

  Args:
    lora: True -> the LoRA adapters (LoRAParam) only; False -> every Param (full fine-tuning).
    train_lm_head: include (True) or exclude (False) the LM head. With tied embeddings the LM
      head is the token embedding, so freezing it freezes the embedding too.
  """
  if lora:
    return nnx.Any(LoRAParam, is_lm_head) if train_lm_head else LoRAParam
  return nnx.Param if train_lm_head else nnx.All(nnx.Param, nnx.Not(is_lm_head))
