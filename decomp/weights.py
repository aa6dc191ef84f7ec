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
entries of :data:`WEIGHTS`: the paper's (``sft``, ``cl``) and its ablations, distillation
(``kd``), and the field's objectives (``listnet``, ``listmle``, ``ranknet``, ``lambdaloss``,
``margin_mse``, ``hard_infonce``), which read the score ``s = z_y`` (``score='sft'``:
``z_y - z_n``). Labels are relevance grades: SFT, CL and the paper's weights treat a grade > 0 as
a positive; the listwise weights read the grades. Derivations: ``paper_notes.md`` sections 3-4
and "The field's objectives as weights".

(Over 400 lines: every built-in weight stands beside the registry that names it, so one file
answers what W is for each name; the field's weights share the paper's InfoNCE and teacher code.)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from decomp import _lists, _params
from decomp import directions as directions_lib
from decomp import losses as losses_lib
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


def _check_alpha(weight: str, value) -> None:
  _number(weight, 'alpha', value)


def _check_choice(key: str, choices) -> Callable[[str, Any], None]:
  def check(weight: str, value) -> None:
    if not isinstance(value, str) or value not in choices:
      raise ValueError(f"weight {weight!r}: {key} must be one of {sorted(choices)}, got "
                       f"{value!r}")
  return check


# The score a listwise weight reads: 'cl' the yes-logit z_y (as CL), 'sft' the margin z_y - z_n
# (the logit of SFT's P(yes)). The directions' own score functions: one definition of each.
WEIGHT_SCORES = {"cl": directions_lib.cl, "sft": directions_lib.sft}

PARAMETER_CHECKS = {'temperature': _check_temperature, 'tau': _check_tau, 'alpha': _check_alpha,
                    'score': _check_choice('score', WEIGHT_SCORES),
                    'lambdaweight': _check_choice('lambdaweight', losses_lib.LAMBDAWEIGHTS)}
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
  that document, and vanishes once it is classified confidently. Graded labels: any grade > 0 is
  a positive (the grade's size is not read).

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
  Graded labels: any grade > 0 is a positive (the grade's size is not read).

  >>> import jax.numpy as jnp
  >>> r = Readout(yes=jnp.zeros(3), no=jnp.zeros(3))
  >>> cl(r, jnp.array([1, 0, 0])).round(4).tolist()
  [-0.6667, 0.3333, 0.3333]
  """
  _check_temperature('cl', temperature)
  docs = _lists.doc_mask(labels, where)
  return _infonce(_lists.masked(readout.yes, docs), labels, docs, temperature, 0.0)


def _infonce(scores, labels, docs, temperature, neg_log_weight) -> Array:
  """InfoNCE's weights on ``scores`` with the negatives' terms ``e^{s_j/tau}`` multiplied by the
  constants ``e^{neg_log_weight}`` (0: plain InfoNCE)."""
  pos, neg = _lists.positives(labels, docs), _lists.negatives(labels, docs)
  logits = scores / temperature
  neg_logits = logits + neg_log_weight
  log_neg, has_neg = _lists.masked_logsumexp(neg_logits, neg)
  # sigmoid(log N - s_p) = N / (e^{s_p} + N): the share of the negatives in p's denominator.
  neg_share = jnp.where(pos & has_neg, jax.nn.sigmoid(log_neg - logits), 0.0)
  w_pos = -neg_share
  # e^{s_j} / (e^{s_p} + N) = e^{s_j - log N} * N / (e^{s_p} + N), summed over positives p.
  w_neg = jnp.exp(jnp.where(neg, neg_logits - log_neg, -jnp.inf)) * jnp.sum(neg_share, -1,
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
  teacher = _teacher(readout, labels, 'kd')
  docs = _lists.doc_mask(labels, where)
  log_p = _lists.masked_log_softmax(_lists.masked(readout.yes, docs) / temperature, docs)
  log_q = _lists.masked_log_softmax(_lists.masked(teacher, docs) / temperature, docs)
  p, q = jnp.exp(log_p), jnp.exp(log_q)
  return _lists.masked((p - q) / temperature, docs)


def _teacher(readout: Readout, labels, weight: str) -> Array:
  """The teacher's scores ``readout.extra_scores['teacher']``, checked to be there and shaped
  like the labels."""
  extra = readout.extra_scores or {}
  if "teacher" not in extra or extra["teacher"] is None:
    raise ValueError(
        f"weight {weight!r} needs the teacher's scores as readout.extra_scores['teacher'] "
        "([..., n]; e.g. FlagEmbedding's pos_scores/neg_scores, Group.teacher_scores), found "
        f"{sorted(extra) or 'no extra scores'}")
  teacher = extra["teacher"]
  if jnp.shape(teacher) != jnp.shape(labels):
    raise ValueError(f"weight {weight!r}: teacher scores have shape {jnp.shape(teacher)}, the "
                     f"labels {jnp.shape(labels)}")
  return teacher


def _score(readout: Readout, weight: str, score: str) -> Array:
  """The per-document score a listwise weight reads (:data:`WEIGHT_SCORES`)."""
  PARAMETER_CHECKS['score'](weight, score)
  return WEIGHT_SCORES[score](readout)


# --- the field's objectives as weights ----------------------------------------------------------
# Each returns W_i = dL/ds_i of its loss in decomp.losses, on the score s it reads (``score``:
# 'cl', s = z_y by default; 'sft', s = z_y - z_n). Paired with the direction of the same score
# (D_CL for 'cl', D_SFT for 'sft'), url_loss has exactly that loss's gradient. Derivations:
# paper_notes.md, section "The field's objectives as weights".


def listnet(readout: Readout, labels, *, where=None, score: str = "cl") -> Array:
  r"""ListNet's weight: :math:`W_i = p_i - q_i`, the softmax of the scores minus the labels'
  distribution (:func:`~decomp.losses.listnet_loss`).

  :math:`p = \mathrm{softmax}(s)`, :math:`q_i = y_i / \sum_j y_j` over the list's valid
  documents: graded labels share the target among the positives. With one positive it is CL's
  weight (InfoNCE is ListNet on a one-hot target); with several, CL leaves the other positives out
  of each positive's denominator, ListNet shares one target among them.

  >>> import jax.numpy as jnp
  >>> r = Readout(yes=jnp.zeros(3), no=jnp.zeros(3))
  >>> listnet(r, jnp.array([2, 1, 0])).round(4).tolist()  # p = 1/3 each, q = (2/3, 1/3, 0)
  [-0.3333, 0.0, 0.3333]
  """
  docs = _lists.doc_mask(labels, where)
  s = _lists.masked(_score(readout, "listnet", score), docs)
  p = jnp.exp(_lists.masked_log_softmax(s, docs))
  grades = _lists.masked(jnp.asarray(labels, s.dtype), docs)
  q = grades / jnp.maximum(jnp.sum(grades, -1, keepdims=True), 1e-30)
  return _lists.masked(p - q, docs)


def listmle(readout: Readout, labels, *, where=None, score: str = "cl") -> Array:
  r"""ListMLE's weight (:func:`~decomp.losses.listmle_loss`):

  .. math:: W_j = -1 + \sum_{i:\, j \succeq i} \frac{e^{s_j}}{\sum_{k \succeq i} e^{s_k}}

  where :math:`k \succeq i` means document :math:`k` comes at or after :math:`i` in the labels'
  order (grade descending, ties in list order): document :math:`j`'s softmax share in every
  Plackett-Luce step that can still pick it, minus the one step that does. The first document
  in the order gets :math:`-(1 - p_1)`; a list's weights sum to 0.

  >>> import jax.numpy as jnp
  >>> r = Readout(yes=jnp.zeros(2), no=jnp.zeros(2))
  >>> listmle(r, jnp.array([1, 0])).tolist()
  [-0.5, 0.5]
  """
  docs = _lists.doc_mask(labels, where)
  s = _lists.masked(_score(readout, "listmle", score), docs)
  follows = losses_lib.listmle_follows(labels, docs)
  suffix, _ = _lists.masked_logsumexp(jnp.broadcast_to(s[..., None, :], follows.shape), follows)
  share = jnp.where(follows, jnp.exp(jnp.where(follows, s[..., None, :] - suffix, 0.0)), 0.0)
  return _lists.masked(jnp.sum(share, -2) - 1.0, docs)


def _pairwise_logistic(readout, labels, where, weight: str, score: str, lambdaweight: str):
  r""":math:`W_i = -\sum_{j:\, y_i > y_j} \lambda_{ij} \sigma(s_j - s_i)
  + \sum_{j:\, y_j > y_i} \lambda_{ji} \sigma(s_i - s_j)`."""
  PARAMETER_CHECKS['lambdaweight'](weight, lambdaweight)
  docs = _lists.doc_mask(labels, where)
  s = _lists.masked(_score(readout, weight, score), docs)
  y = _lists.masked(jnp.asarray(labels, s.dtype), docs)
  ordered = (y[..., :, None] > y[..., None, :]) & docs[..., :, None] & docs[..., None, :]
  pair_weight = losses_lib.lambdaweights(s, labels, docs, lambdaweight)
  # d/ds_i log(1 + e^{-(s_i - s_j)}) = -sigmoid(s_j - s_i); the lower-graded j gets the opposite.
  push = jnp.where(ordered, pair_weight * jax.nn.sigmoid(s[..., None, :] - s[..., :, None]), 0.0)
  return _lists.masked(jnp.sum(push, -2) - jnp.sum(push, -1), docs)


def ranknet(readout: Readout, labels, *, where=None, score: str = "cl") -> Array:
  r"""RankNet's weight, the pairwise logistic loss's (:func:`~decomp.losses.lambda_loss` with
  ``lambdaweight='none'``): each document pushed by the sum of its misordering probabilities,

  .. math:: W_i = -\sum_{j:\, y_i > y_j} \sigma(s_j - s_i) + \sum_{j:\, y_j > y_i}
            \sigma(s_i - s_j).

  With one positive and k negatives the positive's |W| grows with k (one term per negative) and
  each negative's is SFT-like, :math:`\sigma(s_j - s_+)`: relative to the positive, not to 0.

  >>> import jax.numpy as jnp
  >>> r = Readout(yes=jnp.zeros(3), no=jnp.zeros(3))
  >>> ranknet(r, jnp.array([1, 0, 0])).tolist()
  [-1.0, 0.5, 0.5]
  """
  return _pairwise_logistic(readout, labels, where, "ranknet", score, "none")


def lambdaloss(readout: Readout, labels, *, where=None, score: str = "cl",
               lambdaweight: str = "dcg") -> Array:
  r"""LambdaLoss's weight: RankNet's, each pair's term scaled by :math:`\lambda_{ij}`
  (:func:`~decomp.losses.lambdaweights`: by default the change in DCG of swapping the pair at
  the current ranking, ``'dcg'``; ``'labeldiff'``: the grade difference; ``'none'``: RankNet).

  .. math:: W_i = -\sum_{j:\, y_i > y_j} \lambda_{ij}\sigma(s_j - s_i)
            + \sum_{j:\, y_j > y_i} \lambda_{ji}\sigma(s_i - s_j)

  The pairs near the top of the ranking weigh most: a negative ranked above the positive is
  pushed more than one far below it, beyond what the sigmoid alone gives.
  """
  return _pairwise_logistic(readout, labels, where, "lambdaloss", score, lambdaweight)


def margin_mse(readout: Readout, labels, *, where=None, score: str = "cl") -> Array:
  r"""MarginMSE's weight (:func:`~decomp.losses.margin_mse_loss`): with
  :math:`e_{pj} = (s_p - s_j) - (t_p - t_j)` the error of the margin of positive :math:`p` over
  negative :math:`j` against the teacher's (``readout.extra_scores['teacher']``),

  .. math:: W_p = \frac{2}{|P||N|} \sum_{j \in N} e_{pj}, \qquad
            W_j = -\frac{2}{|P||N|} \sum_{p \in P} e_{pj}.

  Signed by the error, not by the label: a positive already ahead of a negative by more than the
  teacher's margin is pushed *down*. The weights of a list sum to 0.

  >>> import jax.numpy as jnp
  >>> r = Readout(yes=jnp.zeros(2), no=jnp.zeros(2), extra_scores={"teacher": jnp.array([3.0, 0.0])})
  >>> margin_mse(r, jnp.array([1, 0])).tolist()  # margin 0 against the teacher's 3
  [-6.0, 6.0]
  """
  teacher = _teacher(readout, labels, 'margin_mse')
  docs = _lists.doc_mask(labels, where)
  s = _lists.masked(_score(readout, "margin_mse", score), docs)
  pairs, count = losses_lib.margin_pairs(labels, docs)
  error = losses_lib.margin_errors(s, teacher, docs)
  push = jnp.where(pairs, 2.0 * error / count[..., None, None], 0.0)
  return _lists.masked(jnp.sum(push, -1) - jnp.sum(push, -2), docs)


def hard_infonce(readout: Readout, labels, *, where=None, alpha: float = 1.0,
                 temperature: float = 1.0, score: str = "cl") -> Array:
  r"""Hardness-weighted InfoNCE's weight (LLaVE; :func:`~decomp.losses.hard_infonce_loss`):
  CL's weight with each negative's term multiplied by :math:`w_j = e^{\alpha\,\mathrm{sg}(s_j)}`,

  .. math:: W_p = -\frac{1}{\tau}\frac{N_w}{e^{s_p/\tau} + N_w}, \qquad
            W_j = \frac{1}{\tau}\sum_{p} \frac{w_j e^{s_j/\tau}}{e^{s_p/\tau} + N_w}, \qquad
            N_w = \sum_{j \in neg} w_j e^{s_j/\tau}.

  The push on the negatives concentrates on those the model scores highest, more sharply than
  CL's softmax; ``alpha=0`` is exactly :func:`cl`.

  >>> import jax.numpy as jnp
  >>> r = Readout(yes=jnp.array([0.0, 1.0, -1.0]), no=jnp.zeros(3))
  >>> bool(jnp.allclose(hard_infonce(r, jnp.array([1, 0, 0]), alpha=0.0), cl(r, jnp.array([1, 0, 0]))))
  True
  """
  _check_temperature('hard_infonce', temperature)
  _check_alpha('hard_infonce', alpha)
  docs = _lists.doc_mask(labels, where)
  s = _lists.masked(_score(readout, "hard_infonce", score), docs)
  return _infonce(s, labels, docs, temperature, alpha * s)


def listnet_readout_loss(readout: Readout, labels, *, where=None, score: str = "cl") -> Array:
  """:func:`~decomp.losses.listnet_loss` on the score ``score`` reads: ``listnet``'s loss."""
  return losses_lib.listnet_loss(_score(readout, "listnet", score), labels, where=where)


def listmle_readout_loss(readout: Readout, labels, *, where=None, score: str = "cl") -> Array:
  """:func:`~decomp.losses.listmle_loss` on the score ``score`` reads: ``listmle``'s loss."""
  return losses_lib.listmle_loss(_score(readout, "listmle", score), labels, where=where)


def ranknet_readout_loss(readout: Readout, labels, *, where=None, score: str = "cl") -> Array:
  """:func:`~decomp.losses.lambda_loss` without pair weights: ``ranknet``'s loss."""
  return losses_lib.lambda_loss(_score(readout, "ranknet", score), labels, where=where,
                                lambdaweight="none")


def lambdaloss_readout_loss(readout: Readout, labels, *, where=None, score: str = "cl",
                            lambdaweight: str = "dcg") -> Array:
  """:func:`~decomp.losses.lambda_loss`: ``lambdaloss``'s loss."""
  return losses_lib.lambda_loss(_score(readout, "lambdaloss", score), labels, where=where,
                                lambdaweight=lambdaweight)


def margin_mse_readout_loss(readout: Readout, labels, *, where=None, score: str = "cl") -> Array:
  """:func:`~decomp.losses.margin_mse_loss` against ``extra_scores['teacher']``."""
  return losses_lib.margin_mse_loss(_score(readout, "margin_mse", score),
                                    _teacher(readout, labels, 'margin_mse'), labels, where=where)


def hard_infonce_readout_loss(readout: Readout, labels, *, where=None, alpha: float = 1.0,
                              temperature: float = 1.0, score: str = "cl") -> Array:
  """:func:`~decomp.losses.hard_infonce_loss`: ``hard_infonce``'s loss."""
  return losses_lib.hard_infonce_loss(_score(readout, "hard_infonce", score), labels,
                                      where=where, alpha=alpha, temperature=temperature)


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
    # The field's objectives (sentence-transformers' CrossEncoder losses, rax, LLaVE).
    "listnet": Weight(listnet, loss=listnet_readout_loss),
    "listmle": Weight(listmle, loss=listmle_readout_loss),
    "ranknet": Weight(ranknet, loss=ranknet_readout_loss),
    "lambdaloss": Weight(lambdaloss, loss=lambdaloss_readout_loss),
    "margin_mse": Weight(margin_mse, loss=margin_mse_readout_loss, needs={"teacher"}),
    "hard_infonce": Weight(hard_infonce, loss=hard_infonce_readout_loss),
}
