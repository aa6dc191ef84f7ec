r"""Direction functions: where each document is pushed.

A direction is a per-document *score function* :math:`f_D(x_i)`; its gradient (with respect to the
hidden state, or to any parameter upstream) is the direction :math:`D`. ``decomp.url_loss``
multiplies it by a stop-gradient weight, so the update is :math:`\sum_i W_i \nabla f_D(x_i)`.

Every function here is a :class:`DirectionFn`: ``fn(readout) -> [..., n]``, reading whatever it
needs from the :class:`~decomp.Readout` (two logits for the paper's directions; the vocabulary
log-normaliser, the hidden state or a model-computed score for richer ones). A :class:`Direction`
wraps one with what it reads beyond the two logits (``needs``: the model computes the vocabulary
log-normaliser or a projection score only when asked) and the ranking score of a run trained
along it. Built-ins are the entries of :data:`DIRECTIONS`. A direction must be per-document:
:math:`f_D(x_i)` may depend only on document :math:`i`'s own readout.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Protocol

from decomp import _params
from decomp.readout import READOUT_NEEDS, Readout

Array = Any


class DirectionFn(Protocol):
  """Per-document score ``[..., n]`` whose gradient is the update direction."""

  def __call__(self, readout: Readout) -> Array:
    ...


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: used as jax callables
class Direction:
  """A direction function and what training needs to know about it.

  Attributes:
    fn: ``(readout, **params) -> [..., n]``, the per-document score whose gradient is D.
    score: the ranking score (a key of ``decomp.RANK_SCORES``: ``'sft'`` ranks by P(yes),
      ``'cl'`` by the yes-logit) of a run trained along this direction: the score it moves.
    needs: readout fields beyond ``yes``/``no`` it reads (:data:`decomp.readout.READOUT_NEEDS`).
    params: keyword parameters bound to ``fn``.
    name: how configs and tables name it.
  """

  fn: Callable
  score: str = "sft"
  needs: frozenset = frozenset()
  params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  name: str = ""

  def __post_init__(self):
    if not callable(self.fn):
      raise TypeError(f"Direction.fn must be callable, got {type(self.fn).__name__}")
    unknown = sorted(set(self.needs) - set(READOUT_NEEDS))
    if unknown:
      raise ValueError(f"direction needs {unknown}: not readout fields; known: {READOUT_NEEDS}")
    object.__setattr__(self, "needs", frozenset(self.needs))
    object.__setattr__(self, "name", self.name or getattr(self.fn, "__name__", "direction"))

  def __call__(self, readout: Readout) -> Array:
    return self.fn(readout, **self.params)

  def bind(self, **params) -> "Direction":
    """A copy with ``params`` bound (refuses names ``fn`` does not take)."""
    _params.check("direction", self.name, self.fn, params)
    return dataclasses.replace(self, params={**self.params, **params})


def sft(readout: Readout) -> Array:
  r""":math:`f = z_y - z_n`, so :math:`\nabla_h f = M_y - M_n` (the paper's :math:`D_{SFT}`).

  >>> import jax.numpy as jnp
  >>> sft(Readout(yes=jnp.array([2.0]), no=jnp.array([0.5]))).tolist()
  [1.5]
  """
  return readout.yes - readout.no


def cl(readout: Readout) -> Array:
  r""":math:`f = z_y`, so :math:`\nabla_h f = M_y` (the paper's :math:`D_{CL}`)."""
  return readout.yes


def cl_logprob(readout: Readout) -> Array:
  r""":math:`f = \log p(\text{yes}) = z_y - \log\sum_v e^{z_v}` over the whole vocabulary.

  :math:`\nabla_h f = M_y - \mathbb{E}_{v \sim p}[M_v]`: CL's direction with the generative
  model's normalisation. Needs ``readout.log_normalizer`` (``Reranker.readout(...,
  log_normalizer=True)``), which costs one full-vocabulary matmul at the answer position.
  """
  if readout.log_normalizer is None:
    raise ValueError(
        "direction 'cl_logprob' needs the vocabulary log-normaliser: pass log_normalizer= to "
        "url_loss (a model gives it with readout(..., log_normalizer=True))")
  return readout.yes - readout.log_normalizer


def projection(readout: Readout) -> Array:
  r""":math:`f = r \cdot h` for a learnable random vector :math:`r` that no score reads.

  The model owns :math:`r` and reports the score as ``readout.extra_scores["projection"]``
  (``Reranker(..., projection_direction=True)``). The weight and the ranking still read the
  label logits, so this is a control (it should not learn), not the paper's :math:`D_{Rand}`:
  that one replaces the label rows in every score (``Reranker(..., label_head="random")``).
  """
  extra = readout.extra_scores or {}
  if "projection" not in extra:
    raise ValueError(
        "direction 'projection' needs readout.extra_scores['projection'] (build the reranker "
        "with projection_direction=True, or pass extra_scores={'projection': r @ h})")
  return extra["projection"]


DIRECTIONS: dict[str, Direction] = {
    "sft": Direction(sft, score="sft"),
    "cl": Direction(cl, score="cl"),
    "cl_logprob": Direction(cl_logprob, score="cl", needs={"log_normalizer"}),
    # The projection is a control: the label logits still rank the run, as P(yes).
    "projection": Direction(projection, score="sft", needs={"projection"}),
}
