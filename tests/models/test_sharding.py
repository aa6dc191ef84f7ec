"""Logical names -> mesh shardings; a sharded model computes what the unsharded one does.

Needs 8 (simulated CPU) devices: tests/conftest.py sets XLA_FLAGS before jax is imported.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from decomp.models.config import DecoderConfig
from decomp.models.decoder import Decoder
from decomp.models.hf import load_pretrained
from decomp.models.lora import apply_lora
from decomp.models.sharding import (DEFAULT_RULES, FSDP_RULES, logical_to_mesh_sharding,
                                    logical_to_partition_spec, model_shardings, shard_model)


def _mesh(shape):
  assert jax.device_count() >= 8, 'tests/conftest.py should have set 8 simulated CPU devices'
  return jax.make_mesh(shape, ('data', 'model'), (AxisType.Auto, AxisType.Auto),
                       devices=jax.devices()[:8])


def test_rules_map_names_to_mesh_axes():
  mesh = _mesh((2, 4))
  assert logical_to_partition_spec(('vocab', 'embed'), mesh) == P('model', None)
  assert logical_to_partition_spec(('embed', 'mlp'), mesh, FSDP_RULES) == P('data', 'model')
  assert logical_to_partition_spec(('batch', 'length', 'embed'), mesh) == P('data', None, None)
  # Unknown names and names mapped to axes the mesh lacks are replicated.
  assert logical_to_partition_spec(('norm', 'something'), mesh) == P(None, None)
  assert logical_to_partition_spec(('mlp',), mesh, {'mlp': 'tensor'}) == P(None)
  # A mesh axis is used once per array: the second dimension asking for it is replicated.
  assert logical_to_partition_spec(('heads', 'mlp'), mesh) == P('model', None)
  # Tuple of axes, and flax-style (name, axis) pair rules.
  assert logical_to_partition_spec(('embed',), mesh, {'embed': ('data', 'model')}) == P(
      ('data', 'model'))
  assert logical_to_partition_spec(('embed', 'mlp'), mesh, [('embed', 'data'), ('mlp', None)]) == P(
      'data', None)
  sharding = logical_to_mesh_sharding(('vocab', 'embed'), mesh, DEFAULT_RULES)
  assert isinstance(sharding, NamedSharding) and sharding.spec == P('model', None)


def test_indivisible_dimension_falls_back_to_replication():
  mesh = _mesh((2, 4))
  assert logical_to_partition_spec(('kv_heads',), mesh, shape=(6,)) == P(None)
  assert logical_to_partition_spec(('kv_heads',), mesh, shape=(8,)) == P('model')
  assert logical_to_partition_spec(('embed',), mesh, {'embed': ('data', 'model')},
                                   shape=(12,)) == P(None)
  with pytest.raises(ValueError, match='do not match shape'):
    logical_to_partition_spec(('embed',), mesh, shape=(4, 4))


def _config(**kw):
  base = dict(architecture='qwen2', vocab_size=128, hidden_size=64, intermediate_size=128,
              num_layers=1, num_heads=4, num_kv_heads=2, head_dim=16, attention_bias=True)
  return DecoderConfig(**{**base, **kw})


def test_model_shardings_from_abstract_model_drive_a_sharded_init():
  mesh = _mesh((2, 4))
  config = _config(vocab_size=102)  # 102 rows do not split over model=4 -> replicated
  init = lambda: Decoder(config, rngs=nnx.Rngs(0))
  abstract = nnx.eval_shape(init)
  shardings = model_shardings(abstract, mesh)
  assert jax.tree.structure(shardings) == jax.tree.structure(nnx.state(abstract))
  specs = {'.'.join(map(str, p)): v.get_value().spec for p, v in nnx.to_flat_state(shardings)}
  assert specs['embed_tokens'] == P(None, None)
  assert specs['layers.0.self_attn.q_proj.kernel'] == P(None, 'model')
  assert specs['layers.0.self_attn.q_proj.bias'] == P('model')
  assert specs['layers.0.mlp.down_proj.kernel'] == P('model', None)
  assert specs['norm.scale'] == P(None)

  @jax.jit
  def init_state():
    return nnx.state(init())

  state = jax.jit(init_state, out_shardings=shardings)()
  kernel = state['layers'][0]['mlp']['up_proj']['kernel'].get_value()
  assert kernel.sharding.spec == P(None, 'model')
  assert kernel.addressable_shards[0].data.shape == (64, 32)
  eager = nnx.state(init())['layers'][0]['mlp']['up_proj']['kernel'].get_value()
  np.testing.assert_allclose(kernel, eager, rtol=1e-6)  # jit vs eager sampling: ulp differences


def _loss_and_grads(model, ids, mask):
  def loss(m):
    logits = m(ids, mask).astype(jnp.float32)
    return jnp.sum(jax.nn.log_softmax(logits)[..., 7] * mask)
  return nnx.jit(nnx.value_and_grad(loss))(model)


@pytest.mark.parametrize('shape,rules', [((2, 4), DEFAULT_RULES), ((4, 2), FSDP_RULES)],
                         ids=['tensor-parallel', 'fsdp'])
def test_loaded_sharded_model_matches_single_device(shape, rules, qwen2_checkpoint, padded_batches):
  mesh = _mesh(shape)
  _, (ids, mask), _ = padded_batches
  ids, mask = np.concatenate([ids, ids[:1]]), np.concatenate([mask, mask[:1]])  # B=4
  single = load_pretrained(qwen2_checkpoint.path)
  sharded = load_pretrained(qwen2_checkpoint.path, mesh=mesh, rules=rules)
  up = sharded.layers[0].mlp.up_proj.kernel.get_value()
  expected_spec = P(None, 'model') if rules is DEFAULT_RULES else P('data', 'model')
  assert up.sharding.spec == expected_spec and len(up.sharding.device_set) == 8
  assert sharded.lm_head.get_value().sharding.spec == (
      P('model', None) if rules is DEFAULT_RULES else P('model', 'data'))
  batch = NamedSharding(mesh, P('data', None))
  loss_1, grads_1 = _loss_and_grads(single, jnp.asarray(ids), jnp.asarray(mask))
  loss_8, grads_8 = _loss_and_grads(sharded, jax.device_put(ids, batch),
                                    jax.device_put(mask, batch))
  np.testing.assert_allclose(loss_8, loss_1, rtol=1e-5)
  flat_1, flat_8 = nnx.to_flat_state(grads_1), nnx.to_flat_state(grads_8)
  assert [p for p, _ in flat_1] == [p for p, _ in flat_8]
  for (path, g1), (_, g8) in zip(flat_1, flat_8):
    np.testing.assert_allclose(g8.get_value(), g1.get_value(), atol=1e-5, rtol=1e-4,
                               err_msg=str(path))
  logits_1 = nnx.jit(lambda m: m(ids, mask))(single)
  logits_8 = nnx.jit(lambda m: m(ids, mask))(sharded)
  np.testing.assert_allclose(logits_8, logits_1, atol=1e-5)


def test_shard_model_places_a_live_model_with_lora():
  mesh = _mesh((2, 4))
  model = apply_lora(Decoder(_config(), rngs=nnx.Rngs(0)), rank=4, rngs=nnx.Rngs(1))
  before = nnx.jit(lambda m: m(jnp.ones((2, 5), jnp.int32)))(model)
  shard_model(model, mesh)
  q = model.layers[0].self_attn.q_proj
  assert q.base.kernel.get_value().sharding.spec == P(None, 'model')
  assert q.lora_b.get_value().sharding.spec == P(None, 'model')
  assert q.lora_a.get_value().sharding.spec == P(None, None)
  after = nnx.jit(lambda m: m(jnp.ones((2, 5), jnp.int32)))(model)
  np.testing.assert_allclose(after, before, atol=1e-6)
