r"""Per-document update magnitudes: the numbers the trainer logs and the figures are made of.

For document :math:`i` with hidden state :math:`h_i`, a (weight, direction) pair moves
:math:`h_i` by :math:`W_i \nabla_h f_D(h_i)`, so its size is

.. math::
   u_i = |W_i| \cdot \lVert \nabla_h f_D(h_i) \rVert .

For the paper's directions the norm is a property of the LM head alone
(:math:`\lVert M_y - M_n \rVert` for SFT, :math:`\lVert M_y \rVert` for CL); for richer ones
(vocabulary log-probability, learned projection) it is computed by autodiff of the direction at
:math:`h`, through a ``readout_fn`` that maps hidden states to a readout.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from decomp import _lists
from decomp.objectives import resolve_direction, resolve_weight
from decomp.readout import Readout, check_label_rows, readout_from_label_rows

Array = Any


def label_readout_fn(label_rows, label_pooling: str = "first") -> Callable[[Array], Readout]:
  """``h -> Readout`` from the LM-head rows ``[K >= 2, d]`` of the label tokens (yes first, no
  second; more pooled as ``label_pooling`` says, :func:`decomp.readout.pool_label_logits`).

  Only ``yes``/``no``/``hidden`` are recomputed from ``h``; a direction that needs more (the
  vocabulary log-normaliser, a projection score) must be given its own ``readout_fn`` (a
  reranker's is ``Reranker.readout_from_hidden``).
  """
  rows = check_label_rows(label_rows)
  return lambda hidden: readout_from_label_rows(hidden, rows, pooling=label_pooling)


def diagnostics(readout: Readout, labels, *, weight, direction, label_rows=None, readout_fn=None,
                where=None) -> dict[str, Array]:
  """Signed weights, direction norms and update magnitudes per document, with per-list totals.

  Args:
    readout: the model's readout with ``hidden`` ``[..., n, d]`` set.
    labels: ``[..., n]`` 1 for positives, 0 for negatives.
    weight: a weight name or callable (as for ``url_loss``).
    direction: a direction name or callable.
    label_rows: ``[K, d]`` LM-head rows of the label tokens (yes, no, ...); used to build
      ``readout_fn`` when that is not given.
    readout_fn: ``hidden [..., n, d] -> Readout``, the map from hidden state to readout; needed
      for directions that read more than the label logits.
    where: optional ``[..., n]`` boolean mask.

  Returns:
    ``weight``, ``direction_norm``, ``update`` (``|weight| * direction_norm``), each ``[..., n]``
    (0 for documents that do not take part), and per-list ``[...]`` sums ``pos_weight``,
    ``neg_weight`` (of ``|W|``), ``pos_update``, ``neg_update``.

  >>> import jax.numpy as jnp
  >>> rows = jnp.array([[3.0, 4.0], [0.0, 0.0]])           # M_y, M_n
  >>> h = jnp.zeros((1, 2, 2))
  >>> r = Readout(yes=jnp.zeros((1, 2)), no=jnp.zeros((1, 2)), hidden=h)
  >>> d = diagnostics(r, jnp.array([[1, 0]]), weight="sft", direction="cl", label_rows=rows)
  >>> d["direction_norm"].tolist(), d["update"].tolist()  # ||M_y|| = 5, |W| = 0.5
  ([[5.0, 5.0]], [[2.5, 2.5]])
  """
  if readout.hidden is None:
    raise ValueError("diagnostics needs readout.hidden [..., n, d] (the hidden states at the "
                     "answer position)")
  if readout_fn is None:
    if label_rows is None:
      raise ValueError("diagnostics needs label_rows (LM-head rows of the label tokens) or a "
                       "readout_fn mapping hidden states to a Readout")
    readout_fn = label_readout_fn(label_rows)
  weight_fn, direction_fn = resolve_weight(weight), resolve_direction(direction)
  docs = _lists.doc_mask(labels, where)
  pos, neg = _lists.positives(labels, docs), _lists.negatives(labels, docs)
  hidden = jax.lax.stop_gradient(readout.hidden).astype(jnp.float32)
  signed_weight = jax.lax.stop_gradient(weight_fn(readout, labels, where=where))
  signed_weight = _lists.masked(signed_weight.astype(jnp.float32), docs)
  # Each f_D(h_i) depends on h_i alone, so the gradient of the sum is every document's own.
  grad_h = jax.grad(lambda h: jnp.sum(direction_fn(readout_fn(h))))(hidden)
  direction_norm = _lists.masked(jnp.linalg.norm(grad_h, axis=-1), docs)
  update = jnp.abs(signed_weight) * direction_norm
  magnitude = jnp.abs(signed_weight)
  return {
      "weight": signed_weight,
      "direction_norm": direction_norm,
      "update": update,
      "pos_weight": jnp.sum(_lists.masked(magnitude, pos), axis=-1),
      "neg_weight": jnp.sum(_lists.masked(magnitude, neg), axis=-1),
      "pos_update": jnp.sum(_lists.masked(update, pos), axis=-1),
      "neg_update": jnp.sum(_lists.masked(update, neg), axis=-1),
  }
