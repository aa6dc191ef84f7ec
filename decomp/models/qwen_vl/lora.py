"""LoRA on the Qwen-VL vision towers (the language model's is decomp.models.lora.apply_lora).

`apply_vision_lora(model.visual, rank=..., rngs=...)` wraps the chosen block projections in
`LoRALinear` (the same adapters as the decoder's: A [in, r], B [r, out] zero-initialised, so the
tower is unchanged at first); `lora.trainable_filter(lora=True, ...)` then trains them together
with the decoder's. `merge_vision_lora` folds them in; `decomp.models.save_pretrained` folds them
into the written weights without changing the model.
"""

from __future__ import annotations

from typing import Iterator, Sequence

from flax import nnx

from decomp.models.lora import LoRALinear

__all__ = ['VISION_LORA_TARGETS', 'apply_vision_lora', 'merge_vision_lora']

# Attention (all towers) and block MLP projections (Qwen2-VL fc1/fc2, Qwen2.5-VL SwiGLU,
# Qwen3-VL linear_fc1/linear_fc2). Patch embedding and mergers are not adapted.
VISION_LORA_TARGETS = ('qkv', 'proj', 'fc1', 'fc2', 'gate_proj', 'up_proj', 'down_proj',
                       'linear_fc1', 'linear_fc2')


def _owners(tower) -> Iterator[tuple[nnx.Module, str]]:
  """(owner module, attribute) of every adaptable projection of the tower's blocks."""
  for block in tower.blocks:
    for owner in (block.attn, block.mlp):
      for name in VISION_LORA_TARGETS:
        if hasattr(owner, name):
          yield owner, name


def apply_vision_lora(tower, *, rank: int = 16, alpha: float = 32.0,
                      targets: Sequence[str] = ('qkv', 'proj'), rngs: nnx.Rngs):
  """Wraps the `targets` projections of every vision block in LoRALinear, in place.

  Raises ValueError for an unknown target, a non-positive rank, or an existing adapter.
  """
  if isinstance(targets, str):
    targets = (targets,)
  unknown = sorted(set(targets) - set(VISION_LORA_TARGETS))
  if unknown:
    raise ValueError(f'unknown vision LoRA targets {unknown}; choose from {VISION_LORA_TARGETS}')
  if not isinstance(rank, int) or rank <= 0:
    raise ValueError(f'LoRA rank must be a positive int, got {rank!r}')
  for owner, name in _owners(tower):
    if name in targets:
      module = getattr(owner, name)
      if isinstance(module, LoRALinear):
        raise ValueError(f'vision {name} already has a LoRA adapter; merge_vision_lora first')
      setattr(owner, name, LoRALinear(module, rank=rank, alpha=alpha, rngs=rngs))
  return tower


def merge_vision_lora(tower):
  """Folds every vision adapter into its base kernel and removes it, in place."""
  for owner, name in _owners(tower):
    module = getattr(owner, name)
    if isinstance(module, LoRALinear):
      module.base.kernel[...] = module.merged_kernel()
      setattr(owner, name, module.base)
  return tower
