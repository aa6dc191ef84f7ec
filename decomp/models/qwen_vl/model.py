"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL (`*ForConditionalGeneration`): vision tower + M-RoPE decoder.

`QwenVL` holds `visual` (a `QwenVisionTower`, or a `Qwen3VisionTower` for Qwen3-VL) and
`decoder` (the `Decoder` of the language model -- Qwen2 for Qwen2(.5)-VL, Qwen3 with q/k norms
and interleaved M-RoPE for Qwen3-VL -- with `config.text.mrope_section` set). Qwen3-VL's
DeepStack features are added to the hidden states at the image tokens after LM layers 0, 1, ...
(`Decoder.hidden_states(layer_residuals=...)`). A forward pass has two halves:

1. host (numpy, before jit): `QwenVL.prepare(input_ids, attention_mask, pixel_values,
   image_grid_thw)` checks the image-pad tokens against image_grid_thw, computes the [3, B, T]
   M-RoPE positions (transformers' get_rope_index) and the per-patch layout, and pads the
   patches to a bucket (`num_patches`) -> `VLInputs`, a pytree of fixed-shape arrays;
2. traced (jit-able): `hidden_states(inputs)` / `logits(inputs)` run the tower, splice the
   visual tokens into the image-pad embeddings in order (the k-th image-pad token of the batch,
   row-major, takes the k-th visual token, as transformers' masked_scatter), and run the decoder.

`model(input_ids, attention_mask, pixel_values=None, image_grid_thw=None)` does both, with what
transformers' processor returns (numpy or jax arrays), and gives transformers' logits [B, T, V].

Positions differ from transformers 5.x in one case only: a batch with no image at all and left
padding. transformers then uses arange(T) (padding-dependent); here every row gets positions
over its valid tokens (get_rope_index's rule, and transformers 4.x's), so a row scores the same
whatever the padding and whether or not its batch holds images.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from decomp.models.config import DecoderConfig
from decomp.models.decoder import Decoder
from decomp.models.qwen_vl.mrope import (PatchLayout, bucket_size, check_grid, patch_layout,
                                 position_interpolation, rope_index)
from decomp.models.qwen_vl.vision3 import Qwen3VisionTower
from decomp.models.qwen_vl.vision import QwenVisionConfig, QwenVisionTower

__all__ = ['QwenVL', 'QwenVLConfig', 'VLInputs', 'VL_ARCHITECTURES']

# model_type -> transformers class.
VL_ARCHITECTURES = {'qwen2_vl': 'Qwen2VLForConditionalGeneration',
                    'qwen2_5_vl': 'Qwen2_5_VLForConditionalGeneration',
                    'qwen3_vl': 'Qwen3VLForConditionalGeneration'}
# transformers' text-config defaults per architecture (Qwen3-VL's text model is Qwen3).
_VL_DEFAULT_THETA = {'qwen2_vl': 1e6, 'qwen2_5_vl': 1e6, 'qwen3_vl': 5e5}
_VL_DEFAULT_EPS = {'qwen2_vl': 1e-5, 'qwen2_5_vl': 1e-5, 'qwen3_vl': 1e-6}
_DEFAULT_MROPE = {'qwen2_vl': (16, 24, 24), 'qwen2_5_vl': (16, 24, 24), 'qwen3_vl': (24, 20, 20)}
_TEXT_KEYS_DROPPED = ('architectures', 'model_type', 'head_dim', 'rope_parameters', 'rope_scaling',
                      'rope_theta', 'text_config', 'vision_config', 'tie_word_embeddings')


@dataclasses.dataclass(frozen=True)
class QwenVLConfig:
  """A Qwen2-VL / Qwen2.5-VL / Qwen3-VL model: text decoder, vision tower, special token ids."""
  architecture: str
  text: DecoderConfig
  vision: QwenVisionConfig
  image_token_id: int = 151655
  video_token_id: int = 151656
  vision_start_token_id: int = 151652
  vision_end_token_id: int = 151653

  def __post_init__(self):
    if self.architecture not in VL_ARCHITECTURES:
      raise ValueError(f'unsupported VL architecture {self.architecture!r}; supported: '
                       f'{sorted(VL_ARCHITECTURES)}')
    if self.vision.variant != self.architecture:
      raise ValueError(f'{self.architecture} needs a {self.architecture} vision tower, got '
                       f'{self.vision.variant}')
    if self.text.mrope_section is None:
      raise ValueError('the text config of a VL model needs mrope_section')
    if self.vision.out_hidden_size != self.text.hidden_size:
      raise ValueError(f'the vision merger outputs {self.vision.out_hidden_size} features but the '
                       f'language model is {self.text.hidden_size} wide')

  @property
  def hf_architecture(self) -> str:
    return VL_ARCHITECTURES[self.architecture]

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any]) -> 'QwenVLConfig':
    """Reads config.json in every layout in circulation: text keys flat at the root (4.4x) or in
    `text_config` (4.5x / 5.x); `rope_scaling {type: mrope}` + `rope_theta` or `rope_parameters`;
    `tie_word_embeddings` at the root or in `text_config`."""
    architecture = vl_architecture_of(hf)
    text = hf.get('text_config')
    text = dict(text) if isinstance(text, Mapping) else dict(hf)
    rope = dict(text.get('rope_parameters') or text.get('rope_scaling')
                or hf.get('rope_parameters') or hf.get('rope_scaling') or {})
    mrope = tuple(rope.pop('mrope_section', _DEFAULT_MROPE[architecture]))
    rope.pop('mrope_interleaved', None)  # transformers' Qwen3-VL always interleaves
    if rope.get('rope_type', rope.get('type')) in ('mrope', 'default', None):
      rope = {k: v for k, v in rope.items() if k not in ('type', 'rope_type')}
      rope['rope_type'] = 'default'
    theta = rope.get('rope_theta', text.get('rope_theta', hf.get('rope_theta',
                                                                _VL_DEFAULT_THETA[architecture])))
    rope['rope_theta'] = theta
    tied = bool(hf.get('tie_word_embeddings', False) or text.get('tie_word_embeddings', False))
    decoder_hf = {k: v for k, v in text.items() if k not in _TEXT_KEYS_DROPPED}
    qwen3 = architecture == 'qwen3_vl'
    decoder_hf.update(architectures=['Qwen3ForCausalLM' if qwen3 else 'Qwen2ForCausalLM'],
                      model_type='qwen3' if qwen3 else 'qwen2', rope_parameters=rope,
                      tie_word_embeddings=tied)
    decoder_hf.setdefault('rms_norm_eps', _VL_DEFAULT_EPS[architecture])
    if qwen3 and text.get('head_dim') is not None:
      decoder_hf['head_dim'] = text['head_dim']
    elif not qwen3 and text.get('head_dim') not in (None, int(text['hidden_size']) //
                                                    int(text['num_attention_heads'])):
      raise ValueError(f'{architecture}: text head_dim {text["head_dim"]} != hidden_size / '
                       'num_attention_heads (the Qwen2-VL attention ignores head_dim)')
    text_config = dataclasses.replace(DecoderConfig.from_hf(decoder_hf), mrope_section=mrope,
                                      mrope_interleaved=qwen3)
    vision = hf.get('vision_config')
    if not isinstance(vision, Mapping):
      raise ValueError(f'{architecture} config.json lacks a vision_config dict')
    ids = {k: int(hf[k]) for k in ('image_token_id', 'video_token_id', 'vision_start_token_id',
                                   'vision_end_token_id') if hf.get(k) is not None}
    return cls(architecture=architecture, text=text_config,
               vision=QwenVisionConfig.from_hf(architecture, vision), **ids)

  def to_hf(self) -> dict[str, Any]:
    """config.json in transformers 5.x layout; transformers 5.24 loads it as this class."""
    t = self.text
    text = {'model_type': f'{self.architecture}_text', 'vocab_size': t.vocab_size,
            'hidden_size': t.hidden_size, 'intermediate_size': t.intermediate_size,
            'num_hidden_layers': t.num_layers, 'num_attention_heads': t.num_heads,
            'num_key_value_heads': t.num_kv_heads, 'hidden_act': 'silu',
            'max_position_embeddings': t.max_position_embeddings, 'rms_norm_eps': t.rms_norm_eps,
            'rope_parameters': {'rope_type': 'default', 'rope_theta': float(t.rope_theta),
                                'mrope_section': list(t.mrope_section)}}
    if self.architecture == 'qwen3_vl':
      text.update(head_dim=t.head_dim, attention_bias=t.attention_bias)
      text['rope_parameters']['mrope_interleaved'] = True
    else:
      text['use_sliding_window'] = False
    if t.rope_scaling is not None:
      raise ValueError(f'{self.hf_architecture} takes no rope scaling besides mrope')
    return {'architectures': [self.hf_architecture], 'model_type': self.architecture,
            'text_config': text, 'vision_config': self.vision.to_hf(),
            'image_token_id': self.image_token_id, 'video_token_id': self.video_token_id,
            'vision_start_token_id': self.vision_start_token_id,
            'vision_end_token_id': self.vision_end_token_id,
            'tie_word_embeddings': t.tie_word_embeddings}


def vl_architecture_of(hf: Mapping[str, Any]) -> str | None:
  """'qwen2_vl' | 'qwen2_5_vl' when config.json describes a supported VL model, else None."""
  by_class = {v: k for k, v in VL_ARCHITECTURES.items()}
  for name in hf.get('architectures') or ():
    if name in by_class:
      return by_class[name]
  if not hf.get('architectures') and hf.get('model_type') in VL_ARCHITECTURES:
    return hf['model_type']
  return None


class VLInputs(NamedTuple):
  """What the traced forward pass reads; build it with `QwenVL.prepare` (host side).

  input_ids, attention_mask [B, T] int32; positions [3, B, T] int32 (M-RoPE); pixel_values
  [P, C*T*p*p] (P padded to the bucket) and layout (a PatchLayout) or both None.
  """
  input_ids: Any
  attention_mask: Any
  positions: Any
  pixel_values: Any = None
  layout: PatchLayout | None = None


def prepare_inputs(config: QwenVLConfig, input_ids, attention_mask=None, pixel_values=None,
                   image_grid_thw=None, *, num_patches: int | None = None,
                   bucket: bool = False) -> VLInputs:
  """Host-side half of the forward pass (see the module docstring).

  num_patches: pad the patches to this many (>= the real count). bucket=True picks
  `bucket_size(real count, multiple=merge**2)` when num_patches is None, and also buckets the
  attention-segment tables (number of segments and their longest length, see
  mrope.segment_table), so batches of different image sizes reuse a handful of compiled shapes.
  Padding patches are zeros in no attention segment; their visual tokens are computed but
  never spliced.

  Raises ValueError for pixel_values without image_grid_thw (or the reverse), a patch count
  that disagrees with image_grid_thw, and image-pad tokens that disagree with image_grid_thw.
  """
  ids = np.asarray(input_ids)
  if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f'input_ids must be a [B, T] int array, got shape {ids.shape} dtype '
                     f'{ids.dtype}')
  mask = np.ones(ids.shape, np.int32) if attention_mask is None else np.asarray(attention_mask)
  if mask.shape != ids.shape:
    raise ValueError(f'attention_mask shape {mask.shape} does not match input_ids {ids.shape}')
  if (pixel_values is None) != (image_grid_thw is None):
    raise ValueError('pixel_values and image_grid_thw come together (both or neither)')
  v = config.vision
  positions = rope_index(ids, mask, image_grid_thw, image_token_id=config.image_token_id,
                         spatial_merge_size=v.spatial_merge_size)
  base = dict(input_ids=ids.astype(np.int32), attention_mask=mask.astype(np.int32),
              positions=positions)
  if pixel_values is None:
    return VLInputs(**base)
  grid = check_grid(image_grid_thw, v.spatial_merge_size)
  pixels = np.asarray(pixel_values)
  total = int(grid.prod(-1).sum())
  if pixels.ndim != 2 or pixels.shape != (total, v.patch_dim):
    raise ValueError(f'pixel_values has shape {pixels.shape} but image_grid_thw '
                     f'{grid.tolist()} and the tower need [{total}, {v.patch_dim}]')
  if bucket and num_patches is None:
    num_patches = bucket_size(total, multiple=v.spatial_merge_size ** 2)
  layout = patch_layout(grid, spatial_merge_size=v.spatial_merge_size,
                        window_merged=v.window_merged, num_patches=num_patches, bucket=bucket)
  size = len(layout.rows)
  if v.variant == 'qwen3_vl':
    index, weight = position_interpolation(
        grid, spatial_merge_size=v.spatial_merge_size,
        num_grid_per_side=int(round(v.num_position_embeddings ** 0.5)), num_patches=size)
    layout = layout._replace(pos_index=index, pos_weight=weight)
  if size % v.spatial_merge_size ** 2:
    raise ValueError(f'num_patches={size} must be a multiple of spatial_merge_size**2')
  if size > total:
    pixels = np.concatenate([pixels, np.zeros((size - total, v.patch_dim), pixels.dtype)])
  return VLInputs(pixel_values=pixels, layout=layout, **base)


class QwenVL(nnx.Module):
  """Qwen2-VL / Qwen2.5-VL / Qwen3-VL. Params: `visual.*` (the vision tower), `decoder.*`.

  Mirrors Decoder where a reranker needs it: `hidden_states(inputs)` [B, T, d],
  `lm_head_rows(token_ids)` [K, d] and `log_normalizer(h)` (logsumexp over the vocabulary).
  """

  def __init__(self, config: QwenVLConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
               remat: str | bool = 'none', rngs: nnx.Rngs):
    self.config = config
    self.dtype = dtype
    tower = Qwen3VisionTower if config.architecture == 'qwen3_vl' else QwenVisionTower
    self.visual = tower(config.vision, dtype=dtype, param_dtype=param_dtype, remat=remat,
                        rngs=rngs)
    self.decoder = Decoder(config.text, dtype=dtype, param_dtype=param_dtype, remat=remat,
                           rngs=rngs)

  def prepare(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None, *,
              num_patches: int | None = None, bucket: bool = False) -> VLInputs:
    """Host-side inputs of `hidden_states` / `logits` (see `prepare_inputs`)."""
    return prepare_inputs(self.config, input_ids, attention_mask, pixel_values, image_grid_thw,
                          num_patches=num_patches, bucket=bucket)

  def _embed(self, inputs: VLInputs) -> tuple[jax.Array, list[jax.Array]]:
    ids = jnp.asarray(inputs.input_ids)
    x = self.decoder.embed(ids)
    if inputs.pixel_values is None:
      return x, []
    out = self.visual(inputs.pixel_values, inputs.layout)
    features, deepstack = out if isinstance(out, tuple) else (out, [])
    is_image = (ids == self.config.image_token_id)[..., None]
    index = jnp.cumsum(is_image.reshape(-1)).reshape(ids.shape) - 1
    index = jnp.clip(index, 0, features.shape[0] - 1)
    scatter = lambda f, base: jnp.where(is_image, f.astype(x.dtype)[index], base)
    return scatter(features, x), [scatter(f, jnp.zeros((), x.dtype)) for f in deepstack]

  def embed(self, inputs: VLInputs) -> jax.Array:
    """Token embeddings [B, T, d] with the visual tokens spliced into the image-pad slots."""
    return self._embed(inputs)[0]

  def hidden_states(self, inputs: VLInputs) -> jax.Array:
    """Final RMS-normed hidden states [B, T, d] (compute dtype)."""
    x, deepstack = self._embed(inputs)
    return self.decoder.hidden_states(attention_mask=inputs.attention_mask, inputs_embeds=x,
                                      positions=inputs.positions, layer_residuals=deepstack)

  def logits(self, inputs: VLInputs) -> jax.Array:
    """Full-vocabulary logits [B, T, V]."""
    h = self.hidden_states(inputs)
    b, t, d = h.shape
    head = self.decoder.lm_head_matrix().astype(self.dtype)
    return jnp.einsum('nd,vd->nv', h.reshape(b * t, d), head).reshape(b, t, -1)

  def __call__(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None,
               mm_token_type_ids=None) -> jax.Array:
    """Logits [B, T, V] for what transformers' processor returns (concrete arrays, not traced).

    mm_token_type_ids (which the processor also returns) is accepted and checked against the
    image-pad tokens; the positions are derived from input_ids. The traced half runs under
    `nnx.jit` (one compilation per input shape).
    """
    if mm_token_type_ids is not None:
      types = np.asarray(mm_token_type_ids)
      if (types.astype(bool) != (np.asarray(input_ids) == self.config.image_token_id)).any():
        raise ValueError('mm_token_type_ids does not mark exactly the image-pad tokens (videos '
                         'are not supported)')
    return _jit_logits(self, self.prepare(input_ids, attention_mask, pixel_values,
                                          image_grid_thw))

  def lm_head_rows(self, token_ids: jax.Array) -> jax.Array:
    """LM-head rows [K, d] of token_ids [K] (see Decoder.lm_head_rows)."""
    return self.decoder.lm_head_rows(token_ids)

  def log_normalizer(self, h: jax.Array) -> jax.Array:
    """logsumexp over the vocabulary of h @ W_head.T: h [..., d] -> [...] float32."""
    return self.decoder.log_normalizer(h)


@nnx.jit
def _jit_logits(model: QwenVL, inputs: VLInputs) -> jax.Array:
  return model.logits(inputs)
