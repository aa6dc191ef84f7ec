"""Shared rules for lists of documents: input checks, which lists take part, safe reduction.

One rule for every loss, weight and direction in decomp, so their reductions agree and the
weight x direction surrogate has exactly the gradient of the loss it decomposes:

* labels are relevance grades >= 0: a grade > 0 is a positive, 0 a negative (SFT, CL and the
  paper's weights read only that; the listwise weights read the grades); negative or non-finite
  labels are refused by name;
* a document takes part iff ``where`` is True for it (``where=None`` means all do);
* a list takes part iff it has at least one valid positive (``labels > 0``). A list without a
  positive is not a reranking instance (there is nothing to rank above the negatives): it
  contributes 0 to every loss and is left out of the mean over lists. The data pipeline rejects
  such lists eagerly (``check_has_positive``); inside ``jit`` they are masked out explicitly,
  never turned into NaN.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = Any
ReduceFn = Callable[..., Array]


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def check_inputs(fn: str, labels, where, **arrays) -> None:
  """Raises a clear error for mismatched shapes, a non-boolean mask or labels that are not
  relevance grades (negative or non-finite; any grade > 0 is a positive).

  Shape and dtype checks are static and run under ``jit`` too; the label-value check needs
  concrete values and runs only eagerly (a trainer checks its batches on the host with
  :func:`binary_labels` before they reach ``jit``).
  """
  labels_shape = jnp.shape(labels)
  if len(labels_shape) < 1:
    raise ValueError(f"{fn}: labels must be shaped [..., list_size], got a scalar")
  if labels_shape[-1] == 0:
    raise ValueError(f"{fn}: the lists are empty (labels shape {tuple(labels_shape)}); a list "
                     "needs at least one document")
  for name, value in arrays.items():
    if value is None:
      continue
    if jnp.shape(value) != labels_shape:
      raise ValueError(
          f"{fn}: {name} has shape {tuple(jnp.shape(value))} but labels has shape "
          f"{tuple(labels_shape)}; every per-document array must be [..., list_size]")
    if not jnp.issubdtype(jnp.result_type(value), jnp.floating):
      raise TypeError(f"{fn}: {name} must be floating point, got {jnp.result_type(value)}")
  if where is not None:
    if jnp.shape(where) != labels_shape:
      raise ValueError(
          f"{fn}: where has shape {tuple(jnp.shape(where))} but labels has shape "
          f"{tuple(labels_shape)}")
    if jnp.result_type(where) != jnp.bool_:
      raise TypeError(f"{fn}: where must be a boolean mask, got dtype {jnp.result_type(where)}")
  if _is_concrete(labels):
    values = np.unique(np.asarray(labels, np.float64))
    for problem, bad in (("non-finite", values[~np.isfinite(values)]),
                         ("negative", values[values < 0])):
      if bad.size:
        raise ValueError(f"{fn}: labels must be relevance grades >= 0 (0 for a negative, > 0 "
                         f"for a positive); found {problem} labels {bad.tolist()[:5]}")


def relevance_labels(labels, where=None, *, context: str = "") -> np.ndarray:
  """Host check of a batch's labels before it enters ``jit``: ``int32`` grades ``[..., n]``.

  Valid documents (``where``) must carry non-negative integer relevance grades (0 a negative;
  1, 2, 3, ... a positive, as BEIR qrels grade them). The grades are kept: SFT, CL and the
  paper's weights read ``labels > 0`` as a positive, the listwise weights (``listnet``,
  ``listmle``, ``ranknet``, ``lambdaloss``) read the grades. Padded documents are set to 0.
  Raises ValueError naming the first bad entry.

  >>> relevance_labels(np.array([[2, 0, 1]])).tolist()
  [[2, 0, 1]]
  """
  labels = np.asarray(labels)
  valid = np.ones(labels.shape, bool) if where is None else np.asarray(where, bool)
  if labels.ndim < 1 or labels.shape[-1] == 0:
    raise ValueError(f"{context}labels must be shaped [..., list_size] with list_size >= 1, got "
                     f"shape {labels.shape}")
  numeric = labels.astype(np.float64) if labels.dtype.kind in "biuf" else None
  if numeric is None:
    raise ValueError(f"{context}labels must be numbers, got dtype {labels.dtype}")
  bad = valid & ~(np.isfinite(numeric) & (numeric >= 0) & (numeric == np.round(numeric)))
  if bad.any():
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(f"{context}label {labels[first].item():g} at {first} is not a relevance grade "
                     "(0 for a negative, an integer >= 1 for a positive)")
  return np.where(valid, numeric, 0).astype(np.int32)


def check_has_positive(labels, where=None, *, context: str = "") -> None:
  """Eager check used by data pipelines: every list has at least one valid positive."""
  labels = np.asarray(labels)
  valid = np.ones(labels.shape, bool) if where is None else np.asarray(where, bool)
  has_pos = np.any(valid & (labels > 0), axis=-1)
  if not np.all(has_pos):
    first = tuple(int(i) for i in np.argwhere(~has_pos)[0])
    raise ValueError(f"{context}group {first} has no positive document (a reranking group "
                     "needs at least one)")


def doc_mask(labels, where) -> Array:
  """``[..., n]`` True for the documents that take part (valid, in a list with a positive)."""
  if jnp.shape(labels)[-1:] == (0,):  # static: a clear error instead of a 0-size reduction
    raise ValueError(f"the lists are empty (labels shape {tuple(jnp.shape(labels))}); a list "
                     "needs at least one document")
  valid = jnp.ones(jnp.shape(labels), bool) if where is None else where
  return valid & list_mask(labels, where)[..., None]


def list_mask(labels, where) -> Array:
  """``[...]`` True for lists that take part: at least one valid positive."""
  valid = jnp.ones(jnp.shape(labels), bool) if where is None else where
  return jnp.any(valid & (labels > 0), axis=-1)


def positives(labels, mask) -> Array:
  return mask & (labels > 0)


def negatives(labels, mask) -> Array:
  return mask & (labels <= 0)


def masked(x, mask, fill=0.0) -> Array:
  """``x`` where ``mask``, else ``fill``; keeps padded entries (even NaN/inf) out of the math."""
  return jnp.where(mask, x, jnp.asarray(fill, dtype=jnp.result_type(x)))


def masked_logsumexp(x, mask, axis: int = -1) -> tuple[Array, Array]:
  """log-sum-exp over ``mask``ed entries with finite values and gradients everywhere.

  Returns ``(lse, any)`` with ``keepdims``; where no entry is valid, ``lse`` is 0 and ``any`` is
  False (callers gate on ``any``: an empty sum is handled explicitly, not through -inf).
  """
  any_valid = jnp.any(mask, axis=axis, keepdims=True)
  x = masked(x, mask)
  shift = jax.lax.stop_gradient(jnp.max(jnp.where(mask, x, -jnp.inf), axis=axis, keepdims=True))
  shift = jnp.where(any_valid, shift, 0.0)
  total = jnp.sum(jnp.where(mask, jnp.exp(x - shift), 0.0), axis=axis, keepdims=True)
  lse = jnp.log(jnp.where(any_valid, total, 1.0)) + shift
  return jnp.where(any_valid, lse, 0.0), any_valid


def masked_log_softmax(x, mask, axis: int = -1) -> Array:
  """log-softmax over the ``mask``ed entries (0 elsewhere); finite values and gradients, also
  for a row without any valid entry."""
  lse, _ = masked_logsumexp(x, mask, axis=axis)
  return masked(x - lse, mask)


def reduce_lists(per_list, list_valid, reduce_fn: ReduceFn | None) -> Array:
  """Reduces per-list values over all leading axes, counting only the lists that take part.

  ``jnp.mean`` is the mean over valid lists (0 when none is valid, with zero gradients rather
  than 0/0); any other ``reduce_fn`` must accept ``where=`` like the jnp reductions.
  """
  per_list = masked(per_list, list_valid)
  if reduce_fn is None:
    return per_list
  if reduce_fn is jnp.mean:
    count = jnp.sum(list_valid)
    return jnp.sum(per_list) / jnp.maximum(count, 1).astype(per_list.dtype)
  return reduce_fn(per_list, where=list_valid)
