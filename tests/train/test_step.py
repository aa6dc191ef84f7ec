"""The update step on a real (tiny) reranker: every weight x direction pair trains, the
surrogate's gradient is the plain loss's for the pure pairs, exact per-example gradient norms."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from decomp.losses import cl_loss, sft_loss
from decomp.train import config as config_lib
from decomp.train import overrides as overrides_lib
from decomp.train import recipes
from decomp.train import data as data_lib
from decomp.train import mesh as mesh_lib
from decomp.train import nonfinite
from decomp.train import state as state_lib
from decomp.train import step as step_lib


def _tiny_run(*overrides):
  """``(cfg, run with initialised params, first training batch)`` of a 1-layer text reranker."""
  cfg = overrides_lib.apply_overrides(recipes.get_config('playground_quick'), [
      'vision=false', 'num_layers=1', 'finetune=full', 'batch_size=4', 'negatives=3',
      'max_length=48', *overrides])
  mesh = mesh_lib.make_mesh({'data': 1}, jax.devices()[:1])
  tokenizer = state_lib.resolve_tokenizer(cfg)
  data = data_lib.make_data(cfg, tokenizer)
  run = state_lib.build_model_state(cfg, mesh, tokenizer, config_lib.make_objective(cfg))
  params, frozen = run.initialize()
  run = dataclasses.replace(run, params=params, frozen=frozen)
  arrays, _ = data.train_batch(0, cfg.data.batch_size)
  return cfg, run, {k: jnp.asarray(v) for k, v in arrays.items()}


@pytest.fixture(scope='module')
def model_and_batch():
  return _tiny_run('direction=projection', 'train_lm_head=true')


def test_log_normalizer_is_computed_only_when_the_objective_needs_it(model_and_batch):
  """The full-vocabulary matmul ([.., V] logits) appears in the compiled step only for an
  objective that declares the log-normaliser (cl_logprob), not for the others."""
  cfg, run, batch = model_and_batch
  vocab = run.spec.decoder.vocab_size

  def text(weight, direction):
    fn, tx = _step(cfg, run, weight, direction)
    return str(jax.make_jaxpr(fn)(run.params, run.frozen, tx.init(run.params), jnp.int32(0),
                                  batch))

  marker = f'[{batch["labels"].size},{vocab}]'  # logits over the vocabulary, one row per doc
  assert marker not in text('sft', 'sft') and marker not in text('cl', 'projection')
  assert marker in text('cl', 'cl_logprob')


def _readout(run, params, batch, needs=frozenset()):
  return step_lib.model_readout(nnx.merge(run.graphdef, params, run.frozen), batch, needs)


def _step(cfg, run, weight, direction, **kwargs):
  objective = config_lib.make_objective(
      config_lib.replace(cfg, objective={'weight': weight, 'direction': direction}))
  tx, schedule = step_lib.make_optimizer(peak=1e-2, steps=10, warmup_steps=0, end_factor=1.0,
                                         weight_decay=0.0, b1=0.9, b2=0.999, clip_norm=0.0)
  fn = step_lib.make_train_step(run.graphdef, tx, schedule, objective, **kwargs)
  return jax.jit(fn), tx


@pytest.mark.parametrize('weight, direction', [
    ('cl', 'cl_logprob'), ('tau_mask', 'projection')])
def test_every_pair_trains(model_and_batch, weight, direction):
  cfg, run, batch = model_and_batch
  fn, tx = _step(cfg, run, weight, direction)
  params, metrics = run.params, None
  opt_state = tx.init(params)
  for i in range(2):
    before = params  # the diagnostics read the parameters the step starts from
    params, opt_state, metrics = fn(params, run.frozen, opt_state, jnp.int32(i), batch)
  scalars = jax.device_get(metrics['scalars'])
  assert all(np.isfinite(v) for k, v in scalars.items()), scalars
  assert scalars['grad_norm'] > 0 and scalars['update_norm'] > 0
  per_doc = jax.device_get(metrics['per_doc'])
  w = per_doc['weight']
  labels = np.asarray(batch['labels'])
  # Signed weights: positives pushed up (W <= 0), negatives down (W >= 0).
  assert (w[labels == 1] <= 0).all() and (w[labels == 0] >= 0).all()
  np.testing.assert_allclose(per_doc['update'], np.abs(w) * per_doc['direction_norm'],
                             rtol=1e-6)
  if direction == 'projection':  # ||grad_h (h . r)|| = ||r||, the learnable projection's norm
    merged = nnx.merge(run.graphdef, before, run.frozen)
    np.testing.assert_allclose(per_doc['direction_norm'],
                               np.linalg.norm(np.asarray(merged.projection[...])), rtol=1e-5)


@pytest.mark.parametrize('pair', ['sft', 'cl'])
def test_pure_pair_gradient_equals_plain_loss(model_and_batch, pair):
  """URL(W_X, D_X) has the gradient of loss X for every parameter, LM head included."""
  cfg, run, batch = model_and_batch
  objective = config_lib.make_objective(
      config_lib.replace(cfg, objective={'name': pair, 'weight': '', 'direction': ''}))
  readout = lambda params: _readout(run, params, batch)

  def surrogate(params):
    return objective.surrogate(readout(params), batch['labels'], where=batch['where'])

  def plain(params):
    r = readout(params)
    if pair == 'sft':
      return sft_loss(r.yes, r.no, batch['labels'], where=batch['where'])
    return cl_loss(r.yes, batch['labels'], where=batch['where'])

  g_url = jax.jit(jax.grad(surrogate))(run.params)
  g_plain = jax.jit(jax.grad(plain))(run.params)
  flat_url, flat_plain = jax.tree.leaves(g_url), jax.tree.leaves(g_plain)
  assert len(flat_url) == len(flat_plain) > 10
  for a, b in zip(flat_url, flat_plain):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
  assert optax.global_norm(g_plain) > 0


def test_exact_per_example_gradient_norms(model_and_batch):
  cfg, run, batch = model_and_batch
  fn, tx = _step(cfg, run, 'sft', 'sft', example_grad_norms=True)
  _, _, metrics = fn(run.params, run.frozen, tx.init(run.params), jnp.int32(0), batch)
  per_doc = jax.device_get(metrics['per_doc'])
  norms, w = per_doc['grad_norm'], per_doc['weight']
  assert norms.shape == batch['labels'].shape
  # Reference: one document at a time, ||W_i grad_theta f_SFT(x_i)|| by a plain jax.grad.
  def f(params, doc):
    r = _readout(run, params, doc)
    return jnp.sum(r.yes - r.no)

  grad_norm = jax.jit(lambda params, doc: optax.global_norm(jax.grad(f)(params, doc)))
  for g, d in [(0, 0), (1, 2), (3, 1)]:
    doc = {k: v[g:g + 1, d:d + 1] for k, v in batch.items()}
    np.testing.assert_allclose(norms[g, d], abs(w[g, d]) * grad_norm(run.params, doc), rtol=1e-4)


def test_global_norms_are_exact_and_the_clip_reuses_the_gradient_norm(model_and_batch):
  """The three logged norms are those of the gradient, update and new parameters computed
  independently; the step built without them makes the same update and logs none of them. The
  clip that reuses the step's gradient norm gives optax's clipped update and keeps its
  optimiser-state layout (checkpoints stay interchangeable)."""
  cfg, run, batch = model_and_batch
  objective = config_lib.make_objective(config_lib.replace(cfg, objective={'weight': 'sft', 'direction': 'sft'}))
  kw = dict(peak=1e-2, steps=10, warmup_steps=0, end_factor=1.0, weight_decay=0.1, b1=0.9,
            b2=0.999)
  tx, schedule = step_lib.make_optimizer(clip_norm=1e-3, **kw)  # small: the clip acts
  reference_tx = optax.chain(optax.clip_by_global_norm(1e-3),
                             optax.adamw(schedule, b1=0.9, b2=0.999, weight_decay=0.1))
  opt_state = tx.init(run.params)
  assert jax.tree.structure(opt_state) == jax.tree.structure(reference_tx.init(run.params))

  grads = jax.jit(jax.grad(lambda p: objective.surrogate(
      _readout(run, p, batch), batch['labels'], where=batch['where'])))(run.params)
  assert optax.tree.norm(grads) > 1e-2  # so the clip scales it
  reference_updates, _ = reference_tx.update(grads, reference_tx.init(run.params), run.params)
  reference = optax.apply_updates(run.params, reference_updates)
  for global_norms in (True, False):
    step = jax.jit(nonfinite.guard_step(step_lib.make_train_step(
        run.graphdef, tx, schedule, objective, global_norms=global_norms), skip=False))
    new_params, _, metrics = step(run.params, run.frozen, opt_state, jnp.int32(0), batch)
    for a, b in zip(jax.tree.leaves(new_params), jax.tree.leaves(reference)):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)
    scalars = jax.device_get(metrics['scalars'])
    assert scalars[nonfinite.KEY] == 0
    if global_norms:
      np.testing.assert_allclose(scalars['grad_norm'], optax.tree.norm(grads), rtol=1e-6)
      np.testing.assert_allclose(scalars['update_norm'], optax.tree.norm(reference_updates),
                                 rtol=1e-6)
      np.testing.assert_allclose(scalars['param_norm'], optax.tree.norm(reference), rtol=1e-6)
    else:
      assert not {'grad_norm', 'update_norm', 'param_norm'} & set(scalars)


def test_the_loop_computes_norms_on_logged_and_checkpointed_steps():
  from decomp.train import loop
  cfg = config_lib.replace(recipes.get_config('playground_quick'), optim={'steps': 10},
                           eval_log={'log_every': 3, 'checkpoint_every': 4})
  assert [s for s in range(1, 11) if loop._norms_due(cfg)(s)] == [3, 4, 6, 8, 9, 10]
  for every_step in (config_lib.replace(cfg, optim={'on_nonfinite': 'skip_step'}),
                     config_lib.replace(cfg, eval_log={'log_every': 1})):
    assert all(loop._norms_due(every_step)(s) for s in range(1, 11))


def test_pooled_label_words_reach_the_step_and_its_diagnostics():
  """label_pooling='pairs': the trainer's readout and the diagnostics' readout-from-h agree, and
  the logged SFT direction norm is ||grad_h (z_y - z_n)|| of the pooled scores."""
  cfg, run, batch = _tiny_run('label_words=["yes","no","true","false"]', 'label_pooling=pairs')
  params, frozen = run.params, run.frozen
  model = nnx.merge(run.graphdef, params, frozen)
  out = _readout(run, params, batch)
  again = model.readout_from_hidden(out.hidden)
  np.testing.assert_allclose(again.yes, out.yes, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(again.no, out.no, rtol=1e-5, atol=1e-5)
  k = np.asarray(out.hidden) @ np.asarray(model.label_rows()).T
  np.testing.assert_allclose(out.yes, np.logaddexp(k[..., 0], k[..., 2]), rtol=1e-5)
  fn, tx = _step(cfg, run, 'sft', 'sft')
  _, _, metrics = fn(params, frozen, tx.init(params), jnp.int32(0), batch)
  per_doc = jax.device_get(metrics['per_doc'])
  grad = jax.vmap(jax.grad(lambda h: jnp.subtract(
      *(lambda r: (r.yes, r.no))(model.readout_from_hidden(h)))))(
          out.hidden.reshape(-1, out.hidden.shape[-1]))
  np.testing.assert_allclose(per_doc['direction_norm'].reshape(-1),
                             np.linalg.norm(np.asarray(grad), axis=-1), rtol=1e-4)


def test_random_label_head_trains_and_is_read_by_every_score():
  """label_head='random' (the paper's D_Rand): the random rows are trained even with the LM head
  frozen, the step's readout-from-h reads them, and the logged SFT direction is r_y - r_n."""
  cfg, run, batch = _tiny_run('label_head=random')
  assert not cfg.finetune.lm_head
  params, frozen = run.params, run.frozen
  model = nnx.merge(run.graphdef, params, frozen)
  rows = np.asarray(model.random_label_rows[...])
  assert 'random_label_rows' in params and 'random_label_rows' not in frozen
  out = _readout(run, params, batch)
  np.testing.assert_allclose(out.yes, np.asarray(out.hidden) @ rows[0], rtol=1e-5, atol=1e-5)
  again = model.readout_from_hidden(out.hidden)
  np.testing.assert_allclose(again.no, out.no, rtol=1e-5, atol=1e-5)
  fn, tx = _step(cfg, run, 'sft', 'sft')
  new_params, _, metrics = fn(params, frozen, tx.init(params), jnp.int32(0), batch)
  per_doc = jax.device_get(metrics['per_doc'])
  np.testing.assert_allclose(per_doc['direction_norm'], np.linalg.norm(rows[0] - rows[1]),
                             rtol=1e-5)
  moved = np.asarray(new_params['random_label_rows'][...])
  assert np.abs(moved - rows).max() > 1e-4
