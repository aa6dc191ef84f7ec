"""The native vision tower of Qwen2-VL and Qwen2.5-VL (Flax NNX), on the processor's patches.

Input: `pixel_values` [P, C * T * p * p] exactly as `Qwen2VLImageProcessor` flattens them (P
patches of all images, in the order described in `decomp.models.qwen_vl.mrope`), plus a
`PatchLayout` (rotary positions, frame and window segment ids) computed on the host. Output: visual tokens
[P / merge**2, out_hidden_size] in the same order, ready to replace the image-pad embeddings.

- patch embedding: the Conv3d (kernel = stride = T x p x p, no bias) is a matmul on the
  flattened patch (its weight [d, C, T, p, p] reshaped to [C*T*p*p, d]);
- 2-D rotary embedding: head_dim/4 frequencies over the patch row, head_dim/4 over the column
  (transformers' Qwen2VLVisionRotaryEmbedding), applied in float32;
- blocks: Qwen2-VL: LayerNorm + (fc1, quick_gelu, fc2); Qwen2.5-VL: RMSNorm + SwiGLU with
  biases. Attention is bidirectional and restricted to one frame of one image (full-attention
  layers; all layers in Qwen2-VL) or to one window (Qwen2.5-VL's other layers);
- PatchMerger: norm (LayerNorm / RMSNorm), merge**2 consecutive patches concatenated, then
  Linear -> exact GELU -> Linear to the LM width.

Attention is computed per segment: the host lists each frame's (or window's) patches as a row
of `PatchLayout.full` / `.window` ([S, L]), the tower gathers the rows, attends within each and
scatters back -- S * L**2 scores per head instead of P**2 for the whole batch of images.
"""

from __future__ import annotations

import dataclasses
import math
import types
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from decomp.models.decoder import MLP, Linear, RMSNorm, rotate_half
from decomp.models.qwen_vl.mrope import PatchLayout, patch_layout
from decomp.models.remat import remat_name, rematerialized
from decomp.models.vision import _ACTIVATIONS, LayerNorm

__all__ = ['QwenVisionConfig', 'QwenVisionTower', 'VISION_VARIANTS', 'VisionAttention',
           'VisionBlock', 'vision_rotary']

VISION_VARIANTS = ('qwen2_vl', 'qwen2_5_vl', 'qwen3_vl')
_MASKED = -1e30
_EPS = 1e-6  # every norm of both towers (hard-coded in transformers)


@dataclasses.dataclass(frozen=True)
class QwenVisionConfig:
  """Shape of a Qwen2-VL, Qwen2.5-VL or Qwen3-VL vision tower.

  Attributes:
    variant: 'qwen2_vl' (LayerNorm, fc1/fc2 MLP, full attention everywhere), 'qwen2_5_vl'
      (RMSNorm, SwiGLU with biases, window attention except in fullatt_block_indexes) or
      'qwen3_vl' (LayerNorm, linear_fc1/linear_fc2 MLP, learned position table, DeepStack
      mergers; the module is decomp.models.qwen_vl.vision3.Qwen3VisionTower).
    depth: blocks.
    hidden_size: ViT width (Qwen2-VL's `embed_dim`, Qwen2.5-VL's `hidden_size`).
    intermediate_size: MLP width (Qwen2-VL: embed_dim * mlp_ratio).
    num_heads: attention heads.
    out_hidden_size: width after the merger = the LM's hidden size (Qwen2-VL's `hidden_size`,
      Qwen2.5-VL's `out_hidden_size`).
    hidden_act: block MLP activation (quick_gelu for Qwen2-VL, silu for Qwen2.5-VL).
    window_size: Qwen2.5-VL window side in pixels; windows span window_size // merge // patch
      merged tokens per side.
    fullatt_block_indexes: Qwen2.5-VL blocks with full (per-frame) attention.
    rope_theta: base of the 2-D rotary embedding.
    num_position_embeddings: Qwen3-VL's learned position table (a square grid) size.
    deepstack_visual_indexes: Qwen3-VL blocks whose outputs feed the DeepStack mergers.
  """
  variant: str
  depth: int
  hidden_size: int
  intermediate_size: int
  num_heads: int
  out_hidden_size: int
  patch_size: int = 14
  temporal_patch_size: int = 2
  in_channels: int = 3
  spatial_merge_size: int = 2
  hidden_act: str = 'quick_gelu'
  window_size: int | None = None
  fullatt_block_indexes: tuple[int, ...] = ()
  rope_theta: float = 10000.0
  num_position_embeddings: int = 0
  deepstack_visual_indexes: tuple[int, ...] = ()

  def __post_init__(self):
    if self.variant not in VISION_VARIANTS:
      raise ValueError(f'unsupported vision variant {self.variant!r}; supported: '
                       f'{VISION_VARIANTS}')
    for name in ('fullatt_block_indexes', 'deepstack_visual_indexes'):
      object.__setattr__(self, name, tuple(int(i) for i in getattr(self, name)))
    if self.variant == 'qwen3_vl':
      side = int(round(self.num_position_embeddings ** 0.5))
      if side < 2 or side * side != self.num_position_embeddings:
        raise ValueError(f'num_position_embeddings {self.num_position_embeddings} must be a '
                         'square of at least 4')
    if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 4:
      raise ValueError(f'vision hidden_size {self.hidden_size} / num_heads {self.num_heads} must '
                       'be an integer head_dim divisible by 4 (2-D rotary)')
    if self.hidden_act not in _ACTIVATIONS and self.hidden_act != 'silu':
      raise ValueError(f'unsupported vision hidden_act {self.hidden_act!r}')
    if self.variant == 'qwen2_5_vl':
      if self.hidden_act != 'silu':
        raise ValueError('Qwen2.5-VL vision blocks are SwiGLU: hidden_act must be silu')
      if not self.window_size or self.window_merged < 1:
        raise ValueError(f'window_size {self.window_size} must be at least spatial_merge_size '
                         f'* patch_size = {self.spatial_merge_size * self.patch_size}')

  @property
  def patch_dim(self) -> int:
    """Features of one flattened patch: C * T * p * p."""
    return self.in_channels * self.temporal_patch_size * self.patch_size ** 2

  @property
  def window_merged(self) -> int | None:
    """Window side in merged tokens (Qwen2.5-VL), None without windows."""
    if self.variant != 'qwen2_5_vl':
      return None
    return self.window_size // self.spatial_merge_size // self.patch_size

  @classmethod
  def from_hf(cls, variant: str, hf: Mapping[str, Any]) -> 'QwenVisionConfig':
    """From the `vision_config` dict of a Qwen2-VL / Qwen2.5-VL config.json (transformers'
    defaults for absent keys)."""
    rope = hf.get('rope_parameters') or {}
    common = dict(variant=variant, depth=int(hf.get('depth', 32)),
                  num_heads=int(hf.get('num_heads', 16)),
                  patch_size=int(hf.get('patch_size', 14)),
                  temporal_patch_size=int(hf.get('temporal_patch_size', 2)),
                  in_channels=int(hf.get('in_channels', 3)),
                  spatial_merge_size=int(hf.get('spatial_merge_size', 2)),
                  rope_theta=float(rope.get('rope_theta', 10000.0)))
    if variant == 'qwen3_vl':
      return cls(hidden_size=int(hf.get('hidden_size', 1152)),
                 intermediate_size=int(hf.get('intermediate_size', 4304)),
                 out_hidden_size=int(hf.get('out_hidden_size', 3584)),
                 hidden_act=hf.get('hidden_act', 'gelu_pytorch_tanh'),
                 num_position_embeddings=int(hf.get('num_position_embeddings', 2304)),
                 deepstack_visual_indexes=tuple(hf.get('deepstack_visual_indexes', (8, 16, 24))),
                 **{**common, 'depth': int(hf.get('depth', 27)),
                    'patch_size': int(hf.get('patch_size', 16))})
    if variant == 'qwen2_vl':
      embed = int(hf.get('embed_dim', 1280))
      return cls(hidden_size=embed, intermediate_size=int(embed * hf.get('mlp_ratio', 4)),
                 out_hidden_size=int(hf.get('hidden_size', 3584)),
                 hidden_act=hf.get('hidden_act', 'quick_gelu'), **common)
    return cls(hidden_size=int(hf.get('hidden_size', 3584)),
               intermediate_size=int(hf.get('intermediate_size', 3420)),
               out_hidden_size=int(hf.get('out_hidden_size', 3584)),
               hidden_act=hf.get('hidden_act', 'silu'),
               window_size=int(hf.get('window_size', 112)),
               fullatt_block_indexes=tuple(hf.get('fullatt_block_indexes', (7, 15, 23, 31))),
               **common)

  def to_hf(self) -> dict[str, Any]:
    """The `vision_config` dict transformers reads back as this tower."""
    hf = dict(depth=self.depth, num_heads=self.num_heads, patch_size=self.patch_size,
              temporal_patch_size=self.temporal_patch_size, in_channels=self.in_channels,
              spatial_merge_size=self.spatial_merge_size, hidden_act=self.hidden_act,
              rope_parameters={'rope_type': 'axial', 'rope_theta': self.rope_theta})
    if self.variant == 'qwen2_vl':
      if self.intermediate_size % self.hidden_size:
        raise ValueError('Qwen2-VL writes the MLP width as an integer mlp_ratio of embed_dim')
      hf.update(model_type='qwen2_vl_vision', embed_dim=self.hidden_size,
                mlp_ratio=self.intermediate_size // self.hidden_size,
                hidden_size=self.out_hidden_size)
    elif self.variant == 'qwen3_vl':
      hf.update(model_type='qwen3_vl_vision', hidden_size=self.hidden_size,
                intermediate_size=self.intermediate_size, out_hidden_size=self.out_hidden_size,
                num_position_embeddings=self.num_position_embeddings,
                deepstack_visual_indexes=list(self.deepstack_visual_indexes))
    else:
      hf.update(model_type='qwen2_5_vl_vision', hidden_size=self.hidden_size,
                intermediate_size=self.intermediate_size, out_hidden_size=self.out_hidden_size,
                window_size=self.window_size,
                fullatt_block_indexes=list(self.fullatt_block_indexes))
    return hf


class VisionAttention(nnx.Module):
  """Bidirectional multi-head attention within segments (rows of a PatchLayout table)."""

  def __init__(self, c: QwenVisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.num_heads, self.dtype = c.num_heads, dtype
    self.qkv = Linear(c.hidden_size, 3 * c.hidden_size, names=('embed', 'heads'), **kw)
    self.proj = Linear(c.hidden_size, c.hidden_size, names=('heads', 'embed'), **kw)

  def __call__(self, x, cos, sin, segments):
    """x [P, d]; cos/sin [P, head_dim] float32; segments [S, L] patch indices (P = none)."""
    p, d = x.shape
    heads = self.num_heads
    qkv = self.qkv(x).reshape(p, 3, heads, d // heads)
    # transformers rotates in float32 and casts back.
    rotate = lambda y: (y.astype(jnp.float32) * cos[:, None] + rotate_half(
        y.astype(jnp.float32)) * sin[:, None]).astype(self.dtype)
    q, k, v = rotate(qkv[:, 0]), rotate(qkv[:, 1]), qkv[:, 2]
    # One zero row at index P, where the table's padding points.
    gather = lambda y: jnp.concatenate([y, jnp.zeros_like(y[:1])])[segments]  # [S, L, H, hd]
    scores = jnp.einsum('sqhc,skhc->shqk', gather(q), gather(k),
                        preferred_element_type=jnp.float32) * (d // heads) ** -0.5
    scores = jnp.where((segments < p)[:, None, None, :], scores, _MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
    out = jnp.einsum('shqk,skhc->sqhc', probs, gather(v)).reshape(segments.shape + (d,))
    # Scatter back; every padding slot writes to the extra row P, which is dropped.
    out = jnp.zeros((p + 1, d), out.dtype).at[segments].set(out)[:p]
    return self.proj(out)


class _Qwen3MLP(nnx.Module):
  """Qwen3-VL's block MLP: linear_fc2(act(linear_fc1(x)))."""

  def __init__(self, c: QwenVisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.act = c.hidden_act
    self.linear_fc1 = Linear(c.hidden_size, c.intermediate_size, names=('embed', 'mlp'), **kw)
    self.linear_fc2 = Linear(c.intermediate_size, c.hidden_size, names=('mlp', 'embed'), **kw)

  def __call__(self, x):
    return self.linear_fc2(_ACTIVATIONS[self.act](self.linear_fc1(x)))


class _FcMLP(nnx.Module):
  """Qwen2-VL's block MLP: fc2(act(fc1(x)))."""

  def __init__(self, c: QwenVisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.act = c.hidden_act
    self.fc1 = Linear(c.hidden_size, c.intermediate_size, names=('embed', 'mlp'), **kw)
    self.fc2 = Linear(c.intermediate_size, c.hidden_size, names=('mlp', 'embed'), **kw)

  def __call__(self, x):
    return self.fc2(_ACTIVATIONS[self.act](self.fc1(x)))


def _norm(c: QwenVisionConfig, size: int, *, dtype, param_dtype, rngs):
  if c.variant in ('qwen2_vl', 'qwen3_vl'):
    return LayerNorm(size, _EPS, param_dtype=param_dtype)
  return RMSNorm(size, eps=_EPS, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class VisionBlock(nnx.Module):
  """x + attn(norm1(x)), then + mlp(norm2(.))."""

  def __init__(self, c: QwenVisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm1 = _norm(c, c.hidden_size, **kw)
    self.norm2 = _norm(c, c.hidden_size, **kw)
    self.attn = VisionAttention(c, **kw)
    if c.variant == 'qwen2_vl':
      self.mlp = _FcMLP(c, **kw)
    elif c.variant == 'qwen3_vl':
      self.mlp = _Qwen3MLP(c, **kw)
    else:  # SwiGLU with biases: decoder's MLP on a config-shaped namespace
      shape = types.SimpleNamespace(hidden_size=c.hidden_size,
                                    intermediate_size=c.intermediate_size, mlp_bias=True)
      self.mlp = MLP(shape, **kw)

  def __call__(self, x, cos, sin, segments):
    x = x + self.attn(self.norm1(x), cos, sin, segments)
    return x + self.mlp(self.norm2(x))


def run_block(block: VisionBlock, x, cos, sin, segments):
  """One block as a function of the block (what ``nnx.remat`` wraps)."""
  return block(x, cos, sin, segments)


class PatchMerger(nnx.Module):
  """norm, merge**2 consecutive patches -> one vector, Linear -> GELU -> Linear (HF mlp.0/mlp.2)."""

  def __init__(self, c: QwenVisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.unit = c.spatial_merge_size ** 2
    width = c.hidden_size * self.unit
    self.ln_q = _norm(c, c.hidden_size, **kw)
    self.mlp = nnx.List([Linear(width, width, names=('embed', 'mlp'), use_bias=True, **kw),
                         Linear(width, c.out_hidden_size, names=('mlp', 'embed'), use_bias=True,
                                **kw)])

  def __call__(self, x):
    x = self.ln_q(x).reshape(x.shape[0] // self.unit, -1)
    return self.mlp[1](jax.nn.gelu(self.mlp[0](x), approximate=False))


class PatchEmbed(nnx.Module):
  """The Conv3d patch embedding as a matmul: proj kernel [C*T*p*p, d] (a bias in Qwen3-VL)."""

  def __init__(self, c: QwenVisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.proj = Linear(c.patch_dim, c.hidden_size, names=(None, 'embed'),
                       use_bias=c.variant == 'qwen3_vl',
                       dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, pixel_values):
    return self.proj(pixel_values)


def vision_rotary(config: QwenVisionConfig, layout: PatchLayout):
  """cos, sin [P, head_dim] float32 of the 2-D rotary embedding: head_dim / 4 frequencies over
  the patch row, as many over the column, the pair repeated (transformers' recomposition)."""
  head_dim = config.hidden_size // config.num_heads
  quarter = np.arange(0, head_dim // 2, 2, dtype=np.float32) / (head_dim // 2)
  inv_freq = jnp.asarray((1.0 / config.rope_theta ** quarter).astype(np.float32))
  rows = jnp.asarray(layout.rows).astype(jnp.float32)[:, None] * inv_freq
  cols = jnp.asarray(layout.cols).astype(jnp.float32)[:, None] * inv_freq
  angles = jnp.concatenate([rows, cols, rows, cols], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def square_layout(config: QwenVisionConfig, patches_per_image: int
                  ) -> tuple[PatchLayout, list[list[int]]]:
  """The layout and ``image_grid_thw`` of one square image of ``patches_per_image`` patches."""
  side = math.isqrt(patches_per_image)
  if side * side != patches_per_image or side % config.spatial_merge_size:
    raise ValueError(f'{patches_per_image} patches per image: this tower reads square images '
                     f'here, whose side in patches is a multiple of {config.spatial_merge_size}')
  grid = [[1, side, side]]
  return patch_layout(grid, spatial_merge_size=config.spatial_merge_size,
                      window_merged=config.window_merged), grid


def tokens_per_image(config: QwenVisionConfig, patches_per_image: int) -> int:
  """Visual tokens of an image of ``patches_per_image`` patches (the merger joins merge**2)."""
  return patches_per_image // config.spatial_merge_size ** 2


class QwenVisionTower(nnx.Module):
  """Qwen2-VL / Qwen2.5-VL vision transformer + merger. Parameter names follow HF's `visual.*`."""

  def __init__(self, config: QwenVisionConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
               remat: str | bool = 'none', rngs: nnx.Rngs):
    self.config = config
    self.dtype = dtype
    self.remat = remat_name(remat)  # per block (decomp.models.remat)
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.patch_embed = PatchEmbed(config, **kw)
    self.blocks = nnx.List([VisionBlock(config, **kw) for _ in range(config.depth)])
    self.merger = PatchMerger(config, **kw)

  def _rotary(self, layout: PatchLayout):
    return vision_rotary(self.config, layout)

  def __call__(self, pixel_values: jax.Array, layout: PatchLayout) -> jax.Array:
    """pixel_values [P, C*T*p*p], layout arrays [P] -> visual tokens [P / merge**2, out_hidden]."""
    c = self.config
    x = jnp.asarray(pixel_values)
    if x.ndim != 2 or x.shape[1] != c.patch_dim:
      raise ValueError(f'pixel_values must be [patches, {c.patch_dim}] (C*T*p*p of this tower), '
                       f'got {x.shape}')
    if x.shape[0] % self.merger.unit or x.shape[0] != np.shape(layout.rows)[0]:
      raise ValueError(f'{x.shape[0]} patches: must match the layout ({np.shape(layout.rows)[0]}) '
                       f'and be a multiple of spatial_merge_size**2 = {self.merger.unit}')
    x = self.patch_embed(x.astype(self.dtype))
    cos, sin = self._rotary(layout)
    frames, windows = jnp.asarray(layout.full), jnp.asarray(layout.window)
    for i, block in enumerate(self.blocks):
      full = c.variant == 'qwen2_vl' or i in c.fullatt_block_indexes
      x = rematerialized(run_block, self.remat)(block, x, cos, sin, frames if full else windows)
    return self.merger(x)

  def image_features(self, patches: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    """``[K, p, patch_dim]`` same-size square images -> ``[K, p / merge**2, out_hidden]`` (the
    ImageTower protocol); each image attends only to itself (vmapped with one image's layout)."""
    layout, _ = square_layout(self.config, patches.shape[1])
    return jax.vmap(lambda x: self(x, layout))(patches), []

  def tokens_per_image(self, patches_per_image: int) -> int:
    return tokens_per_image(self.config, patches_per_image)
