"""The jitted pieces of training: optimiser, update step, evaluation forward pass.

State is functional: an NNX model is split once into ``graphdef`` (static), ``params`` (the
trainable Variables, an ``nnx.State``) and ``frozen`` (everything else); the update step merges
them back inside ``jit``, computes the reranker's readout once, and uses it for the objective's
surrogate (whose gradient is the objective's), the diagnostics and the logged losses.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from decomp import chunked
from decomp.train import nonfinite
from decomp.update_magnitudes import diagnostics as doc_diagnostics
from decomp.losses import cl_loss, sft_loss
from decomp.objectives import RANK_SCORES, Objective
from decomp.optim import clip_by_global_norm, learning_rate_schedule, make_optimizer
from decomp.readout import Readout

Array = Any
Batch = Mapping[str, Array]

QUANTILES = (0.1, 0.5, 0.9)


def _masked_stats(values: Array, mask: Array, prefix: str) -> dict[str, Array]:
  """Mean and quantiles of ``values`` where ``mask`` (NaN when the mask is empty)."""
  values = values.astype(jnp.float32)
  selected = jnp.where(mask, values, jnp.nan)
  count = jnp.sum(mask)
  out = {f'{prefix}_mean': jnp.where(count > 0, jnp.sum(jnp.where(mask, values, 0)) /
                                     jnp.maximum(count, 1), jnp.nan)}
  qs = jnp.nanquantile(selected.reshape(-1), jnp.asarray(QUANTILES))
  for q, v in zip(QUANTILES, qs):
    out[f'{prefix}_q{int(round(q * 100))}'] = v
  return out


def model_readout(model: nnx.Module, batch: Batch, needs=frozenset()) -> Readout:
  """The reranker's readout ``[B, n]`` of a batch, with the data's teacher scores passed through
  as ``extra_scores['teacher']`` when the objective needs them."""
  if 'hidden' in batch:  # cached answer-position states of a frozen body (train/features.py)
    out = model.readout_from_hidden(batch['hidden'], needs=needs)
  else:
    out = model.readout(batch['input_ids'], batch['attention_mask'], batch.get('pixel_values'),
                        batch.get('image_valid'), positions=batch.get('positions'), needs=needs)
  if 'teacher' in needs:
    if 'teacher' not in batch:
      raise ValueError("the objective needs teacher scores, but the data gives none (a "
                       "'teacher' array [B, n])")
    out = out._replace(extra_scores={**(out.extra_scores or {}), 'teacher': batch['teacher']})
  return out


def objective_terms(readout: Readout, labels: Array, where: Array, objective: Objective, *,
                    readout_fn, cl_temperature: float = 1.0) -> dict[str, Array]:
  """Logged scalars and per-document arrays of one readout (no gradient flows through them).

  ``loss`` is the objective's own loss; ``sft_loss`` and ``cl_loss`` (at ``cl_temperature``)
  are logged for every objective, so runs compare on both.
  """
  readout = jax.lax.stop_gradient(readout)
  yes = readout.yes.astype(jnp.float32)
  no = readout.no.astype(jnp.float32)
  readout = readout._replace(yes=yes, no=no)
  sft = sft_loss(yes, no, labels, where=where)
  cl = cl_loss(yes, labels, where=where, temperature=cl_temperature)
  diag = doc_diagnostics(readout, labels, weight=objective.weight, direction=objective.direction,
                         readout_fn=readout_fn, where=where)
  docs = where & (labels >= 0)
  pos, neg = docs & (labels > 0), docs & (labels <= 0)
  scalars = {'loss': objective.loss_value(readout, labels, where=where), 'sft_loss': sft,
             'cl_loss': cl}
  scalars.update(_masked_stats(diag['weight'], pos, 'w_pos'))
  scalars.update(_masked_stats(diag['weight'], neg, 'w_neg'))
  per_doc = {
      'sft_score': jax.nn.sigmoid(yes - no),
      'cl_score': yes,
      'weight': diag['weight'],
      'direction_norm': diag['direction_norm'],
      'update': diag['update'],
  }
  return {'scalars': scalars, 'per_doc': per_doc}


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, objective: Objective, *,
                    cl_temperature: float = 1.0, example_grad_norms: bool = False,
                    doc_chunk: int = 0, micro_batches: int = 1,
                    global_norms: bool = True):
  """The update step ``(params, frozen, opt_state, step, batch) -> (params, opt_state, metrics)``.

  Args:
    graphdef: the reranker's static graph (``nnx.split(model, trainable, ...)[0]``); the model
      owns its readout (``readout``, ``readout_from_hidden``).
    tx: the optimiser; its state mirrors ``params``.
    schedule: learning rate as a function of the step (logged).
    objective: the :class:`~decomp.Objective` optimised (its surrogate), logged (its loss) and
      read out (its ``needs``).
    cl_temperature: InfoNCE temperature of the logged ``cl_loss``.
    example_grad_norms: also return exact per-document parameter-gradient norms
      ``||sg(W_i) grad_theta f_D(x_i)||`` (one backward pass per document; small models only).
    doc_chunk: documents per chunk of the exact two-pass gradient (:mod:`decomp.chunked`); 0
      runs the whole list at once.
    micro_batches: groups are split into this many micro-batches whose gradients accumulate
      with the whole batch's normaliser.
    global_norms: log ``grad_norm``, ``update_norm`` and ``param_norm`` (three memory-bound
      passes over every parameter, measured +12% of a 10m step on one core). False: the
      scalars hold none of them; the training loop builds both steps and runs this one on the
      steps whose log line would drop them. A branch (``lax.cond``) in one step was measured
      to cost as much as the norms (its operands, the updates and the new parameters, are
      likely materialised for it).

  The gradient's global norm is computed once: the clip of :func:`make_optimizer` reuses it
  (passed to ``tx`` as the extra argument ``grad_norm`` when ``tx`` takes extra arguments); when
  nothing reads it (no clip, ``global_norms=False``) XLA drops it.

  ``batch`` holds ``labels`` and ``where`` ``[B, n]`` plus the model inputs. The returned
  ``metrics`` are device arrays: ``scalars`` (step log) and ``per_doc`` ``[B, n]``.
  """
  needs = objective.needs

  def surrogate(params, frozen, batch):
    model = nnx.merge(graphdef, params, frozen)
    out = model_readout(model, batch, needs)
    value = objective.surrogate(out, batch['labels'], where=batch['where'])
    return value, out

  def value_grads_readout(params, frozen, batch):
    """The surrogate, its gradient and the readout: in one pass, or chunk by chunk."""
    if not doc_chunk and micro_batches == 1:
      (value, out), grads = jax.value_and_grad(surrogate, has_aux=True)(params, frozen, batch)
      return value, grads, out
    readout_fn = lambda p, docs: model_readout(nnx.merge(graphdef, p, frozen), docs, needs)
    docs = {k: v for k, v in batch.items() if k not in ('labels', 'where')}
    kwargs = dict(weight=objective.weight, direction=objective.direction, where=batch['where'],
                  doc_chunk=doc_chunk)
    if micro_batches > 1:
      result = chunked.accumulate_grads(readout_fn, params, docs, batch['labels'],
                                        micro_batches=micro_batches, **kwargs)
    else:
      result = chunked.chunked_value_and_grad(readout_fn, params, docs, batch['labels'], **kwargs)
    return result.value, result.grads, result.readout

  def per_doc_grad_norms(params, frozen, batch, signed_weight):
    """``||W_i grad_theta f_D(x_i)||`` for every document, vmapped over the flattened list."""
    b, n = batch['labels'].shape

    def one(doc, w):
      doc = jax.tree.map(lambda x: x[None, None], doc)

      def f(p):
        model = nnx.merge(graphdef, p, frozen)
        return jnp.sum(objective.direction(model_readout(model, doc, needs)))

      g = jax.grad(f)(params)
      return jnp.abs(w) * optax.tree.norm(g)

    docs = {k: v.reshape((b * n,) + v.shape[2:]) for k, v in batch.items()
            if k not in ('labels', 'where')}
    norms = jax.lax.map(lambda args: one(*args), (docs, signed_weight.reshape(-1)),
                        batch_size=doc_chunk or n)
    return norms.reshape(b, n)

  takes_grad_norm = isinstance(tx, optax.GradientTransformationExtraArgs)

  def step_fn(params, frozen, opt_state, step, batch):
    value, grads, out = value_grads_readout(params, frozen, batch)
    model = nnx.merge(graphdef, params, frozen)
    grad_norm = optax.tree.norm(grads)
    extra = {'grad_norm': grad_norm} if takes_grad_norm else {}
    updates, new_opt_state = tx.update(grads, opt_state, params, **extra)
    new_params = optax.apply_updates(params, updates)
    terms = objective_terms(out, batch['labels'], batch['where'], objective,
                            readout_fn=lambda h: model.readout_from_hidden(h, needs=needs),
                            cl_temperature=cl_temperature)
    scalars = dict(terms['scalars'])
    scalars.update(objective=value, learning_rate=schedule(step))
    if global_norms:
      scalars.update(grad_norm=grad_norm, update_norm=optax.tree.norm(updates),
                     param_norm=optax.tree.norm(new_params))
    per_doc = dict(terms['per_doc'])
    if example_grad_norms:
      per_doc['grad_norm'] = per_doc_grad_norms(params, frozen, batch, per_doc['weight'])
    return new_params, new_opt_state, {'scalars': scalars, 'per_doc': per_doc}

  return step_fn


def jit_train_step(cfg, graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                   schedule: optax.Schedule, objective: Objective, state_shardings, replicated, *,
                   global_norms: bool):
  """The jitted, non-finite-guarded update step of a TrainConfig, with the state's shardings
  (``{'params', 'frozen', 'opt_state'}``) and donated params and optimiser state: what the
  training loop runs and :mod:`decomp.plan` compiles."""
  step_fn = make_train_step(
      graphdef, tx, schedule, objective, cl_temperature=cfg.objective.temperature,
      example_grad_norms=cfg.eval_log.example_grad_norms, doc_chunk=cfg.parallel.doc_chunk,
      micro_batches=cfg.parallel.accumulate_steps, global_norms=global_norms)
  return jax.jit(
      nonfinite.guard_step(step_fn, skip=cfg.optim.on_nonfinite == 'skip_step'),
      in_shardings=(state_shardings['params'], state_shardings['frozen'],
                    state_shardings['opt_state'], replicated, None),
      # Metrics are small: replicated, so every process can read them (multi-host).
      out_shardings=(state_shardings['params'], state_shardings['opt_state'], replicated),
      donate_argnums=(0, 2))


def make_eval_step(graphdef: nnx.GraphDef):
  """``(params, frozen, batch) -> {score: [B, n]}``, every ranking score of
  :data:`decomp.RANK_SCORES` (float32)."""

  def eval_fn(params, frozen, batch):
    model = nnx.merge(graphdef, params, frozen)
    out = model_readout(model, batch)
    out = out._replace(yes=out.yes.astype(jnp.float32), no=out.no.astype(jnp.float32))
    return {name: score(out) for name, score in RANK_SCORES.items()}

  return eval_fn


def optimizer_for(cfg) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimiser of a :class:`~decomp.train.config.TrainConfig` (its ``optim`` section)."""
  o = cfg.optim
  return make_optimizer(peak=o.learning_rate, steps=o.steps, warmup_steps=o.warmup_steps,
                        end_factor=o.end_learning_rate_factor, weight_decay=o.weight_decay,
                        b1=o.b1, b2=o.b2, clip_norm=o.clip_norm, mu_dtype=o.mu_dtype)
