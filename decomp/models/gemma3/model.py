"""A Flax NNX Gemma 3 text decoder, equal to transformers' `Gemma3ForCausalLM`.

What differs from decomp's Llama-style decoder: RMSNorm scales by ``1 + weight`` (in float32,
then cast); every block has four norms (before and after attention, before and after the MLP:
"sandwich" norms); per-head q/k RMSNorm; scores scaled by ``query_pre_attn_scalar ** -0.5``;
sliding-window layers (a query sees the ``sliding_window`` latest keys) interleaved with full
ones, each type with its own RoPE base; embeddings multiplied by ``sqrt(hidden_size)``; a
gelu(tanh) gated MLP; tied embeddings by default; optional final logit soft-capping.

Module and parameter names follow decomp's decoder (``layers[i].self_attn.q_proj.kernel``,
``...input_layernorm.scale``, ``embed_tokens``, ``lm_head``), so LoRA, the LM-head filter,
sharding rules and the HF tensor names work unchanged. Padding is handled as there: positions
``cumsum(mask) - 1``, attention causal over valid keys.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from decomp.models.blocks import (_param, check_at_index, embedded_inputs, head_log_normalizer,
                                  head_rows, token_matrix)
from decomp.models.decoder import Linear, padding_positions, rotate_half
from decomp.models.remat import remat_name, rematerialized
from decomp.models.gemma3.config import LAYER_TYPES, Gemma3TextConfig, inv_freq

__all__ = ['Gemma3', 'Gemma3RMSNorm']

_MASKED = -1e30  # finite, so a fully padded query row softmaxes to uniform instead of NaN


class Gemma3RMSNorm(nnx.Module):
  """``x / rms(x) * (1 + weight)``, computed in float32 and cast back (Gemma's order)."""

  def __init__(self, size: int, *, eps: float, dtype, param_dtype, rngs: nnx.Rngs):
    self.eps = eps
    self.scale = _param(rngs, (size,), ('norm',), param_dtype, nnx.initializers.zeros)

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (x32 * (1.0 + self.scale[...].astype(jnp.float32))).astype(x.dtype)


class Attention(nnx.Module):
  """Grouped-query attention with per-head q/k norms; plain masked softmax in float32."""

  def __init__(self, config: Gemma3TextConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    c = config
    self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
    self.scaling = c.query_pre_attn_scalar ** -0.5
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    bias = c.attention_bias
    self.q_proj = Linear(c.hidden_size, c.num_heads * c.head_dim, names=('embed', 'heads'),
                         use_bias=bias, **kw)
    self.k_proj = Linear(c.hidden_size, c.num_kv_heads * c.head_dim, names=('embed', 'kv_heads'),
                         use_bias=bias, **kw)
    self.v_proj = Linear(c.hidden_size, c.num_kv_heads * c.head_dim, names=('embed', 'kv_heads'),
                         use_bias=bias, **kw)
    self.o_proj = Linear(c.num_heads * c.head_dim, c.hidden_size, names=('heads', 'embed'),
                         use_bias=bias, **kw)
    self.q_norm = Gemma3RMSNorm(c.head_dim, eps=c.rms_norm_eps, **kw)
    self.k_norm = Gemma3RMSNorm(c.head_dim, eps=c.rms_norm_eps, **kw)

  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array) -> jax.Array:
    """x [B, T, d]; cos/sin [B, T, hd]; mask [B, T, T] bool -> [B, T, d]."""
    b, t, _ = x.shape
    kv, groups, hd = self.num_kv_heads, self.num_heads // self.num_kv_heads, self.head_dim
    q = self.q_norm(self.q_proj(x).reshape(b, t, kv, groups, hd)).transpose(0, 2, 3, 1, 4)
    k = self.k_norm(self.k_proj(x).reshape(b, t, kv, hd)).transpose(0, 2, 1, 3)
    v = self.v_proj(x).reshape(b, t, kv, hd).transpose(0, 2, 1, 3)
    q = q * cos[:, None, None] + rotate_half(q) * sin[:, None, None]
    k = k * cos[:, None] + rotate_half(k) * sin[:, None]
    scores = jnp.einsum('bkgth,bksh->bkgts', q, k, preferred_element_type=jnp.float32)
    scores = jnp.where(mask[:, None, None], scores * self.scaling, _MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(x.dtype)
    out = jnp.einsum('bkgts,bksh->bkgth', probs, v).transpose(0, 3, 1, 2, 4)
    return self.o_proj(out.reshape(b, t, self.num_heads * hd))


class MLP(nnx.Module):
  """down(gelu_tanh(gate(x)) * up(x))."""

  def __init__(self, config: Gemma3TextConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    d, i = config.hidden_size, config.intermediate_size
    self.gate_proj = Linear(d, i, names=('embed', 'mlp'), **kw)
    self.up_proj = Linear(d, i, names=('embed', 'mlp'), **kw)
    self.down_proj = Linear(i, d, names=('mlp', 'embed'), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down_proj(jax.nn.gelu(self.gate_proj(x), approximate=True) * self.up_proj(x))


class DecoderLayer(nnx.Module):
  """Sandwich-norm block: x + post_attn(attn(pre(x))), then + post_ff(mlp(pre_ff(.)))."""

  def __init__(self, config: Gemma3TextConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    norm = lambda: Gemma3RMSNorm(config.hidden_size, eps=config.rms_norm_eps, **kw)
    self.input_layernorm = norm()
    self.self_attn = Attention(config, **kw)
    self.post_attention_layernorm = norm()
    self.pre_feedforward_layernorm = norm()
    self.mlp = MLP(config, **kw)
    self.post_feedforward_layernorm = norm()

  def __call__(self, x, cos, sin, mask):
    x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin, mask))
    return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


def _run_layer(layer: DecoderLayer, x, cos, sin, mask):
  return layer(x, cos, sin, mask)



class Gemma3(nnx.Module):
  """Gemma 3 text decoder LM; a :class:`~decomp.models.backbone.Backbone`.

  Params: ``embed_tokens [V, d]``, ``layers[i].*``, ``norm``, ``lm_head [V, d]`` or None (tied;
  the LM-head parameter carries Variable metadata ``lm_head=True``).
  """

  def __init__(self, config: Gemma3TextConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
               remat: str | bool = 'none', rngs: nnx.Rngs):
    if not isinstance(config, Gemma3TextConfig):
      raise TypeError(f'config must be a Gemma3TextConfig, got {type(config).__name__}')
    self.config = config
    self.dtype = dtype
    self.remat = remat_name(remat)
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.embed_tokens = token_matrix(config, rngs, param_dtype, head=False)
    self.layers = nnx.List([DecoderLayer(config, **kw) for _ in range(config.num_layers)])
    self.norm = Gemma3RMSNorm(config.hidden_size, eps=config.rms_norm_eps, **kw)
    self.lm_head = token_matrix(config, rngs, param_dtype, head=True)

  def lm_head_matrix(self) -> jax.Array:
    return (self.embed_tokens if self.lm_head is None else self.lm_head)[...]

  def embed(self, input_ids: jax.Array) -> jax.Array:
    """``[B, T]`` ids -> ``sqrt(d)``-scaled embeddings ``[B, T, d]`` (the scale rounded to the
    parameter dtype first, as transformers does)."""
    input_ids = jnp.asarray(input_ids)
    if not jnp.issubdtype(input_ids.dtype, jnp.integer):
      raise ValueError(f'input_ids must be integers, got dtype {input_ids.dtype}')
    table = self.embed_tokens[...]
    scale = jnp.asarray(math.sqrt(self.config.hidden_size), table.dtype)
    return (jnp.take(table, input_ids, axis=0) * scale).astype(self.dtype)

  def hidden_states(self, input_ids: jax.Array | None = None,
                    attention_mask: jax.Array | None = None, *,
                    inputs_embeds: jax.Array | None = None,
                    positions: jax.Array | None = None,
                    layer_residuals: Sequence[jax.Array] = (),
                    at_index: jax.Array | None = None) -> jax.Array:
    """Final normed hidden states ``[B, T, d]``, or ``[B, d]`` at ``at_index [B]`` (arguments as
    :meth:`decomp.models.decoder.Decoder.hidden_states`; ``positions`` ``[B, T]`` only)."""
    x, valid = embedded_inputs(self, input_ids, attention_mask, inputs_embeds)
    b, t, _ = x.shape
    positions = padding_positions(valid) if positions is None else jnp.asarray(positions)
    if positions.shape != (b, t):
      raise ValueError(f'{self.config.hf_architecture} takes positions [B, T] = {(b, t)}, got '
                       f'{positions.shape}')
    if len(layer_residuals) > len(self.layers):
      raise ValueError(f'{len(layer_residuals)} layer_residuals for {len(self.layers)} layers')
    query, key = jnp.arange(t)[:, None], jnp.arange(t)[None, :]
    causal = (key <= query)[None] & valid[:, None, :]
    window = (query - key < self.config.sliding_window)[None]
    masks = {'full_attention': causal, 'sliding_attention': causal & window}
    angles = {kind: positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq(self.config,
                                                                                     kind))
              for kind in LAYER_TYPES}
    rope = {kind: (jnp.cos(jnp.concatenate([a, a], -1)).astype(self.dtype),
                   jnp.sin(jnp.concatenate([a, a], -1)).astype(self.dtype))
            for kind, a in angles.items()}
    run = rematerialized(_run_layer, self.remat)
    for i, (layer, kind) in enumerate(zip(self.layers, self.config.layer_types)):
      x = run(layer, x, *rope[kind], masks[kind])
      if i < len(layer_residuals):
        x = x + layer_residuals[i].astype(x.dtype)
    at_index = check_at_index(at_index, b)
    if at_index is not None:  # every layer runs in full: Gemma is not on the hot path yet
      x = jnp.take_along_axis(x, at_index[:, None, None], axis=1)[:, 0]
    return self.norm(x)

  def __call__(self, input_ids: jax.Array | None, attention_mask: jax.Array | None = None,
               pixel_values=None, image_grid_thw=None, *,
               inputs_embeds: jax.Array | None = None) -> jax.Array:
    """Full-vocabulary logits ``[B, T, V]`` (soft-capped when the config says so)."""
    if pixel_values is not None or image_grid_thw is not None:
      raise ValueError(f'{self.config.hf_architecture} is a text-only model: it takes no '
                       'pixel_values / image_grid_thw')
    h = self.hidden_states(input_ids, attention_mask, inputs_embeds=inputs_embeds)
    b, t, d = h.shape
    logits = jnp.einsum('nd,vd->nv', h.reshape(b * t, d), self.lm_head_matrix().astype(self.dtype))
    cap = self.config.final_logit_softcapping
    if cap is not None:
      logits = cap * jnp.tanh(logits / cap)
    return logits.reshape(b, t, -1)

  def lm_head_rows(self, token_ids: jax.Array) -> jax.Array:
    """LM-head rows ``[K, d]`` of ``token_ids [K]``. The reranker reads ``h @ rows.T``, the
    logits before any final soft-capping (a monotone map of them)."""
    return head_rows(self.lm_head_matrix(), token_ids, self.dtype)

  def log_normalizer(self, h: jax.Array) -> jax.Array:
    """logsumexp over the vocabulary of the (un-capped, as :meth:`lm_head_rows`) logits:
    ``[..., d] -> [...]`` float32."""
    return head_log_normalizer(self.lm_head_matrix(), h, self.dtype)
