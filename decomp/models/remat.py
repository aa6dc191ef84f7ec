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
import jax.numpy as jnp
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


def _tied_to_cotangent(pure: Callable, policy) -> Callable:
  """``jax.checkpoint(pure, policy=policy)`` whose recomputation waits for the cotangent.

  XLA's CPU compiler drops the optimisation barriers ``jax.checkpoint`` puts around the
  recomputation, then merges it with the forward pass (common-subexpression elimination): the
  program keeps every layer's intermediates as without remat (measured: the same temporary
  bytes). Here the backward pass adds ``0 * cotangent[0]`` to each saved activation before
  recomputing from it, so the recomputation cannot start before that layer's cotangent exists.
  ``x + 0 * c`` is ``x`` (a finite cotangent; a non-finite one makes the gradient non-finite
  anyway). The weights, inputs of the recomputation too, are read untouched.
  """
  checkpointed = jax.checkpoint(pure, policy=policy)

  def run(state, *args):
    # Per call: which residuals are weights (read as they are) is known while tracing fwd.
    weight_leaves: list[bool] = []

    @jax.custom_vjp
    def call(state, *args):
      return pure(state, *args)

    def fwd(state, *args):
      out, backward = jax.vjp(checkpointed, state, *args)
      weights = {id(leaf) for leaf in jax.tree.leaves(state)}
      weight_leaves[:] = [id(leaf) in weights for leaf in jax.tree.leaves(backward)]
      return out, backward

    def bwd(backward, cotangent):
      first = jax.tree.leaves(cotangent)[0].reshape(-1)[0]
      leaves, treedef = jax.tree.flatten(backward)
      tied = [leaf if weight or not jnp.issubdtype(leaf.dtype, jnp.floating)
              else leaf + (first * 0).astype(leaf.dtype)
              for leaf, weight in zip(leaves, weight_leaves)]
      return jax.tree.unflatten(treedef, tied)(cotangent)

    call.defvjp(fwd, bwd)
    return call(state, *args)

  return run


@functools.cache
def rematerialized(fn: Callable, remat: str | bool) -> Callable:
  """``fn`` (a function of a module and arrays) under the policy ``remat``: ``fn`` itself for
  ``'none'``, else the module's forward recomputed in the backward pass, keeping what the
  policy saves. Cached, so a model builds each wrapper once."""
  name = remat_name(remat)
  if name == 'none':
    return fn
  policy = REMAT_POLICIES[name]

  def wrapped(module, *args):
    graphdef, state = nnx.split(module)
    pure = lambda state, *args: fn(nnx.merge(graphdef, state), *args)
    return _tied_to_cotangent(pure, policy)(state, *args)

  return wrapped
