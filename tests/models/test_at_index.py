"""The one-position last layer (`Decoder.hidden_states(at_index=...)`, what `Reranker.readout`
reads) equals indexing the full hidden states: values and gradients, in float64, with left and
right padding, LoRA, remat, Qwen3's q/k norms, multimodal RoPE positions and DeepStack
residuals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from decomp.models.config import DecoderConfig
from decomp.models.decoder import Decoder
from decomp.models.lora import apply_lora
from decomp.models.reranker import Reranker, _last_valid_index

B, T, VOCAB = 4, 9, 48


@pytest.fixture(autouse=True)
def float64():
  with jax.enable_x64(True):
    yield


def _decoder(*, remat=False, mrope=False):
  """A 2-layer Qwen3-layout decoder (q/k norms, GQA) in float64 with LoRA on every projection;
  the adapters' B matrices are random so they change the output."""
  config = DecoderConfig(architecture='qwen3', vocab_size=VOCAB, hidden_size=16,
                         intermediate_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                         head_dim=8, mrope_section=(2, 1, 1) if mrope else None)
  model = Decoder(config, dtype=jnp.float64, param_dtype=jnp.float64, remat=remat,
                  rngs=nnx.Rngs(0))
  apply_lora(model, rank=2, alpha=4.0, rngs=nnx.Rngs(1))
  rng = np.random.default_rng(2)
  for _, variable in nnx.iter_graph(model):
    if isinstance(variable, nnx.LoRAParam) and variable[...].shape[0] == 2:  # the B matrices
      variable[...] = jnp.asarray(0.3 * rng.standard_normal(variable[...].shape))
  return model


def _batch():
  """Rows 0, 1 right-padded, rows 2, 3 left-padded, one of each full-ish."""
  rng = np.random.default_rng(3)
  ids = jnp.asarray(rng.integers(1, VOCAB, (B, T)), jnp.int32)
  mask = np.ones((B, T), bool)
  mask[0, 6:] = False
  mask[1, 8:] = False
  mask[2, :3] = False
  mask[3, :1] = False
  return ids, jnp.asarray(mask)


def _max_relative_difference(a, b):
  """max over leaves of max|a - b| / max|b|."""
  return max(float(jnp.max(jnp.abs(x - y)) / jnp.maximum(jnp.max(jnp.abs(y)), 1e-30))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize('remat', [False, True])
def test_reranker_readout_and_its_gradient_equal_the_full_last_layer(remat):
  model = Reranker(_decoder(remat=remat), (5, 7), rngs=nnx.Rngs(4))
  ids, mask = _batch()
  graphdef, params = nnx.split(model, nnx.Param)

  # The label logits come out in float32; the hidden state [B, d] keeps float64.
  weights = jnp.asarray(np.random.default_rng(6).standard_normal((B, 16)))

  def shortcut(params):
    out = nnx.merge(graphdef, params).readout(ids, mask)
    return jnp.sum(out.hidden * weights), out

  def full(params):  # the old path: every position through every layer, then index
    m = nnx.merge(graphdef, params)
    h = m.decoder.hidden_states(ids, mask)
    h_last = jnp.take_along_axis(h, _last_valid_index(mask)[:, None, None], axis=1)[:, 0]
    out = m.readout_from_hidden(h_last)
    return jnp.sum(out.hidden * weights), out

  (value, out), grads = jax.jit(jax.value_and_grad(shortcut, has_aux=True))(params)
  (value_full, out_full), grads_full = jax.jit(jax.value_and_grad(full, has_aux=True))(params)
  assert out.hidden.dtype == jnp.float64 and float(jnp.std(out.yes)) > 1e-3  # rows differ
  np.testing.assert_allclose(out.hidden, out_full.hidden, rtol=0, atol=1e-12)
  np.testing.assert_allclose(out.yes, out_full.yes, rtol=0, atol=1e-6)
  np.testing.assert_allclose(out.no, out_full.no, rtol=0, atol=1e-6)
  np.testing.assert_allclose(value, value_full, rtol=0, atol=1e-12)
  lora_grads = [g for path, g in nnx.to_flat_state(grads) if 'lora_a' in str(path)]
  assert lora_grads and all(float(jnp.max(jnp.abs(g))) > 0 for g in lora_grads)
  # Not 1e-12: attention scores are float32 even in a float64 model (`preferred_element_type`),
  # and the key gradient sums them over one query row instead of T (measured ~4e-8).
  assert _max_relative_difference(grads, grads_full) < 1e-6


def test_decoder_at_index_with_mrope_positions_and_layer_residuals():
  model = _decoder(mrope=True)
  ids, mask = _batch()
  rng = np.random.default_rng(5)
  positions = jnp.asarray(rng.integers(0, 20, (3, B, T)), jnp.int32)
  residuals = [jnp.asarray(rng.standard_normal((B, T, 16))) for _ in range(2)]
  index = jnp.asarray([3, 8, 5, 0], jnp.int32)  # any index, not only the last valid one
  embeds = model.embed(ids)
  full = model.hidden_states(None, mask, inputs_embeds=embeds, positions=positions,
                             layer_residuals=residuals)
  one = model.hidden_states(None, mask, inputs_embeds=embeds, positions=positions,
                            layer_residuals=residuals, at_index=index)
  assert one.shape == (B, 16)
  np.testing.assert_allclose(one, full[jnp.arange(B), index], rtol=0, atol=1e-12)
  with pytest.raises(ValueError, match='at_index'):
    model.hidden_states(ids, mask, at_index=index[:2])
