r"""Lists of any length on a fixed memory: the URL surrogate's exact gradient, chunk by chunk.

The surrogate of :func:`decomp.url_surrogate` is
:math:`L = R\big(\sum_i \mathrm{sg}(W_i) f_D(x_i)\big)` with :math:`R` the reduction over lists.
The weights are constants and each :math:`f_D(x_i)` depends on document :math:`i` alone, so

.. math::
   \nabla_\theta L = \sum_i c_i \nabla_\theta f_D(x_i), \qquad
   c_i = \frac{\partial L}{\partial f_D(x_i)}
       = W_i\, [i \text{ takes part}]\, \frac{\partial R}{\partial \ell_{b(i)}},

a sum over documents. Every :math:`c_i` is known once the list's readout is (one forward pass,
no activations kept), and the sum can then be accumulated chunk by chunk, recomputing each
chunk's forward. This is GradCache (Gao et al., 2021) for a reranker, where only the
per-document scores couple a list. :func:`chunked_value_and_grad` does it in three steps:

1. the forward over all documents, ``doc_chunk`` at a time (``lax.map``), keeping only the
   :class:`~decomp.Readout` ``[B, n]``;
2. the weights of every document on its whole list, and the cotangents :math:`c_i`, both from
   :func:`decomp.url_surrogate` itself on that readout (so masks, lists without a positive and the
   reduction follow exactly its rules, not a re-derivation);
3. a ``lax.scan`` over chunks whose carry is only the gradient accumulator: each step recomputes
   one chunk's forward and adds :math:`\nabla_\theta \sum_{i \in chunk} c_i f_D(x_i)`.

Nothing is differentiated *through* a loop, so no residuals of other chunks exist to be kept and
no ``jax.checkpoint`` is needed: peak memory is one chunk's activations (plus the inputs, the
``[B, n]`` readout and two gradient-sized buffers). The cost is one extra forward pass.

:func:`accumulate_grads` adds gradient accumulation over micro-batches of groups whose mean over
lists is the whole batch's, so it equals the large batch.

Reference: Dai et al., arXiv:2510.14824 (2025), Sec. 3.3; Gao et al., "Scaling Deep Contrastive
Learning Batch Size under Memory Limited Setup", RepL4NLP 2021 (GradCache).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from decomp import _lists
from decomp.readout import Readout
from decomp.url import resolve_direction, resolve_weight, url_surrogate

Array = Any
# ``(params, docs) -> Readout``: ``docs`` leaves ``[B, c, ...]``, the readout's arrays ``[B, c]``.
ReadoutFn = Callable[[Any, Any], Readout]


class SurrogateGrad(NamedTuple):
  """What one (chunked) evaluation of the URL surrogate returns.

  Attributes:
    value: the surrogate's value (a scalar), exactly ``url_surrogate`` on the full readout.
    grads: its gradient with respect to ``params`` (same tree and dtypes).
    readout: the full-list :class:`~decomp.Readout` ``[B, n]``, stop-gradient (for logging).
    signed_weight: ``[B, n]`` every document's weight on its whole list (stop-gradient).
  """

  value: Array
  grads: Any
  readout: Readout
  signed_weight: Array


def check_doc_chunk(doc_chunk, list_size: int) -> int:
  """``doc_chunk`` as an int, or a clear error naming it and its valid values.

  ``0`` means no chunking (one forward and backward over the whole list); ``1..list_size`` is
  the number of documents per chunk. A size that does not divide the list moves the last chunk
  back to end at the list's end (:func:`_chunk_starts`).
  """
  valid = f"0 (no chunking) or 1..{list_size} (documents per chunk, at most the list size)"
  if isinstance(doc_chunk, (bool, np.bool_)) or not isinstance(doc_chunk, (int, np.integer)):
    raise TypeError(f"doc_chunk must be an integer, {valid}; got {doc_chunk!r}")
  doc_chunk = int(doc_chunk)
  if doc_chunk < 0 or doc_chunk > list_size:
    raise ValueError(f"doc_chunk={doc_chunk} is invalid for lists of {list_size} documents; "
                     f"valid values: {valid}")
  return doc_chunk


def _check_docs(docs, labels) -> None:
  """Every leaf of ``docs`` is ``[*labels.shape, ...]``."""
  shape = tuple(jnp.shape(labels))
  if len(shape) < 1:
    raise ValueError("labels must be shaped [..., list_size], got a scalar")
  for path, leaf in jax.tree_util.tree_leaves_with_path(docs):
    if tuple(jnp.shape(leaf))[:len(shape)] != shape:
      raise ValueError(
          f"docs{jax.tree_util.keystr(path)} has shape {tuple(jnp.shape(leaf))}; every "
          f"per-document input must start with the labels' shape {shape} ([B, n, ...])")


def _chunk_starts(n: int, doc_chunk: int) -> tuple[np.ndarray, np.ndarray]:
  """Chunk ``i`` reads documents ``[start_i, start_i + doc_chunk)`` and adds those ``>= i*c``.

  ``start_i = min(i * doc_chunk, n - doc_chunk)``: when ``doc_chunk`` does not divide ``n`` the
  last chunk is moved back to end at ``n`` instead of being padded, and its documents already
  counted by the chunk before are masked out of it. No input is copied or padded: each chunk is
  a ``dynamic_slice`` of the caller's arrays.
  """
  firsts = np.arange(0, n, doc_chunk, dtype=np.int32)
  return np.minimum(firsts, n - doc_chunk), firsts


def _slice_docs(tree, axis: int, start, doc_chunk: int):
  return jax.tree.map(
      lambda x: jax.lax.dynamic_slice_in_dim(jnp.asarray(x), start, doc_chunk, axis=axis), tree)


def _assemble(tree, axis: int, n: int):
  """Stacked chunk outputs ``[k, ..., c, ...]`` -> ``[..., n, ...]`` (see :func:`_chunk_starts`)."""

  def one(x):
    k, c = x.shape[0], x.shape[axis + 1]
    x = jnp.moveaxis(x, 0, axis)
    x = x.reshape(x.shape[:axis] + (k * c,) + x.shape[axis + 2:])
    # Chunks 0..k-2 hold documents [0, (k-1)c); the last one holds [n-c, n), of which the
    # documents from (k-1)c on are new.
    head = jax.lax.slice_in_dim(x, 0, (k - 1) * c, axis=axis)
    tail = jax.lax.slice_in_dim(x, k * c - (n - (k - 1) * c), k * c, axis=axis)
    return jnp.concatenate([head, tail], axis=axis)

  return jax.tree.map(one, tree)


def _accumulator_dtype(x):
  # Sums of many chunks' gradients: at least float32 even for low-precision parameters.
  return jnp.promote_types(jnp.result_type(x), jnp.float32)


def _score_cotangents(readout, labels, *, weight_fn, direction_fn, where, reduce_fn):
  """``(value, signed_weight, c)``: url_surrogate's value and its gradient in each ``f_D(x_i)``.

  ``url_surrogate`` is evaluated with the direction replaced by the scores themselves, so the
  cotangent carries its masks and reduction exactly.
  """
  signed_weight = jax.lax.stop_gradient(weight_fn(readout, labels, where=where))
  scores = jax.lax.stop_gradient(direction_fn(readout))

  def of_scores(s):
    return url_surrogate(readout, labels, weight=lambda *_, **__: signed_weight,
                         direction=lambda _: s, where=where, reduce_fn=reduce_fn)

  value, cotangent = jax.value_and_grad(of_scores)(scores)
  return value, signed_weight, cotangent


def chunked_value_and_grad(readout_fn: ReadoutFn, params, docs, labels, *, weight, direction,
                           where=None, doc_chunk: int,
                           reduce_fn: _lists.ReduceFn = jnp.mean) -> SurrogateGrad:
  r"""Value and gradient of :func:`decomp.url_surrogate`, ``doc_chunk`` documents at a time.

  Equal (to rounding) to ``jax.value_and_grad`` of
  ``url_surrogate(readout_fn(params, docs), labels, ...)``, with the activations of only one
  chunk of documents alive at a time; see the module docstring for the two passes.

  Args:
    readout_fn: ``(params, docs_chunk) -> Readout``; maps per-document inputs ``[B, c, ...]`` to a
      readout ``[B, c]`` (``yes``, ``no`` and whatever the weight and direction read:
      ``log_normalizer``, ``extra_scores``; ``hidden`` ``[B, c, d]`` is kept if given). Each
      document's readout must depend on that document alone (and on ``params``), and be
      deterministic: the second pass must recompute what the first one read (no dropout, or
      the same random key for a chunk in both passes).
    params: the pytree differentiated.
    docs: pytree of per-document inputs, every leaf ``[B, n, ...]`` (``[*labels.shape, ...]``).
    labels: ``[B, n]`` 1 for positives, 0 for negatives.
    weight: a weight name (``decomp.weights.WEIGHTS``) or callable.
    direction: a direction name (``decomp.directions.DIRECTIONS``) or callable.
    where: optional ``[B, n]`` boolean mask of valid documents.
    doc_chunk: documents per chunk, ``1..n``; ``0`` runs the plain one-pass
      ``jax.value_and_grad`` (every document's activations at once, no extra forward). A size
      that does not divide ``n`` is allowed: the last chunk is moved back to end at ``n``, and
      the documents it shares with the chunk before are recomputed but masked out of it (they
      cost compute, never gradient). Inputs are sliced, never padded or copied.
    reduce_fn: the reduction over lists, as in ``url_surrogate`` (not ``None``: a scalar is
      differentiated).

  Returns:
    :class:`SurrogateGrad` ``(value, grads, readout, signed_weight)``.

  >>> import jax.numpy as jnp
  >>> from decomp import url_surrogate
  >>> fn = lambda p, d: Readout(yes=jnp.tanh(p * d["x"]), no=jnp.zeros(d["x"].shape))
  >>> docs, labels = {"x": jnp.array([[1.0, -2.0, 0.5]])}, jnp.array([[1, 0, 0]])
  >>> out = chunked_value_and_grad(fn, 0.3, docs, labels, weight="cl", direction="cl",
  ...                              doc_chunk=2)
  >>> one_pass = jax.grad(lambda p: url_surrogate(fn(p, docs), labels, weight="cl",
  ...                                             direction="cl"))(0.3)
  >>> bool(jnp.allclose(out.grads, one_pass)), out.signed_weight.shape
  (True, (1, 3))
  """
  weight_fn, direction_fn = resolve_weight(weight), resolve_direction(direction)
  if reduce_fn is None:
    raise ValueError("chunked_value_and_grad differentiates a scalar: reduce_fn must not be None")
  _check_docs(docs, labels)
  axis, n = jnp.ndim(labels) - 1, jnp.shape(labels)[-1]
  doc_chunk = check_doc_chunk(doc_chunk, n)
  if doc_chunk == 0:
    return _one_pass(readout_fn, params, docs, labels, weight_fn=weight_fn,
                     direction_fn=direction_fn, where=where, reduce_fn=reduce_fn)

  # Pass 1: the whole list's readout, chunk by chunk; nothing here is differentiated.
  starts, firsts = _chunk_starts(n, doc_chunk)
  chunk_readouts = jax.lax.map(
      lambda start: readout_fn(params, _slice_docs(docs, axis, start, doc_chunk)), starts)
  readout = jax.lax.stop_gradient(_assemble(chunk_readouts, axis, n))
  value, signed_weight, cotangent = _score_cotangents(
      readout, labels, weight_fn=weight_fn, direction_fn=direction_fn, where=where,
      reduce_fn=reduce_fn)

  # Pass 2: recompute each chunk and accumulate sum_i c_i grad f_D(x_i). Documents that do not
  # take part (and, in a moved-back last chunk, those counted already) are masked the way
  # url_surrogate masks its documents: jnp.where, so they contribute exactly zero.
  taking_part = _lists.doc_mask(labels, where)
  position_shape = (1,) * axis + (doc_chunk,)

  def add_chunk(total, chunk):
    start, first = chunk
    docs_c = _slice_docs(docs, axis, start, doc_chunk)
    cotangent_c = jax.lax.dynamic_slice_in_dim(cotangent, start, doc_chunk, axis=axis)
    new = (start + jnp.arange(doc_chunk) >= first).reshape(position_shape)
    counted = jax.lax.dynamic_slice_in_dim(taking_part, start, doc_chunk, axis=axis) & new

    def chunk_surrogate(p):
      scores = direction_fn(readout_fn(p, docs_c))
      return jnp.sum(_lists.masked(cotangent_c * _lists.masked(scores, counted), counted))

    grads = jax.grad(chunk_surrogate)(params)
    return jax.tree.map(lambda t, g: t + g.astype(t.dtype), total, grads), None

  zeros = jax.tree.map(lambda p: jnp.zeros_like(p, _accumulator_dtype(p)), params)
  total, _ = jax.lax.scan(add_chunk, zeros, (starts, firsts))
  grads = jax.tree.map(lambda t, p: t.astype(jnp.result_type(p)), total, params)
  return SurrogateGrad(value, grads, readout, signed_weight)


def _one_pass(readout_fn, params, docs, labels, *, weight_fn, direction_fn, where,
              reduce_fn) -> SurrogateGrad:
  """``doc_chunk=0``: plain ``jax.value_and_grad`` of ``url_surrogate`` (today's step)."""

  def surrogate(p):
    readout = readout_fn(p, docs)
    return url_surrogate(readout, labels, weight=weight_fn, direction=direction_fn, where=where,
                         reduce_fn=reduce_fn), readout

  (value, readout), grads = jax.value_and_grad(surrogate, has_aux=True)(params)
  readout = jax.lax.stop_gradient(readout)
  signed_weight = jax.lax.stop_gradient(weight_fn(readout, labels, where=where))
  return SurrogateGrad(value, grads, readout, signed_weight)


def check_micro_batches(micro_batches, batch_size: int) -> int:
  """``micro_batches`` as an int dividing the batch, or an error naming it and its valid values."""
  divisors = [d for d in range(1, batch_size + 1) if batch_size % d == 0]
  if (isinstance(micro_batches, (bool, np.bool_))
      or not isinstance(micro_batches, (int, np.integer))):
    raise TypeError(f"micro_batches must be an integer dividing the batch of {batch_size} "
                    f"groups ({divisors}); got {micro_batches!r}")
  if int(micro_batches) not in divisors:
    raise ValueError(f"micro_batches={micro_batches} must divide the batch of {batch_size} "
                     f"groups; valid values: {divisors}")
  return int(micro_batches)


def _split_groups(tree, micro_batches: int):
  """``[B, ...]`` -> ``[m, B/m, ...]``, micro-batch ``j`` holding groups ``j, j+m, j+2m, ...``.

  Strided rather than contiguous: with the group axis sharded in contiguous blocks over devices,
  every micro-batch then spreads over all of them.
  """
  return jax.tree.map(
      lambda x: jnp.swapaxes(x.reshape((-1, micro_batches) + x.shape[1:]), 0, 1), tree)


def _join_groups(tree):
  """Inverse of :func:`_split_groups`."""
  return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape((-1,) + x.shape[2:]), tree)


def accumulate_grads(readout_fn: ReadoutFn, params, docs, labels, *, weight, direction,
                     where=None, micro_batches: int, doc_chunk: int = 0,
                     reduce_fn: _lists.ReduceFn = jnp.mean) -> SurrogateGrad:
  r""":func:`chunked_value_and_grad` of a batch of groups, ``micro_batches`` parts at a time.

  The parts run one after the other (a ``lax.scan`` carrying the value and gradient sums), so
  only one part's activations (one chunk's, with ``doc_chunk``) are alive at a time. With the
  mean over lists, each part's per-list sums are divided by the *whole batch's* count of lists
  with a positive (known from the labels alone), so the sum over parts equals the one large
  batch even when parts hold different numbers of valid lists:

  .. math:: L = \frac{1}{|\{b: b \text{ has a positive}\}|} \sum_{parts} \sum_{b \in part} \ell_b .

  Exact for weights computed per list (every registered weight); a custom weight coupling
  different lists of the batch is not split correctly.

  Args:
    readout_fn, params, docs, labels, weight, direction, where, doc_chunk: as for
      :func:`chunked_value_and_grad`, with a batch axis ``B`` first (``labels`` ``[B, n]``).
    micro_batches: parts of the batch, dividing ``B``; part ``j`` holds groups ``j, j+m, ...``.
    reduce_fn: ``jnp.mean`` (mean over lists with a positive) or ``jnp.sum``; reductions that do
      not split into a sum over parts are refused.

  Returns:
    :class:`SurrogateGrad` for the whole batch (``readout``, ``signed_weight`` ``[B, n]`` in the
    batch's order).
  """
  if jnp.ndim(labels) != 2:
    raise ValueError(f"accumulate_grads: labels must be [B, n], got shape {jnp.shape(labels)}")
  _check_docs(docs, labels)
  batch_size, n = jnp.shape(labels)
  micro_batches = check_micro_batches(micro_batches, batch_size)
  doc_chunk = check_doc_chunk(doc_chunk, n)
  if where is None:
    where = jnp.ones(jnp.shape(labels), bool)
  if reduce_fn is jnp.mean:
    # Exactly reduce_lists's normaliser, for the whole batch.
    denominator = jnp.maximum(jnp.sum(_lists.list_mask(labels, where)), 1)
  elif reduce_fn is jnp.sum:
    denominator = 1
  else:
    raise ValueError("accumulate_grads: reduce_fn must be jnp.mean or jnp.sum (a reduction that "
                     f"splits into a sum over micro-batches), got {reduce_fn!r}")

  def part_reduce(per_list, where):
    return jnp.sum(per_list, where=where) / jnp.asarray(denominator, per_list.dtype)

  def add_part(carry, part):
    value_sum, grads_sum = carry
    docs_p, labels_p, where_p = part
    out = chunked_value_and_grad(readout_fn, params, docs_p, labels_p, weight=weight,
                                 direction=direction, where=where_p, doc_chunk=doc_chunk,
                                 reduce_fn=part_reduce)
    grads_sum = jax.tree.map(lambda t, g: t + g.astype(t.dtype), grads_sum, out.grads)
    return (value_sum + out.value, grads_sum), (out.readout, out.signed_weight)

  zeros = jax.tree.map(lambda p: jnp.zeros_like(p, _accumulator_dtype(p)), params)
  parts = _split_groups((docs, labels, where), micro_batches)
  value_zero = jnp.zeros((), jnp.result_type(float))
  (value, total), (readouts, signed_weights) = jax.lax.scan(add_part, (value_zero, zeros), parts)
  grads = jax.tree.map(lambda t, p: t.astype(jnp.result_type(p)), total, params)
  return SurrogateGrad(value, grads, _join_groups(readouts), _join_groups(signed_weights))
