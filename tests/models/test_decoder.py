"""Decoder parity with transformers' PyTorch Qwen2/Llama, padding invariance, dtypes, remat."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from decomp.models.config import DecoderConfig
from decomp.models.decoder import Decoder
from decomp.models.hf import load_pretrained

CHECKPOINTS = ['qwen2_checkpoint', 'llama3_checkpoint', 'llama_linear_checkpoint']


@nnx.jit
def _forward(model, ids, mask):
  h = model.hidden_states(ids, mask)
  return model(ids, mask), h


@nnx.jit
def _logits(model, ids, mask):
  return model(ids, mask)


def _valid(array, mask_row):
  return array[np.asarray(mask_row, bool)]


@pytest.mark.parametrize('fixture', CHECKPOINTS)
def test_logits_and_hidden_match_torch_on_padded_batches(fixture, request, padded_batches,
                                                         torch_reference_fn):
  checkpoint = request.getfixturevalue(fixture)
  model = load_pretrained(checkpoint.path)
  sequences, left, right = padded_batches
  references = [torch_reference_fn(checkpoint.torch_model, s) for s in sequences]
  # The reference is not trivially small, so a 1e-4 tolerance is a real test.
  assert min(np.std(logits) for logits, _ in references) > 0.05
  worst = 0.0
  for ids, mask in (left, right):
    logits, hidden = map(np.asarray, _forward(model, jnp.asarray(ids), jnp.asarray(mask)))
    assert np.isfinite(logits).all() and np.isfinite(hidden).all()  # padded rows included
    for i, (ref_logits, ref_hidden) in enumerate(references):
      got_logits, got_hidden = _valid(logits[i], mask[i]), _valid(hidden[i], mask[i])
      np.testing.assert_allclose(got_logits, ref_logits, atol=1e-4, rtol=0)
      np.testing.assert_allclose(got_hidden, ref_hidden, atol=1e-4, rtol=0)
      worst = max(worst, float(np.abs(got_logits - ref_logits).max()))
  assert worst < 1e-4


def test_label_rows_and_log_normalizer_agree_with_full_logits(qwen2_checkpoint, llama3_checkpoint,
                                                               padded_batches):
  _, (ids, mask), _ = padded_batches
  labels = jnp.asarray([5, 17, 99])
  for checkpoint in (qwen2_checkpoint, llama3_checkpoint):  # untied and tied heads
    model = load_pretrained(checkpoint.path)
    logits, h = _forward(model, jnp.asarray(ids), jnp.asarray(mask))
    rows = model.lm_head_rows(labels)
    assert rows.shape == (3, model.config.hidden_size)
    np.testing.assert_allclose(h @ rows.T, logits[..., labels], atol=1e-5)
    lognorm = model.log_normalizer(h)
    assert lognorm.dtype == jnp.float32 and lognorm.shape == ids.shape
    np.testing.assert_allclose(lognorm, jax.nn.logsumexp(logits, axis=-1), atol=1e-5)
    torch_head = checkpoint.torch_model.lm_head.weight.detach().numpy()
    np.testing.assert_allclose(rows, torch_head[np.asarray(labels)], atol=0)


def test_inputs_embeds_replace_lookup(qwen2_checkpoint, padded_batches):
  model = load_pretrained(qwen2_checkpoint.path)
  _, _, (ids, mask) = padded_batches
  ids, mask = jnp.asarray(ids), jnp.asarray(mask)
  embeds = model.embed(ids)
  np.testing.assert_allclose(model.hidden_states(None, mask, inputs_embeds=embeds),
                             model.hidden_states(ids, mask), atol=1e-6)
  # A changed embedding changes later positions, so the embeddings really are used.
  changed = embeds.at[:, 0].add(1.0)
  out = model.hidden_states(ids, mask, inputs_embeds=changed)
  assert np.abs(np.asarray(out - model.hidden_states(ids, mask)))[:, 1:].max() > 1e-3


def _tiny_config(**kw):
  base = dict(architecture='llama', vocab_size=64, hidden_size=32, intermediate_size=64,
              num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, rope_theta=10000.0)
  base.update(kw)
  return DecoderConfig(**base)


def test_no_nan_when_a_row_is_fully_padded():
  model = Decoder(_tiny_config(), rngs=nnx.Rngs(0))
  ids = jnp.array([[3, 4, 5, 6], [0, 0, 0, 0]])
  mask = jnp.array([[1, 1, 1, 1], [0, 0, 0, 0]])
  loss = lambda m: m(ids, mask)[0].sum()
  assert np.isfinite(np.asarray(_logits(model, ids, mask))).all()
  grads = nnx.jit(nnx.grad(loss))(model)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_padding_does_not_leak_into_valid_positions():
  model = Decoder(_tiny_config(), rngs=nnx.Rngs(1))
  ids = jnp.array([[0, 0, 7, 8, 9]])
  mask = jnp.array([[0, 0, 1, 1, 1]])
  other_pads = ids.at[0, :2].set(jnp.array([40, 41]))
  logits = _logits(model, ids, mask)
  np.testing.assert_allclose(logits[0, 2:], _logits(model, other_pads, mask)[0, 2:], atol=1e-6)
  unpadded = _logits(model, ids[:, 2:], jnp.ones((1, 3), jnp.int32))
  np.testing.assert_allclose(logits[0, 2:], unpadded[0], atol=1e-5)
  assert np.abs(np.asarray(logits[0, 2:])).max() > 0.01


def test_bfloat16_compute_is_close_to_float32(llama3_checkpoint, padded_batches):
  _, (ids, mask), _ = padded_batches
  f32 = load_pretrained(llama3_checkpoint.path)
  bf16 = load_pretrained(llama3_checkpoint.path, dtype=jnp.bfloat16)
  assert bf16.embed_tokens[...].dtype == jnp.float32  # params stay float32
  logits32, _ = _forward(f32, jnp.asarray(ids), jnp.asarray(mask))
  logits16, h16 = _forward(bf16, jnp.asarray(ids), jnp.asarray(mask))
  assert logits16.dtype == jnp.bfloat16 and h16.dtype == jnp.bfloat16
  valid = np.asarray(mask, bool)
  err = np.abs(np.asarray(logits16, np.float32) - np.asarray(logits32))[valid]
  scale = np.abs(np.asarray(logits32))[valid].max()
  assert err.max() < 0.05 * scale
  assert err.max() > 0  # it really computed in bf16


def test_remat_gives_same_outputs_and_gradients():
  config = _tiny_config(architecture='qwen2', attention_bias=True)
  plain = Decoder(config, rngs=nnx.Rngs(2))
  remat = Decoder(config, remat=True, rngs=nnx.Rngs(2))
  ids = jnp.array([[1, 2, 3, 4, 5], [0, 6, 7, 8, 9]])
  mask = jnp.array([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])
  loss = lambda m: jnp.sum(m(ids, mask) ** 2)
  g_plain = nnx.jit(nnx.grad(loss))(plain)
  g_remat = nnx.jit(nnx.grad(loss))(remat)
  for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  assert any(np.abs(np.asarray(a)).max() > 0 for a in jax.tree.leaves(g_plain))


def test_bad_inputs_raise_clear_errors():
  model = Decoder(_tiny_config(), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='attention_mask shape'):
    model(jnp.ones((2, 4), jnp.int32), jnp.ones((2, 5)))
  with pytest.raises(ValueError, match=r'input_ids must be \[B, T\]'):
    model(jnp.ones((4,), jnp.int32))
  with pytest.raises(ValueError, match='inputs_embeds must be'):
    model.hidden_states(inputs_embeds=jnp.ones((1, 4, 7)))
  with pytest.raises(ValueError, match='needs input_ids or inputs_embeds'):
    model.hidden_states()
  with pytest.raises(ValueError, match='1-D int'):
    model.lm_head_rows(jnp.array([[1, 2]]))


def test_parameters_carry_logical_names():
  model = Decoder(_tiny_config(tie_word_embeddings=False), rngs=nnx.Rngs(0))
  names = {'.'.join(map(str, path)): v.get_metadata()['out_sharding']
           for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  assert names['embed_tokens'] == ('vocab', 'embed')
  assert names['lm_head'] == ('vocab', 'embed')
  assert names['layers.0.self_attn.q_proj.kernel'] == ('embed', 'heads')
  assert names['layers.1.self_attn.k_proj.kernel'] == ('embed', 'kv_heads')
  assert names['layers.0.self_attn.o_proj.kernel'] == ('heads', 'embed')
  assert names['layers.0.mlp.up_proj.kernel'] == ('embed', 'mlp')
  assert names['layers.0.mlp.down_proj.kernel'] == ('mlp', 'embed')
  assert names['norm.scale'] == ('norm',)
  assert len(names) == 2 + 1 + 2 * 9
