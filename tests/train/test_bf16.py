"""The bf16 compute path: bf16 activations over fp32 master weights, with the loss and weight
arithmetic in fp32, stays close to the fp32 step on the same batch (per-example weights too)."""


import jax
import jax.numpy as jnp
import numpy as np

from decomp.train import config as config_lib
from decomp.train import overrides as overrides_lib
from decomp.train import recipes
from decomp.train import data as data_lib
from decomp.train import mesh as mesh_lib
from decomp.train import state as state_lib
from decomp.train import step as step_lib


def _one_step(dtype):
  cfg = overrides_lib.apply_overrides(recipes.get_config('playground_quick'), [
      'vision=false', 'num_layers=2', 'batch_size=4', 'negatives=3', 'max_length=48',
      f'dtype={dtype}', 'param_dtype=float32', 'playground.tasks=["t2t"]'])
  mesh = mesh_lib.make_mesh({'data': 1}, jax.devices()[:1])
  tokenizer = state_lib.resolve_tokenizer(cfg)
  objective = config_lib.make_objective(cfg)
  run = state_lib.build_model_state(cfg, mesh, tokenizer, objective)
  params, frozen = run.initialize()
  arrays, _ = data_lib.make_data(cfg, tokenizer).train_batch(0, cfg.data.batch_size)
  tx, schedule = step_lib.make_optimizer(peak=1e-3, steps=10, warmup_steps=0, end_factor=1.0,
                                         weight_decay=0.0, b1=0.9, b2=0.999, clip_norm=1.0)
  fn = jax.jit(step_lib.make_train_step(run.graphdef, tx, schedule, objective))
  new_params, _, metrics = fn(params, frozen, tx.init(params), jnp.int32(0),
                              {k: jnp.asarray(v) for k, v in arrays.items()})
  return new_params, jax.device_get(metrics)


def test_bf16_step_tracks_the_fp32_step():
  p32, m32 = _one_step('float32')
  p16, m16 = _one_step('bfloat16')
  # Master weights stay fp32; the logged loss and weights are fp32 arithmetic on bf16 logits.
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(p16))
  assert m16['per_doc']['weight'].dtype == np.float32
  np.testing.assert_allclose(m16['scalars']['loss'], m32['scalars']['loss'], rtol=2e-2)
  np.testing.assert_allclose(m16['per_doc']['weight'], m32['per_doc']['weight'], atol=2e-2)
  np.testing.assert_allclose(m16['scalars']['grad_norm'], m32['scalars']['grad_norm'], rtol=5e-2)
  # ... and they are not the same computation (bf16 really ran).
  assert not np.array_equal(m16['per_doc']['weight'], m32['per_doc']['weight'])
