r"""Weight functions: how hard each document is pushed.

A weight function maps a :class:`~decomp.Readout` and labels to the *signed* per-document weight
:math:`W_i = \partial L / \partial f_i`, the derivative of the weight's own loss with respect to
that loss's own per-document score, evaluated on the current readout. Negative for positives (their
score goes up under gradient descent), positive for negatives, 0 for documents that do not take
part. The training surrogate multiplies ``stop_gradient(W_i)`` by a direction's score
:math:`f_D(x_i)` (``decomp.url_loss``), so these functions are never differentiated through.

Every function here follows one protocol (:class:`Weight`) and has the signature
``fn(readout, labels, *, where=None, **params) -> [..., n]``. Parameters are bound with
``functools.partial`` or ``decomp.resolve_weight(name, **params)``. Built-ins are listed in
:data:`WEIGHTS`. Derivations: ``paper_notes.md`` sections 3-4.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp

from decomp import _lists
from decomp.readout import Readout

Array = Any


class Weight(Protocol):
  """Signed per-document weights ``[..., n]`` (treated as constants by ``url_loss``)."""

  def __call__(self, readout: Readout, labels: Array, *, where: Array | None = None) -> Array:
    ...


def _sign(labels, docs):
  """-1 for positives, +1 for negatives, 0 for documents that do not take part."""
  return jnp.where(docs, jnp.where(labels > 0, -1.0, 1.0), 0.0)


def sft(readout: Readout, labels, *, where=None) -> Array:
  r"""SFT's weight: :math:`W^+ = -(1 - s)` for a positive, :math:`W^- = s` for a negative.

  :math:`s = \sigma(z_y - z_n)` is the document's own yes-probability: the weight depends only on
  that document, and vanishes once it is classified confidently.

  >>> import jax.numpy as jnp
  >>> r = Readout(yes=jnp.array([0.0, 0.0]), no=jnp.array([0.0, 0.0]))
  >>> sft(r, jnp.array([1, 0])).tolist()
  [-0.5, 0.5]
  """
  docs = _lists.doc_mask(labels, where)
  margin = _lists.masked(readout.yes - readout.no, docs)
  # sigmoid(f) - 1 == -sigmoid(-f), computed without cancellation.
  weight = jnp.where(labels > 0, -jax.nn.sigmoid(-margin), jax.nn.sigmoid(margin))
  return _lists.masked(weight, docs)


def cl(readout: Readout, labels, *, where=None, temperature: float = 1.0) -> Array:
  r"""CL's (InfoNCE's) weight on the yes-logit, one InfoNCE term per positive.

  With :math:`s_i = z_y(h_i)/\tau` and :math:`N = \sum_{j \in neg} e^{s_j}`:
  :math:`W_p = -\frac{1}{\tau} \frac{N}{e^{s_p} + N}` for a positive and
  :math:`W_j = \frac{1}{\tau} \sum_{p \in pos} \frac{e^{s_j}}{e^{s_p} + N}` for a negative. The
  denominator couples the whole list: the weight shrinks as the list gets easier *as a whole*.

  >>> import jax.numpy as jnp
  >>> r = Readout(yes=jnp.zeros(3), no=jnp.zeros(3))
  >>> cl(r, jnp.array([1, 0, 0])).round(4).tolist()
  [-0.6667, 0.3333, 0.3333]
  """
  docs = _lists.doc_mask(labels, where)
  pos, neg = _lists.positives(labels, docs), _lists.negatives(labels, docs)
  scores = _lists.masked(readout.yes, docs) / temperature
  log_neg, has_neg = _lists.masked_logsumexp(scores, neg)
  # sigmoid(log N - s_p) = N / (e^{s_p} + N): the share of the negatives in p's denominator.
  neg_share = jnp.where(pos & has_neg, jax.nn.sigmoid(log_neg - scores), 0.0)
  w_pos = -neg_share
  # e^{s_j} / (e^{s_p} + N) = e^{s_j - log N} * N / (e^{s_p} + N), summed over positives p.
  w_neg = jnp.exp(jnp.where(neg, scores - log_neg, -jnp.inf)) * jnp.sum(neg_share, -1,
                                                                         keepdims=True)
  return _lists.masked(jnp.where(labels > 0, w_pos, w_neg) / temperature, docs)


def constant(readout: Readout, labels, *, where=None) -> Array:
  """The paper's :math:`W_{base} = 1`: every document pushed equally (sign only)."""
  del readout
  return _sign(labels, _lists.doc_mask(labels, where))


def tau_mask(readout: Readout, labels, *, where=None, tau: float = 0.1) -> Array:
  r"""Constant weight, zeroed once a document is learned.

  Learned means, with the SFT probability :math:`s = \sigma(z_y - z_n)`: :math:`s > 1 - \tau`
  for a positive, :math:`s < \tau` for a negative. The paper's "W=1 with a tau mask" ablation:
  a hard, per-document schedule instead of SFT's smooth one.
  """
  docs = _lists.doc_mask(labels, where)
  prob = jax.nn.sigmoid(_lists.masked(readout.yes - readout.no, docs))
  learned = jnp.where(labels > 0, prob > 1.0 - tau, prob < tau)
  return jnp.where(learned, 0.0, _sign(labels, docs))


def one_plus_sft(readout: Readout, labels, *, where=None) -> Array:
  """:math:`W = 1 + |W_{SFT}|` with SFT's sign: a floor of 1 plus SFT's schedule."""
  docs = _lists.doc_mask(labels, where)
  return _sign(labels, docs) * (1.0 + jnp.abs(sft(readout, labels, where=where)))


def cl_rescaled(readout: Readout, labels, *, where=None, temperature: float = 1.0) -> Array:
  r"""CL's weight rescaled per list so that its total magnitude equals SFT's.

  :math:`W_i = W^{CL}_i \cdot \sum_j |W^{SFT}_j| / \sum_j |W^{CL}_j|`: CL's *shape* (how the push
  is shared among a list's documents) with SFT's *scale* (how much push the list gets in total).
  Separates the two explanations of SFT's advantage that the paper leaves open.
  """
  w_cl = cl(readout, labels, where=where, temperature=temperature)
  w_sft = sft(readout, labels, where=where)
  cl_total = jnp.sum(jnp.abs(w_cl), axis=-1, keepdims=True)
  sft_total = jnp.sum(jnp.abs(w_sft), axis=-1, keepdims=True)
  scale = jnp.where(cl_total > 0, sft_total / jnp.where(cl_total > 0, cl_total, 1.0), 0.0)
  return w_cl * scale


def kd(readout: Readout, labels, *, where=None, temperature: float = 1.0) -> Array:
  r"""Listwise distillation's weight: the gradient of KL(teacher || student) on the yes-logit.

  With :math:`p = \mathrm{softmax}(z_y / \tau)` and :math:`q = \mathrm{softmax}(t / \tau)` over
  the list's valid documents, :math:`t` the teacher's scores ``readout.extra_scores["teacher"]``,

  .. math:: W_{KD,i} = \frac{1}{\tau} (p_i - q_i)
            = \frac{\partial}{\partial z_{y,i}} \mathrm{KL}(q \,\|\, p)

  (no :math:`\tau^2` rescaling: exactly the gradient of :func:`decomp.losses.kd_loss`; derivation
  in ``paper_notes.md``). Paired with the ``'cl'`` direction (:math:`f = z_y`), ``url_loss``
  reproduces ``kd_loss``'s gradient. The weights of a list sum to 0: documents the student
  over-rates (:math:`p_i > q_i`) are pushed down, the others up. Labels only decide which lists
  take part (those with a valid positive, as for every weight); they do not enter the weight.

  >>> import jax.numpy as jnp
  >>> r = Readout(yes=jnp.zeros(2), no=jnp.zeros(2),
  ...             extra_scores={"teacher": jnp.array([jnp.log(3.0), 0.0])})
  >>> kd(r, jnp.array([1, 0])).round(4).tolist()  # p = (1/2, 1/2), q = (3/4, 1/4)
  [-0.25, 0.25]
  """
  extra = readout.extra_scores or {}
  if "teacher" not in extra or extra["teacher"] is None:
    raise ValueError(
        "weight 'kd' needs the teacher's scores as readout.extra_scores['teacher'] ([..., n]; "
        "e.g. FlagEmbedding's pos_scores/neg_scores, Group.teacher_scores), found "
        f"{sorted(extra) or 'no extra scores'}")
  teacher = extra["teacher"]
  if jnp.shape(teacher) != jnp.shape(labels):
    raise ValueError(f"weight 'kd': teacher scores have shape {jnp.shape(teacher)}, the labels "
                     f"{jnp.shape(labels)}")
  docs = _lists.doc_mask(labels, where)
  log_p = _lists.masked_log_softmax(_lists.masked(readout.yes, docs) / temperature, docs)
  log_q = _lists.masked_log_softmax(_lists.masked(teacher, docs) / temperature, docs)
  p, q = jnp.exp(log_p), jnp.exp(log_q)
  return _lists.masked((p - q) / temperature, docs)


WEIGHTS: dict[str, Weight] = {
    "sft": sft,
    "cl": cl,
    "constant": constant,
    "tau_mask": tau_mask,
    "one_plus_sft": one_plus_sft,
    "cl_rescaled": cl_rescaled,
    "kd": kd,
}
