r"""Direction functions: where each document is pushed.

A direction is a per-document *score function* :math:`f_D(x_i)`; its gradient (with respect to the
hidden state, or to any parameter upstream) is the direction :math:`D`. ``decomp.url_loss``
multiplies it by a stop-gradient weight, so the update is :math:`\sum_i W_i \nabla f_D(x_i)`.

Every function here follows :class:`Direction`: ``fn(readout) -> [..., n]``, reading whatever it
needs from the :class:`~decomp.Readout` (two logits for the paper's directions; the vocabulary
log-normaliser, the hidden state or a model-computed score for richer ones). Built-ins are listed
in :data:`DIRECTIONS`. A direction must be per-document: :math:`f_D(x_i)` may depend only on
document :math:`i`'s own readout.
"""

from __future__ import annotations

from typing import Any, Protocol

from decomp.readout import Readout

Array = Any


class Direction(Protocol):
  """Per-document score ``[..., n]`` whose gradient is the update direction."""

  def __call__(self, readout: Readout) -> Array:
    ...


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
    "sft": sft,
    "cl": cl,
    "cl_logprob": cl_logprob,
    "projection": projection,
}
