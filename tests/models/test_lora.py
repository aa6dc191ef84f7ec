"""LoRA: unchanged output at init, exact low-rank math, what trains, merge and save."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from decomp.models.config import DecoderConfig
from decomp.models.decoder import Decoder
from decomp.models.hf import load_pretrained, save_pretrained
from decomp.models.lora import (LoRALinear, LoRAParam, apply_lora, has_lora, merge_lora,
                                trainable_filter)

IDS = jnp.array([[1, 5, 9, 13, 17, 21], [0, 0, 4, 8, 12, 16]])
MASK = jnp.array([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])


def _model(tied=False, seed=0):
  config = DecoderConfig(architecture='qwen2', vocab_size=64, hidden_size=32, intermediate_size=64,
                         num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8,
                         attention_bias=True, tie_word_embeddings=tied)
  return Decoder(config, rngs=nnx.Rngs(seed))


def _loss(model):
  logits = model(IDS, MASK)[:, :-1]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, IDS[:, 1:])
  return jnp.sum(ce * MASK[:, 1:]) / jnp.sum(MASK[:, 1:])


@nnx.jit
def _logits(model):
  return model(IDS, MASK)


@nnx.jit
def _sgd_step(model, optimizer):
  loss, grads = nnx.value_and_grad(_loss, argnums=nnx.DiffState(0, optimizer.wrt))(model)
  optimizer.update(model, grads)
  return loss


def _params(model):
  """{'path': array} of every Param, LoRA included."""
  return {'.'.join(map(str, p)): np.asarray(v.get_value())
          for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _changed_after_steps(model, filter_, steps=2):
  before = _params(model)
  optimizer = nnx.Optimizer(model, optax.sgd(0.5), wrt=filter_)
  for _ in range(steps):
    _sgd_step(model, optimizer)
  after = _params(model)
  return {k for k in before if not np.array_equal(before[k], after[k])}, set(before)


def test_apply_lora_keeps_output_and_computes_the_low_rank_update():
  model = _model()
  before = _logits(model)
  apply_lora(model, rank=4, alpha=8.0, rngs=nnx.Rngs(1))
  assert has_lora(model)
  np.testing.assert_array_equal(_logits(model), before)  # B = 0
  q = model.layers[0].self_attn.q_proj
  assert isinstance(q, LoRALinear) and q.lora_a.shape == (32, 4) and q.lora_b.shape == (4, 32)
  assert isinstance(q.lora_a, LoRAParam)
  assert q.lora_a.get_metadata()['out_sharding'] == ('embed', 'lora_rank')
  assert q.lora_b.get_metadata()['out_sharding'] == ('lora_rank', 'heads')
  q.lora_b[...] = jax.random.normal(jax.random.key(0), (4, 32))
  x = np.asarray(jax.random.normal(jax.random.key(1), (3, 32)))
  expected = (x @ np.asarray(q.base.kernel[...]) + np.asarray(q.base.bias[...])
              + 2.0 * x @ np.asarray(q.lora_a[...]) @ np.asarray(q.lora_b[...]))
  np.testing.assert_allclose(q(jnp.asarray(x)), expected, atol=1e-5)


def test_lora_only_trains_adapters():
  model = apply_lora(_model(), rank=4, rngs=nnx.Rngs(1))
  changed, all_params = _changed_after_steps(model, trainable_filter(lora=True,
                                                                      train_lm_head=False))
  lora = {k for k in all_params if k.endswith(('lora_a', 'lora_b'))}
  assert len(lora) == 2 * 7
  assert changed == lora


@pytest.mark.parametrize('tied', [False, True])
def test_lora_with_trainable_lm_head(tied):
  model = apply_lora(_model(tied=tied), rank=4, targets=('q_proj', 'v_proj'), rngs=nnx.Rngs(1))
  changed, all_params = _changed_after_steps(model, trainable_filter(lora=True, train_lm_head=True))
  head = 'embed_tokens' if tied else 'lm_head'
  lora = {k for k in all_params if k.endswith(('lora_a', 'lora_b'))}
  assert len(lora) == 2 * 2  # only q and v were wrapped
  assert changed == lora | {head}


def test_full_finetune_with_frozen_lm_head():
  model = _model(tied=False)
  changed, all_params = _changed_after_steps(model, trainable_filter(lora=False,
                                                                      train_lm_head=False))
  assert changed == all_params - {'lm_head'}
  changed, all_params = _changed_after_steps(_model(), trainable_filter(lora=False,
                                                                        train_lm_head=True))
  assert changed == all_params


def test_grad_with_diffstate_has_only_selected_params():
  model = apply_lora(_model(tied=True), rank=2, rngs=nnx.Rngs(1))
  grads = nnx.jit(nnx.grad(_loss, argnums=nnx.DiffState(
      0, trainable_filter(lora=True, train_lm_head=True))))(model)
  paths = {'.'.join(map(str, p)) for p, _ in nnx.to_flat_state(grads)}
  assert 'embed_tokens' in paths
  assert all(p == 'embed_tokens' or p.endswith(('lora_a', 'lora_b')) for p in paths)


def test_merge_lora_and_save_give_the_adapted_model(qwen2_checkpoint, tmp_path):
  from transformers import AutoModelForCausalLM
  import torch
  model = apply_lora(load_pretrained(qwen2_checkpoint.path), rank=4, rngs=nnx.Rngs(3))
  optimizer = nnx.Optimizer(model, optax.sgd(0.5), wrt=LoRAParam)
  ids = IDS % 128
  loss = lambda m: jnp.mean(m(ids, MASK) ** 2)

  @nnx.jit
  def step(model, optimizer):
    optimizer.update(model, nnx.grad(loss, argnums=nnx.DiffState(0, LoRAParam))(model))

  for _ in range(2):
    step(model, optimizer)
  logits = nnx.jit(lambda m: m(ids, MASK))
  adapted = np.asarray(logits(model))
  base = np.asarray(logits(load_pretrained(qwen2_checkpoint.path)))
  assert np.abs(adapted - base).max() > 1e-3  # the adapters do something
  saved = str(tmp_path / 'merged')
  save_pretrained(model, saved)  # folds adapters without touching the model
  assert has_lora(model)
  with torch.no_grad():
    theirs = AutoModelForCausalLM.from_pretrained(saved).eval()(
        input_ids=torch.tensor(np.asarray(ids[:1])).long()).logits.numpy()
  np.testing.assert_allclose(theirs[0], adapted[0], atol=1e-4)
  merge_lora(model)
  assert not has_lora(model) and not nnx.state(model, LoRAParam)
  np.testing.assert_allclose(np.asarray(logits(model)), adapted, atol=1e-5)


def test_bad_lora_arguments():
  model = _model()
  with pytest.raises(ValueError, match=r"unknown LoRA targets \['lm_head'\]"):
    apply_lora(model, targets=('q_proj', 'lm_head'), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='rank must be a positive int'):
    apply_lora(model, rank=0, rngs=nnx.Rngs(0))
  apply_lora(model, targets=('q_proj',), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='already has a LoRA adapter'):
    apply_lora(model, targets=('q_proj',), rngs=nnx.Rngs(0))
