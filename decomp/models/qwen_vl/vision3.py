"""Qwen3-VL's vision tower (Flax NNX): what differs from Qwen2-VL's (decomp.models.qwen_vl.vision).

- the patch embedding has a bias;
- a learned position table (num_position_embeddings = side**2 entries) is resampled bilinearly
  (align_corners=True) to each image's patch grid and added to the patch embeddings; the gather
  indices and weights come from the host (`mrope.position_interpolation`, in the PatchLayout);
- blocks: LayerNorm + (linear_fc1, gelu_pytorch_tanh, linear_fc2), full attention per frame;
- mergers: `merger` (LayerNorm over each patch, then merge) and one DeepStack merger per
  `deepstack_visual_indexes` block (LayerNorm over the merged vector), each Linear -> GELU ->
  Linear to the LM width. The DeepStack outputs are added to the LM hidden states at the image
  tokens after LM layers 0, 1, ... (decomp.models.qwen_vl).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from decomp.models.decoder import Linear, _param
from decomp.models.qwen_vl.mrope import PatchLayout, position_interpolation
from decomp.models.qwen_vl.vision import (PatchEmbed, QwenVisionConfig, VisionBlock, run_block,
                                         square_layout, tokens_per_image, vision_rotary)
from decomp.models.remat import remat_name, rematerialized
from decomp.models.vision import LayerNorm

__all__ = ['Qwen3Merger', 'Qwen3VisionTower']

_EPS = 1e-6


class Qwen3Merger(nnx.Module):
  """norm (per patch, or per merged vector when postshuffle), merge**2 patches -> one vector,
  linear_fc1 -> exact GELU -> linear_fc2."""

  def __init__(self, c: QwenVisionConfig, *, postshuffle: bool, dtype, param_dtype,
               rngs: nnx.Rngs):
    kw = dict(use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.unit = c.spatial_merge_size ** 2
    self.postshuffle = postshuffle
    width = c.hidden_size * self.unit
    self.norm = LayerNorm(width if postshuffle else c.hidden_size, _EPS, param_dtype=param_dtype)
    self.linear_fc1 = Linear(width, width, names=('embed', 'mlp'), **kw)
    self.linear_fc2 = Linear(width, c.out_hidden_size, names=('mlp', 'embed'), **kw)

  def __call__(self, x):
    merged = (x.shape[0] // self.unit, -1)
    x = self.norm(x.reshape(merged)) if self.postshuffle else self.norm(x).reshape(merged)
    return self.linear_fc2(jax.nn.gelu(self.linear_fc1(x), approximate=False))


class Qwen3VisionTower(nnx.Module):
  """Qwen3-VL vision transformer. Parameter names follow HF's `visual.*`."""

  def __init__(self, config: QwenVisionConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
               remat: str | bool = 'none', rngs: nnx.Rngs):
    if config.variant != 'qwen3_vl':
      raise ValueError(f'Qwen3VisionTower needs a qwen3_vl config, got {config.variant}')
    self.config = config
    self.dtype = dtype
    self.remat = remat_name(remat)  # per block (decomp.models.remat)
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.patch_embed = PatchEmbed(config, **kw)
    self.pos_embed = _param(rngs, (config.num_position_embeddings, config.hidden_size),
                            (None, 'embed'), param_dtype)
    self.blocks = nnx.List([VisionBlock(config, **kw) for _ in range(config.depth)])
    self.merger = Qwen3Merger(config, postshuffle=False, **kw)
    self.deepstack_merger_list = nnx.List([Qwen3Merger(config, postshuffle=True, **kw)
                                           for _ in config.deepstack_visual_indexes])

  def __call__(self, pixel_values: jax.Array, layout: PatchLayout
               ) -> tuple[jax.Array, list[jax.Array]]:
    """pixel_values [P, C*T*p*p], layout (with pos_index / pos_weight) -> (visual tokens
    [P / merge**2, out_hidden], DeepStack features: one such array per deepstack index)."""
    c = self.config
    x = jnp.asarray(pixel_values)
    if x.ndim != 2 or x.shape[1] != c.patch_dim:
      raise ValueError(f'pixel_values must be [patches, {c.patch_dim}], got {x.shape}')
    if layout.pos_index is None or np.shape(layout.pos_index)[0] != x.shape[0]:
      raise ValueError('Qwen3-VL needs the layout of QwenVL.prepare (with pos_index / pos_weight '
                       'for these patches)')
    x = self.patch_embed(x.astype(self.dtype))
    table = self.pos_embed[...]
    weights = jnp.asarray(layout.pos_weight)[:, :, None].astype(table.dtype)
    x = x + (jnp.take(table, jnp.asarray(layout.pos_index), axis=0) * weights).sum(1).astype(
        x.dtype)
    cos, sin = vision_rotary(c, layout)
    frames = jnp.asarray(layout.full)
    deepstack = []
    for i, block in enumerate(self.blocks):
      x = rematerialized(run_block, self.remat)(block, x, cos, sin, frames)
      if i in c.deepstack_visual_indexes:
        deepstack.append(self.deepstack_merger_list[c.deepstack_visual_indexes.index(i)](x))
    return self.merger(x), deepstack

  def image_features(self, patches: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    """``[K, p, patch_dim]`` same-size square images -> visual tokens and DeepStack features,
    each ``[K, p / merge**2, out_hidden]`` (the ImageTower protocol)."""
    c = self.config
    p = patches.shape[1]
    layout, grid = square_layout(c, p)
    index, weight = position_interpolation(
        grid, spatial_merge_size=c.spatial_merge_size,
        num_grid_per_side=int(round(c.num_position_embeddings ** 0.5)), num_patches=p)
    layout = layout._replace(pos_index=index, pos_weight=weight)
    return jax.vmap(lambda x: self(x, layout))(patches)

  def tokens_per_image(self, patches_per_image: int) -> int:
    return tokens_per_image(self.config, patches_per_image)
