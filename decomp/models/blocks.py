"""Pieces every decoder family builds from (decomp's Llama-style decoder, Gemma 3, ...): logically
named parameters, the token embedding / LM-head matrices, input checks and the LM-head readout.
Using them keeps a new family's parameter names, metadata and errors the same as the others'."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from decomp.models.sharding import METADATA_KEY

__all__ = ['check_at_index', 'embedded_inputs', 'head_log_normalizer', 'head_rows',
           'token_matrix']

_INIT = nnx.initializers.normal(0.02)


def _param(rngs: nnx.Rngs | None, shape: Sequence[int], names: Sequence[str | None], param_dtype,
           init=_INIT, **metadata) -> nnx.Param:
  """An nnx.Param with logical sharding names; never sharded eagerly (names are logical)."""
  value = init(rngs.params(), tuple(shape), param_dtype)
  return nnx.Param(value, eager_sharding=False, **{METADATA_KEY: tuple(names)}, **metadata)


def token_matrix(config, rngs: nnx.Rngs, param_dtype, *, head: bool) -> nnx.Param | None:
  """A [V, d] token matrix: the embedding (``head=False``) or the untied LM head (``head=True``;
  None when ``config.tie_word_embeddings``). Variable metadata ``lm_head=True`` marks the matrix
  the LM head reads (the embedding when tied): the LoRA trainable filter and ``finetune=head``
  find it by it."""
  tied = config.tie_word_embeddings
  if head and tied:
    return None
  return _param(rngs, (config.vocab_size, config.hidden_size), ('vocab', 'embed'), param_dtype,
                lm_head=head or tied)


def embedded_inputs(model, input_ids, attention_mask,
                    inputs_embeds) -> tuple[jax.Array, jax.Array]:
  """A backbone's checked inputs: embeddings [B, T, d] in the compute dtype (``inputs_embeds``,
  else ``model.embed(input_ids)``) and the valid-token mask [B, T] bool (None: all valid)."""
  d = model.config.hidden_size
  if inputs_embeds is not None:
    x = jnp.asarray(inputs_embeds)
    if x.ndim != 3 or x.shape[-1] != d:
      raise ValueError(f'inputs_embeds must be [B, T, {d}], got {x.shape}')
    x = x.astype(model.dtype)
  elif input_ids is not None:
    if jnp.ndim(input_ids) != 2:
      raise ValueError(f'input_ids must be [B, T], got shape {jnp.shape(input_ids)}')
    x = model.embed(input_ids)
  else:
    raise ValueError('hidden_states needs input_ids or inputs_embeds')
  b, t, _ = x.shape
  if attention_mask is None:
    return x, jnp.ones((b, t), bool)
  if jnp.shape(attention_mask) != (b, t):
    raise ValueError(f'attention_mask shape {jnp.shape(attention_mask)} does not match the '
                     f'inputs [B, T] = {(b, t)}')
  return x, jnp.asarray(attention_mask).astype(bool)


def check_at_index(at_index, batch: int) -> jax.Array | None:
  """``at_index`` as a [B] int array (None stays None), or a ValueError naming its shape."""
  if at_index is None:
    return None
  at_index = jnp.asarray(at_index)
  if at_index.shape != (batch,) or not jnp.issubdtype(at_index.dtype, jnp.integer):
    raise ValueError(f'at_index must be [B] = [{batch}] integers, got shape {at_index.shape} '
                     f'dtype {at_index.dtype}')
  return at_index


def head_rows(matrix: jax.Array, token_ids: jax.Array, dtype) -> jax.Array:
  """Rows [K, d] of a [V, d] LM-head matrix for token_ids [K], in ``dtype``."""
  token_ids = jnp.asarray(token_ids)
  if token_ids.ndim != 1 or not jnp.issubdtype(token_ids.dtype, jnp.integer):
    raise ValueError(f'token_ids must be a 1-D int array, got shape {token_ids.shape} '
                     f'dtype {token_ids.dtype}')
  return jnp.take(matrix, token_ids, axis=0).astype(dtype)


def head_log_normalizer(matrix: jax.Array, h: jax.Array, dtype) -> jax.Array:
  """logsumexp over the vocabulary of h @ matrix.T: h [..., d] -> [...] float32."""
  logits = jnp.einsum('...d,vd->...v', h.astype(dtype), matrix.astype(dtype),
                      preferred_element_type=jnp.float32)
  return jax.nn.logsumexp(logits, axis=-1)
