"""Divergence guard of the update step: a non-finite loss, gradient or parameter is never silent.

The check costs no host round trip of its own: the jitted step reduces it to one integer
(``metrics['scalars']['nonfinite']``, a bit per quantity) that comes to the host with the
step's other metrics, which the loop fetches for its step log anyway. With ``skip=True`` the
step also keeps the old parameters and optimiser state when the update is non-finite.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

POLICIES = ('error', 'skip_step')  # TrainConfig.on_nonfinite
KEY = 'nonfinite'  # the scalar metric the guard adds
# Bit i of the flag: QUANTITIES[i] was non-finite. The loss includes the surrogate objective;
# gradient and parameters are read through their global norms (NaN or inf if any entry is).
QUANTITIES = ('loss', 'gradient', 'parameters')


def quantities(flag: int) -> tuple[str, ...]:
  """The names of the bits set in ``flag``.

  >>> quantities(5)
  ('loss', 'parameters')
  """
  return tuple(name for i, name in enumerate(QUANTITIES) if int(flag) >> i & 1)


def guard_step(step_fn: Callable, *, skip: bool) -> Callable:
  """Wraps an update step ``(params, frozen, opt_state, step, batch) -> (params, opt_state,
  metrics)`` (``decomp.train.step.make_train_step``) to add the ``nonfinite`` flag to its
  scalars and, with ``skip``, to drop a non-finite update (params and optimiser state unchanged).
  """

  def guarded(params, frozen, opt_state, step, batch):
    new_params, new_opt_state, metrics = step_fn(params, frozen, opt_state, step, batch)
    scalars = metrics['scalars']
    # A step built without the global norms (``make_train_step(global_norms=False)``) checks
    # the loss only: a non-finite gradient or update there makes the parameters, and so the
    # next step's loss, non-finite.
    finite = lambda key: jnp.isfinite(scalars[key]) if key in scalars else jnp.asarray(True)
    bad = (~(jnp.isfinite(scalars['loss']) & jnp.isfinite(scalars['objective'])),
           ~finite('grad_norm'), ~finite('param_norm'))
    flag = sum(b.astype(jnp.int32) << i for i, b in enumerate(bad))
    if skip:
      keep_old = flag > 0
      select = lambda new, old: jnp.where(keep_old, old, new)
      new_params = jax.tree.map(select, new_params, params)
      new_opt_state = jax.tree.map(select, new_opt_state, opt_state)
    return new_params, new_opt_state, dict(metrics, scalars={**scalars, KEY: flag})

  return guarded
