"""The optimiser of training runs and of the playground base: AdamW with a linear warm-up and a
cosine decay, after a global-norm clip that can reuse a norm the caller already computed."""

from __future__ import annotations

import jax
import optax


def learning_rate_schedule(*, peak: float, steps: int, warmup_steps: int,
                           end_factor: float) -> optax.Schedule:
  """Linear warm-up from 0 to ``peak``, then cosine decay to ``peak * end_factor`` at ``steps``."""
  warmup_steps = min(warmup_steps, max(steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup_steps,
      decay_steps=max(steps, warmup_steps + 1), end_value=peak * end_factor)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformationExtraArgs:
  """``optax.clip_by_global_norm`` (the same arithmetic and the same empty state, so optimiser
  states and checkpoints are interchangeable) that takes the gradient's global norm as an extra
  argument ``grad_norm`` when the caller has it: the update step computes that norm once, for
  its log and the guard, instead of twice."""

  def update_fn(updates, state, params=None, *, grad_norm=None, **extra_args):
    del params, extra_args
    g_norm = optax.tree.norm(updates) if grad_norm is None else grad_norm
    keep = g_norm < max_norm
    updates = jax.tree.map(
        lambda t: jax.lax.select(keep, t, (t / g_norm.astype(t.dtype)) * max_norm), updates)
    return updates, state

  return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)


def make_optimizer(*, peak: float, steps: int, warmup_steps: int, end_factor: float,
                   weight_decay: float, b1: float, b2: float,
                   clip_norm: float,
                   mu_dtype: str = 'float32') -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with warm-up + cosine schedule, after global-norm clipping (``clip_norm=0``: none).

  ``mu_dtype``: the dtype of Adam's first moment (optax's ``mu_dtype``); the second moment and
  the update arithmetic stay float32.

  The chain takes the gradient's global norm as the extra argument ``grad_norm`` (see
  :func:`clip_by_global_norm`); without it the clip computes the norm itself.
  """
  schedule = learning_rate_schedule(peak=peak, steps=steps, warmup_steps=warmup_steps,
                                    end_factor=end_factor)
  parts = [clip_by_global_norm(clip_norm)] if clip_norm > 0 else []
  parts.append(optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay,
                           mu_dtype=None if mu_dtype == 'float32' else mu_dtype))
  return optax.chain(*parts), schedule
