r"""Weight functions: how hard each document is pushed.

A weight function maps a :class:`~decomp.Readout` and labels to the *signed* per-document weight
:math:`W_i = \partial L / \partial f_i`, the derivative of the weight's own loss with respect to
that loss's own per-document score, evaluated on the current readout. Negative for positives (their
score goes up under gradient descent), positive for negatives, 0 for documents that do not take
part. The training surrogate multiplies ``stop_gradient(W_i)`` by a direction's score
:math:`f_D(x_i)` (``decomp.url_loss``), so these functions are never differentiated through.

Every function here has the signature ``fn(readout, labels, *, where=None, **params) -> [..., n]``
(:class:`WeightFn`). A :class:`Weight` wraps one with what training needs to know about it: the
plain loss it is the gradient of (logged as ``loss``), the readout fields it reads, and bound
parameters (``Weight.bind`` or ``decomp.resolve_weight(name, **params)``). Built-ins are the
entries of :data:`WEIGHTS`. Derivations: ``paper_notes.md`` sections 3-4.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from decomp import _lists, _params
from decomp.losses import cl_loss, kd_loss, sft_loss
from decomp.readout import READOUT_NEEDS, Readout

Array = Any


class WeightFn(Protocol):
  """Signed per-document weights ``[..., n]`` (treated as constants by ``url_loss``)."""

  def __call__(self, readout: Readout, labels: Array, *, where: Array | None = None) -> Array:
    ...


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: used as jax callables
class Weight:
  """A weight function and what an objective built on it needs to know.

  Attributes:
    fn: ``(readout, labels, *, where=None, **params) -> [..., n]`` signed weights.
    loss: ``(readout, labels, *, where=None, **params) -> scalar``: the plain loss whose gradient
      this weight is (SFT's, CL's); training logs it as ``loss``. None: the weight has no loss of
      its own (fine for ``url_loss``; training refuses it and says how to declare one).
    needs: readout fields beyond ``yes``/``no`` that ``fn`` reads (``'teacher'``, ...).
    params: keyword parameters bound to ``fn`` (and to ``loss``, where it accepts them).
    name: how configs and tables name it.
  """

  fn: Callable
  loss: Callable | None = None
  needs: frozenset = frozenset()
  params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  name: str = ""

  def __post_init__(self):
    if not callable(self.fn):
      raise TypeError(f"Weight.fn must be callable, got {type(self.fn).__name__}")
    unknown = sorted(set(self.needs) - set(READOUT_NEEDS))
    if unknown:
      raise ValueError(f"weight needs {unknown}: not readout fields; known: {READOUT_NEEDS}")
    object.__setattr__(self, "needs", frozenset(self.needs))
    object.__setattr__(self, "name", self.name or getattr(self.fn, "__name__", "weight"))

  def __call__(self, readout: Readout, labels: Array, *, where: Array | None = None) -> Array:
    return self.fn(readout, labels, where=where, **self.params)

  def bind(self, **params) -> "Weight":
    """A copy with ``params`` bound (refuses names ``fn`` does not take, and values a built-in
    refuses, e.g. ``temperature=0``: here, not as NaN later)."""
    _params.check("weight", self.name, self.fn, params)
    if getattr(self.fn, "__module__", None) == __name__:
      check_parameters(self.name, **params)
    return dataclasses.replace(self, params={**self.params, **params})

  def loss_value(self, readout: Readout, labels: Array, *, where: Array | None = None) -> Array:
    """The weight's own loss on ``readout`` (its bound parameters passed where accepted)."""
    if self.loss is None:
      raise ValueError(f"weight {self.name!r} declares no loss (Weight(fn, loss=...))")
    return self.loss(readout, labels, where=where, **_params.accepted(self.loss, self.params))


def sft_readout_loss(readout: Readout, labels, *, where=None) -> Array:
  """:func:`~decomp.sft_loss` on a readout: the loss of SFT's weight."""
  return sft_loss(readout.yes, readout.no, labels, where=where)


def cl_readout_loss(readout: Readout, labels, *, where=None, temperature: float = 1.0) -> Array:
  """:func:`~decomp.cl_loss` on a readout's yes-logits: the loss of CL's weight."""
  return cl_loss(readout.yes, labels, where=where, temperature=temperature)


def kd_readout_loss(readout: Readout, labels, *, where=None, temperature: float = 1.0) -> Array:
  """:func:`~decomp.kd_loss` of the yes-logits against ``extra_scores['teacher']``: the loss of
  the distillation weight."""
  teacher = (readout.extra_scores or {}).get("teacher")
  if teacher is None:
    raise ValueError("the kd loss needs the teacher's scores as readout.extra_scores['teacher']")
  return kd_loss(readout.yes, teacher, where=_lists.doc_mask(labels, where),
                 temperature=temperature)


def _number(weight: str, key: str, value) -> float | None:
  """``value`` as a float, None for a traced value (checked only when concrete)."""
  if isinstance(value, jax.core.Tracer):
    return None
  if isinstance(value, bool) or not (isinstance(value, (int, float, np.number))
                                     or (hasattr(value, 'shape') and np.ndim(value) == 0)):
    raise TypeError(f"weight {weight!r}: {key} must be a number, got {value!r}")
  number = float(value)
  if not math.isfinite(number):
    raise ValueError(f"weight {weight!r}: {key} must be finite, got {number}")
  return number


def _check_temperature(weight: str, value) -> None:
  number = _number(weight, 'temperature', value)
  if number is not None and number <= 0:  # as cl_loss: InfoNCE divides by it
    raise ValueError(f"weight {weight!r}: temperature must be > 0, got {number}")


def _check_tau(weight: str, value) -> None:
  number = _number(weight, 'tau', value)
  # A positive counts as learned once P(yes) > 1 - tau, a negative once P(yes) < tau: beyond
  # 0.5 misclassified documents would count as learned; at 0 nothing is ever masked.
  if number is not None and not 0 < number <= 0.5:
    raise ValueError(f"weight {weight!r}: tau must be in (0, 0.5], got {number} (a positive "
                     "counts as learned once P(yes) > 1 - tau, a negative once P(yes) < tau)")


PARAMETER_CHECKS = {'temperature': _check_temperature, 'tau': _check_tau}
"""Checks of the built-in weights' parameters, by parameter name (type and range)."""


def check_parameters(weight: str, **params) -> None:
  """Raises TypeError / ValueError for a parameter value the built-in ``weight`` refuses.

  >>> check_parameters('cl', temperature=0.0)
  Traceback (most recent call last):
  ValueError: weight 'cl': temperature must be > 0, got 0.0
  """
  for key, value in params.items():
    if key in PARAMETER_CHECKS:
      PARAMETER_CHECKS[key](weight, value)


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
  _check_temperature('cl', temperature)
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
  a hard, per-document schedule instead of SFT's smooth one. ``tau`` is in (0, 0.5].
  """
  _check_tau('tau_mask', tau)
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


# The built-in weights. Those without a loss of their own (schedules, rescalings) log the loss of
# the objective whose score they read: SFT's for the schedules on P(yes), CL's for rescaled CL.
WEIGHTS: dict[str, Weight] = {
    "sft": Weight(sft, loss=sft_readout_loss),
    "cl": Weight(cl, loss=cl_readout_loss),
    "constant": Weight(constant, loss=sft_readout_loss),
    "tau_mask": Weight(tau_mask, loss=sft_readout_loss),
    "one_plus_sft": Weight(one_plus_sft, loss=sft_readout_loss),
    "cl_rescaled": Weight(cl_rescaled, loss=cl_readout_loss),
    "kd": Weight(kd, loss=kd_readout_loss, needs={"teacher"}),
}
