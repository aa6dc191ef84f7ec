"""A compact Flax NNX decoder-only LM for the Qwen2/Qwen2.5, Qwen3 and Llama/Llama-3.x families.

Matches transformers' PyTorch `Qwen2ForCausalLM` / `Qwen3ForCausalLM` / `LlamaForCausalLM`
(RMSNorm, RoPE with default/linear/llama3 scaling, grouped-query attention, SwiGLU MLP, q/k/v
biases, Qwen3's per-head q/k RMSNorm, tied or untied LM head) and the text model of
Qwen2-VL / Qwen2.5-VL / Qwen3-VL (multimodal RoPE: `positions` [3, B, T] with
`config.mrope_section`; DeepStack `layer_residuals`). Parameter layout: linear kernels are
[in, out] (HF stores [out, in]); the token
embedding and the untied LM head are both [V, d] as in HF. Every parameter carries logical
sharding names (see decomp.models.sharding) in its Variable metadata.

Padding: positions are `cumsum(attention_mask) - 1` unless given, and attention is causal over
the valid keys, so a left- or right-padded sequence gives, at its valid positions, the same
outputs as the same sequence unpadded. Outputs at padded positions are finite but meaningless.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from decomp.models.blocks import (_param, check_at_index, embedded_inputs, head_log_normalizer,
                                  head_rows, token_matrix)
from decomp.models.config import DecoderConfig, mrope_streams, rope_inv_freq
from decomp.models.remat import remat_name, rematerialized

__all__ = ['Decoder', 'DecoderLayer', 'Attention', 'MLP', 'Linear', 'RMSNorm', 'rope_cos_sin',
           'rotate_half', 'padding_positions']

# A large finite negative instead of -inf: a fully padded query row (e.g. a left pad, which has no
# valid key at or before it) then softmaxes to a uniform row instead of NaN.
_MASKED = -1e30


class Linear(nnx.Module):
  """y = x @ kernel (+ bias); kernel [in, out] with logical names (in_name, out_name)."""

  def __init__(self, in_features: int, out_features: int, *, names: tuple[str | None, str | None],
               use_bias: bool, dtype, param_dtype, rngs: nnx.Rngs):
    self.in_features = in_features
    self.out_features = out_features
    self.names = tuple(names)
    self.dtype = dtype
    self.kernel = _param(rngs, (in_features, out_features), names, param_dtype)
    self.bias = (_param(rngs, (out_features,), names[1:], param_dtype, nnx.initializers.zeros)
                 if use_bias else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x [..., in] -> [..., out] in the compute dtype."""
    # A 2-D [tokens, in] matmul: with 3-D activations XLA CPU builds the kernel gradient from a
    # transposed copy of the output gradient fused into a slow strided loop (3x slower backward).
    lead = x.shape[:-1]
    y = jnp.dot(x.reshape(-1, x.shape[-1]).astype(self.dtype), self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y.reshape(lead + (y.shape[-1],))


class RMSNorm(nnx.Module):
  """HF's RMSNorm: normalise in float32, cast back, then scale."""

  def __init__(self, size: int, *, eps: float, dtype, param_dtype, rngs: nnx.Rngs):
    self.eps = eps
    self.dtype = dtype
    self.scale = _param(rngs, (size,), ('norm',), param_dtype, nnx.initializers.ones)

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return self.scale[...].astype(self.dtype) * x32.astype(self.dtype)


def rotate_half(x: jax.Array) -> jax.Array:
  """[x1, x2] -> [-x2, x1] over the last axis (HF's rotate_half)."""
  half = x.shape[-1] // 2
  return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def padding_positions(valid: jax.Array) -> jax.Array:
  """Positions [B, T] = cumsum(valid) - 1, clipped at 0 (left pads get 0)."""
  return jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=-1) - 1, 0)


def rope_cos_sin(config: DecoderConfig, positions: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
  """cos, sin [B, T, head_dim] for integer positions (computed in float32, then cast).

  positions: [B, T], or [3, B, T] (temporal, height, width) for multimodal RoPE, where
  frequency j takes its angle from stream `mrope_streams(config)[j]` (HF's Qwen2-VL / Qwen3-VL
  rotary embeddings).
  """
  inv_freq = jnp.asarray(rope_inv_freq(config))
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq
  if positions.ndim == 3:
    if config.mrope_section is None:
      raise ValueError('positions [3, B, T] need a config with mrope_section')
    stream = mrope_streams(config)
    freqs = jnp.where(stream == 0, freqs[0], jnp.where(stream == 1, freqs[1], freqs[2]))
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


class Attention(nnx.Module):
  """Grouped-query self-attention with RoPE; plain masked softmax in float32."""

  def __init__(self, config: DecoderConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    c = config
    self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
    self.dtype = dtype
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q_proj = Linear(c.hidden_size, c.num_heads * c.head_dim, names=('embed', 'heads'),
                         use_bias=c.attention_bias, **kw)
    self.k_proj = Linear(c.hidden_size, c.num_kv_heads * c.head_dim, names=('embed', 'kv_heads'),
                         use_bias=c.attention_bias, **kw)
    self.v_proj = Linear(c.hidden_size, c.num_kv_heads * c.head_dim, names=('embed', 'kv_heads'),
                         use_bias=c.attention_bias, **kw)
    self.o_proj = Linear(c.num_heads * c.head_dim, c.hidden_size, names=('heads', 'embed'),
                         use_bias=c.attention_out_bias, **kw)
    # Qwen3: RMSNorm over each head's head_dim features, after the projection, before RoPE.
    self.q_norm = RMSNorm(c.head_dim, eps=c.rms_norm_eps, **kw) if c.qk_norm else None
    self.k_norm = RMSNorm(c.head_dim, eps=c.rms_norm_eps, **kw) if c.qk_norm else None

  def queries(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [B, T, d] -> RoPE'd queries [B, kv, groups, T, hd]."""
    b, t, _ = x.shape
    # Head-major layouts ([B, kv, groups, T, hd]) before RoPE: the transposes then happen once,
    # on the projections, instead of inside XLA CPU's fused (slow) transposing copies around
    # the attention einsums (measured ~4% of a training step). Query head h reads kv head
    # h // groups (HF's repeat_kv order).
    q = self.q_proj(x).reshape(b, t, self.num_kv_heads, self.num_heads // self.num_kv_heads,
                               self.head_dim)
    if self.q_norm is not None:
      q = self.q_norm(q)
    q = q.transpose(0, 2, 3, 1, 4)
    return q * cos[:, None, None] + rotate_half(q) * sin[:, None, None]

  def keys_values(self, x: jax.Array, cos: jax.Array,
                  sin: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x [B, T, d] -> RoPE'd keys and values, each [B, kv, T, hd]."""
    b, t, _ = x.shape
    kv, hd = self.num_kv_heads, self.head_dim
    k = self.k_proj(x).reshape(b, t, kv, hd)
    if self.k_norm is not None:
      k = self.k_norm(k)
    k = k.transpose(0, 2, 1, 3)
    v = self.v_proj(x).reshape(b, t, kv, hd).transpose(0, 2, 1, 3)
    return k * cos[:, None] + rotate_half(k) * sin[:, None], v

  def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """q [B, kv, groups, Tq, hd], k/v [B, kv, T, hd], mask [B, Tq, T] bool -> [B, Tq, d]."""
    b, tq = q.shape[0], q.shape[3]
    scores = jnp.einsum('bkgth,bksh->bkgts', q, k, preferred_element_type=jnp.float32)
    scores = scores * (self.head_dim ** -0.5)
    scores = jnp.where(mask[:, None, None, :, :], scores, _MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
    out = jnp.einsum('bkgts,bksh->bkgth', probs, v).transpose(0, 3, 1, 2, 4)
    return self.o_proj(out.reshape(b, tq, self.num_heads * self.head_dim))

  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array) -> jax.Array:
    """x [B, T, d]; cos/sin [B, T, hd]; mask [B, T(query), T(key)] bool -> [B, T, d]."""
    return self.attend(self.queries(x, cos, sin), *self.keys_values(x, cos, sin), mask)


class MLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  def __init__(self, config: DecoderConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(use_bias=config.mlp_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    d, i = config.hidden_size, config.intermediate_size
    self.gate_proj = Linear(d, i, names=('embed', 'mlp'), **kw)
    self.up_proj = Linear(d, i, names=('embed', 'mlp'), **kw)
    self.down_proj = Linear(i, d, names=('mlp', 'embed'), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
  """Pre-norm block: x + attn(norm(x)), then + mlp(norm(.))."""

  def __init__(self, config: DecoderConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, **kw)
    self.self_attn = Attention(config, **kw)
    self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, **kw)
    self.mlp = MLP(config, **kw)

  def __call__(self, x, cos, sin, mask):
    x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
    return x + self.mlp(self.post_attention_layernorm(x))

  def at_index(self, x, index, cos, sin, mask):
    """The layer's output at one index per row: x [B, T, d], index [B] int -> [B, 1, d].

    Keys and values come from every position; the query, attention output, residual and MLP
    only from ``index``, which is all a causal layer's output there depends on.
    """
    rows = lambda a: jnp.take_along_axis(a, index[:, None, None], axis=1)  # [B, 1, ...]
    normed = self.input_layernorm(x)
    k, v = self.self_attn.keys_values(normed, cos, sin)
    q = self.self_attn.queries(rows(normed), rows(cos), rows(sin))
    x = rows(x) + self.self_attn.attend(q, k, v, rows(mask))
    return x + self.mlp(self.post_attention_layernorm(x))


def _run_layer(layer: DecoderLayer, x, cos, sin, mask):
  return layer(x, cos, sin, mask)


def _run_layer_at_index(layer: DecoderLayer, x, index, cos, sin, mask):
  return layer.at_index(x, index, cos, sin, mask)



class Decoder(nnx.Module):
  """Decoder-only LM. Params: embed_tokens [V, d], layers[i].*, norm, lm_head [V, d] or None (tied).

  Args:
    config: the model shape.
    dtype: compute dtype of activations (float32 or bfloat16); softmax, RMSNorm statistics,
      RoPE tables and `log_normalizer` stay float32.
    param_dtype: storage dtype of the parameters.
    remat: what each layer keeps for the backward pass: 'none', 'block' or 'dots'
      (:mod:`decomp.models.remat`; True / False mean 'block' / 'none').
    rngs: initialisation randomness (normal(0.02), like HF).

  The LM-head parameter (the embedding when tied) carries Variable metadata `lm_head=True`; the
  LoRA trainable filter uses it.
  """

  def __init__(self, config: DecoderConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
               remat: str | bool = 'none', rngs: nnx.Rngs):
    if not isinstance(config, DecoderConfig):
      raise TypeError(f'config must be a DecoderConfig, got {type(config).__name__}')
    self.config = config
    self.dtype = dtype
    self.remat = remat_name(remat)
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    # Drawn in this order (embedding, layers, norm, head): a seed's random init stays the same.
    self.embed_tokens = token_matrix(config, rngs, param_dtype, head=False)
    self.layers = nnx.List([DecoderLayer(config, **kw) for _ in range(config.num_layers)])
    self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, **kw)
    self.lm_head = token_matrix(config, rngs, param_dtype, head=True)

  def lm_head_matrix(self) -> jax.Array:
    """[V, d] LM-head weights (the embedding when tied)."""
    return (self.embed_tokens if self.lm_head is None else self.lm_head)[...]

  def embed(self, input_ids: jax.Array) -> jax.Array:
    """Token embeddings: input_ids [B, T] int -> [B, T, d] in the compute dtype."""
    input_ids = jnp.asarray(input_ids)
    if not jnp.issubdtype(input_ids.dtype, jnp.integer):
      raise ValueError(f'input_ids must be integers, got dtype {input_ids.dtype}')
    return jnp.take(self.embed_tokens[...], input_ids, axis=0).astype(self.dtype)

  def hidden_states(self, input_ids: jax.Array | None = None,
                    attention_mask: jax.Array | None = None, *,
                    inputs_embeds: jax.Array | None = None,
                    positions: jax.Array | None = None,
                    layer_residuals: Sequence[jax.Array] = (),
                    at_index: jax.Array | None = None) -> jax.Array:
    """Final RMS-normed hidden states [B, T, d] (compute dtype), or [B, d] at `at_index`.

    Args:
      input_ids: [B, T] int token ids (ignored when inputs_embeds is given).
      attention_mask: [B, T], 1/True for real tokens, 0/False for padding (left or right);
        None means no padding.
      inputs_embeds: [B, T, d] embeddings that replace the lookup (e.g. image features spliced
        into token embeddings).
      positions: RoPE positions, [B, T] int, or [3, B, T] for multimodal RoPE (needs
        `config.mrope_section`); None -> cumsum(attention_mask) - 1.
      layer_residuals: arrays [B, T, d] added to the hidden states after layers 0, 1, ...
        (Qwen3-VL's DeepStack visual features, zero outside image tokens).
      at_index: [B] int, one index per row (e.g. the last valid token, where a reranker reads
        its answer): return only the hidden state there, [B, d]. Every layer but the last runs
        in full; the last computes keys and values at every position but its query, attention
        output, MLP and the final norm only at `at_index` (on a 2-layer model about 45% of the
        body's work, on a deep one about 1/num_layers of it). Equal to indexing the full output.
    """
    x, valid = embedded_inputs(self, input_ids, attention_mask, inputs_embeds)
    b, t, _ = x.shape
    if positions is None:
      positions = padding_positions(valid)
    else:
      positions = jnp.asarray(positions)
      if positions.shape[-2:] != (b, t) or positions.ndim not in (2, 3):
        raise ValueError(f'positions must be [B, T] or [3, B, T] with [B, T] = {(b, t)}, got '
                         f'{positions.shape}')
    cos, sin = rope_cos_sin(self.config, positions, self.dtype)
    causal = jnp.tril(jnp.ones((t, t), bool))
    mask = causal[None] & valid[:, None, :]
    run = rematerialized(_run_layer, self.remat)
    if len(layer_residuals) > len(self.layers):
      raise ValueError(f'{len(layer_residuals)} layer_residuals for {len(self.layers)} layers')
    at_index = check_at_index(at_index, b)
    last = len(self.layers) - 1
    for i, layer in enumerate(self.layers):
      if at_index is not None and i == last:
        run_at = rematerialized(_run_layer_at_index, self.remat)
        x = run_at(layer, x, at_index, cos, sin, mask)
        if i < len(layer_residuals):
          residual = jnp.take_along_axis(layer_residuals[i], at_index[:, None, None], axis=1)
          x = x + residual.astype(x.dtype)
        return self.norm(x[:, 0])
      x = run(layer, x, cos, sin, mask)
      if i < len(layer_residuals):
        x = x + layer_residuals[i].astype(x.dtype)
    if at_index is not None:  # no layers
      x = jnp.take_along_axis(x, at_index[:, None, None], axis=1)[:, 0]
    return self.norm(x)

  def __call__(self, input_ids: jax.Array | None, attention_mask: jax.Array | None = None,
               pixel_values=None, image_grid_thw=None, *,
               inputs_embeds: jax.Array | None = None,
               positions: jax.Array | None = None) -> jax.Array:
    """Full-vocabulary logits [B, T, V] in the compute dtype.

    pixel_values / image_grid_thw exist so every model `decomp.models.load_pretrained` returns
    takes the same call; a text-only decoder refuses images.
    """
    if pixel_values is not None or image_grid_thw is not None:
      raise ValueError(f'{self.config.hf_architecture} is a text-only model: it takes no '
                       'pixel_values / image_grid_thw')
    h = self.hidden_states(input_ids, attention_mask, inputs_embeds=inputs_embeds,
                           positions=positions)
    b, t, d = h.shape  # one 2-D matmul, as in Linear
    logits = jnp.einsum('nd,vd->nv', h.reshape(b * t, d), self.lm_head_matrix().astype(self.dtype))
    return logits.reshape(b, t, -1)

  def lm_head_rows(self, token_ids: jax.Array) -> jax.Array:
    """LM-head rows [K, d] (compute dtype) of token_ids [K]: those tokens' logits are h @ rows.T."""
    return head_rows(self.lm_head_matrix(), token_ids, self.dtype)

  def log_normalizer(self, h: jax.Array) -> jax.Array:
    """logsumexp over the full vocabulary of h @ W_head.T: h [..., d] -> [...] float32."""
    return head_log_normalizer(self.lm_head_matrix(), h, self.dtype)
