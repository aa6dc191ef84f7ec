"""Rematerialisation policies (decomp.models.remat): every policy gives the same values and
gradients as 'none' for Qwen2.5-VL (its decoder, with LoRA, and its vision tower) and the LLaVA
ViT, in float32. (tests/train/test_plan.py checks that `--set remat=...` reaches the model.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from decomp.models.lora import apply_lora, trainable_filter
from decomp.models.remat import REMAT_POLICIES, remat_name
from decomp.models.vision import VisionConfig, VisionEncoder

POLICIES = tuple(REMAT_POLICIES)
IMAGE, START, END = 60, 58, 59
# XLA's -O0: a third of the compile time of these tiny programs; the values are the same program's.
QUICK_COMPILE = {'xla_backend_optimization_level': 0}


def _qwen_vl(remat):
  from decomp.models.qwen_vl import QwenVL, QwenVLConfig
  text = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
              max_position_embeddings=128,
              rope_parameters={'rope_type': 'default', 'rope_theta': 1e4,
                               'mrope_section': [1, 1, 2]})
  vision = dict(depth=2, num_heads=2, patch_size=2, temporal_patch_size=2, spatial_merge_size=2,
                in_channels=3, hidden_size=16, intermediate_size=24, out_hidden_size=32,
                window_size=4, fullatt_block_indexes=[1])
  config = QwenVLConfig.from_hf({
      'architectures': ['Qwen2_5_VLForConditionalGeneration'], 'model_type': 'qwen2_5_vl',
      'text_config': text, 'vision_config': vision, 'image_token_id': IMAGE,
      'video_token_id': 61, 'vision_start_token_id': START, 'vision_end_token_id': END})
  model = QwenVL(config, remat=remat, rngs=nnx.Rngs(3))
  apply_lora(model.decoder, rank=2, alpha=4.0, targets=('q_proj', 'v_proj', 'down_proj'),
             rngs=nnx.Rngs(2))
  for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    if 'lora_b' in str(path):  # B starts at 0: nonzero, so the gradients reach A too
      variable.set_value(jnp.full(variable.get_value().shape, 0.1, variable.get_value().dtype))
  ids = np.array([[1, START] + [IMAGE] * 4 + [END, 2, 3]])  # an 8 px image: 16 patches, 4 tokens
  pixels = np.random.default_rng(0).standard_normal((16, 24)).astype(np.float32)
  inputs = model.prepare(ids, np.ones_like(ids), pixels, np.array([[1, 4, 4]]))
  return lambda m: jnp.sum(jnp.tanh(m.hidden_states(inputs)) * jnp.arange(32.0)), model


def _vit(remat):
  config = VisionConfig(family='siglip', hidden_size=16, intermediate_size=32, num_layers=2,
                        num_heads=2, image_size=8, patch_size=4)
  model = VisionEncoder(config, remat=remat, rngs=nnx.Rngs(4))
  pixels = jnp.asarray(np.random.default_rng(1).standard_normal((2, 8, 8, 3)), jnp.float32)
  return lambda m: jnp.sum(jnp.tanh(m(pixels)) * jnp.arange(16.0)), model


def test_every_policy_gives_the_same_loss_and_gradients():
  # As in training: LoRA adapters (and here the Qwen tower, the ViT's first norms) train, the
  # rest is frozen and enters jit as its own argument (another trace level than the gradient's).
  trains = nnx.Any(trainable_filter(lora=True, train_lm_head=False),
                   nnx.All(nnx.Param, nnx.PathContains('visual')),
                   nnx.All(nnx.Param, nnx.PathContains('layer_norm1')))
  results = {}
  for policy in POLICIES:
    (vl_loss, vl), (vit_loss, vit) = _qwen_vl(policy), _vit(policy)
    graphdef, params, frozen = nnx.split((vl, vit), trains, ...)

    def loss(p, frozen):
      vl, vit = nnx.merge(graphdef, p, frozen)
      return vl_loss(vl) + vit_loss(vit)

    traced = jax.jit(jax.value_and_grad(loss), compiler_options=QUICK_COMPILE).trace(params,
                                                                                      frozen)
    # The policy really wraps the blocks (a no-op remat would pass the equality below).
    assert ('remat' in str(traced.jaxpr)) == (policy != 'none')
    results[policy] = traced.lower().compile()(params, frozen)
  value, grads = results['none']
  leaves = jax.tree.leaves(grads)
  assert all(float(jnp.abs(g).max()) > 0 for g in leaves)  # every trained weight learns
  for policy in POLICIES[1:]:
    other_value, other_grads = results[policy]
    np.testing.assert_allclose(other_value, value, rtol=1e-6)
    for a, b in zip(leaves, jax.tree.leaves(other_grads)):  # float32 sums in another order
      np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(jnp.abs(a).max()))


def test_bools_and_bad_names():
  assert (remat_name(True), remat_name(False), remat_name('dots')) == ('block', 'none', 'dots')
  with pytest.raises(ValueError, match="remat='blocks'"):
    remat_name('blocks')
