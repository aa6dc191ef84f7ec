"""Rematerialisation policies: what a layer keeps from its forward pass for the backward pass.

A policy name says which of a block's intermediate values the backward pass reads from memory
and which it recomputes (``jax.checkpoint`` / ``nnx.remat`` around each decoder layer and vision
block):

* ``'none'``: everything the backward pass needs is kept (fastest; activation memory grows with
  layers x tokens x the block's intermediates: attention scores, MLP activations, ...).
* ``'block'``: only each block's input is kept; the block's forward runs again in the backward
  pass (about one more forward: ~+33% compute of a training step; activation memory ~ one
  block's intermediates plus one ``[tokens, hidden]`` array per layer).
* ``'dots'``: each block also keeps the outputs of its matmuls without batch dimensions (the
  q/k/v/o, MLP and LoRA projections, ``jax.checkpoint_policies.dots_with_no_batch_dims_saveable``)
  and recomputes the rest (norms, RoPE, attention scores and softmax, activations): less
  recompute than ``'block'``, more memory.

Every policy computes the same function and the same gradients (only what is stored differs).
``True`` / ``False`` (the models' earlier boolean flag) mean ``'block'`` / ``'none'``.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
from flax import nnx

# name -> the jax.checkpoint policy (None: no rematerialisation)
REMAT_POLICIES: dict[str, Callable[..., bool] | None] = {
    'none': None,
    'block': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_name(remat: str | bool) -> str:
  """The policy name of ``remat`` (a name of :data:`REMAT_POLICIES`, or a bool)."""
  if isinstance(remat, bool):
    return 'block' if remat else 'none'
  if remat not in REMAT_POLICIES:
    raise ValueError(f'remat={remat!r}: expected one of {list(REMAT_POLICIES)} (or a bool)')
  return remat


@functools.cache
def rematerialized(fn: Callable, remat: str | bool) -> Callable:
  """``fn`` (a function of a module and arrays) under the policy ``remat``: ``fn`` itself for
  ``'none'``, else ``nnx.remat(fn, policy=...)``. Cached, so a model builds each wrapper once."""
  name = remat_name(remat)
  if name == 'none':
    return fn
  # No graph updates: the frozen weights of a functional step come from jit's trace, not
  # the gradient's, and nothing in a block mutates its module.
  return nnx.remat(fn, policy=REMAT_POLICIES[name], graph_updates=False)
