r"""The unified reranking loss (URL): one weight joined with one direction.

.. math::
   L_{URL} = \mathrm{reduce}_{lists} \sum_i \mathrm{sg}(W_i)\, f_D(x_i)

``sg`` is ``jax.lax.stop_gradient``. Its value is a surrogate (not a loss to read); its gradient
with respect to *anything upstream* (logits, hidden states, every model parameter) is
:math:`\sum_i W_i \nabla f_D(x_i)`. Because SFT's loss depends on the parameters only through
:math:`f_{SFT} = z_y - z_n` and CL's only through :math:`f_{CL} = z_y`, the pairs
(``"sft"``, ``"sft"``) and (``"cl"``, ``"cl"``) reproduce the gradients of :func:`sft_loss` and
:func:`cl_loss` exactly; swapped pairs are the paper's probing hybrids.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from decomp import _lists
from decomp import directions as directions_lib
from decomp import weights as weights_lib
from decomp.losses import cl_loss  # noqa: F401  (the doctests compare against it)
from decomp.readout import Readout

Array = Any


def resolve_weight(weight: str | Callable[..., Array], **params) -> weights_lib.Weight:
  """A weight function from a built-in name (see ``decomp.weights.WEIGHTS``) or a callable.

  Keyword ``params`` (e.g. ``temperature=0.05``, ``tau=0.1``) are bound to it.
  """
  fn = _resolve(weight, weights_lib.WEIGHTS, "weight")
  return functools.partial(fn, **params) if params else fn


def resolve_direction(direction: str | Callable[..., Array], **params) -> directions_lib.Direction:
  """A direction function from a built-in name (``decomp.directions.DIRECTIONS``) or a callable."""
  fn = _resolve(direction, directions_lib.DIRECTIONS, "direction")
  return functools.partial(fn, **params) if params else fn


def _resolve(spec, table: dict, kind: str):
  if isinstance(spec, str):
    if spec not in table:
      raise ValueError(f"unknown {kind} {spec!r}; built-in {kind}s are {sorted(table)}, or pass "
                       "a callable")
    return table[spec]
  if callable(spec):
    return spec
  raise TypeError(f"{kind} must be a built-in name or a callable, got {type(spec).__name__}")


def url_surrogate(readout: Readout, labels, *, weight, direction, where=None,
                  reduce_fn=jnp.mean) -> Array:
  """:func:`url_loss` on a :class:`~decomp.Readout` (what a model's ``readout`` returns).

  Args:
    readout: per-document readout, arrays ``[..., n]``.
    labels: ``[..., n]`` 1 for positives, 0 for negatives.
    weight: a built-in weight name or a :class:`~decomp.weights.Weight` callable.
    direction: a built-in direction name or a :class:`~decomp.directions.Direction` callable.
    where: optional ``[..., n]`` boolean mask of valid documents.
    reduce_fn: reduction over lists; ``None`` returns the per-document terms
      ``sg(W_i) f_D(x_i)`` ``[..., n]``.
  """
  weight_fn, direction_fn = resolve_weight(weight), resolve_direction(direction)
  _lists.check_inputs("url_loss", labels, where, yes_logits=readout.yes, no_logits=readout.no)
  docs = _lists.doc_mask(labels, where)
  signed_weight = jax.lax.stop_gradient(weight_fn(readout, labels, where=where))
  score = direction_fn(readout)
  for name, value in (("weight", signed_weight), ("direction", score)):
    if jnp.shape(value) != jnp.shape(labels):
      raise ValueError(f"url_loss: the {name} function returned shape {jnp.shape(value)}, "
                       f"expected the labels' shape {jnp.shape(labels)}")
  terms = _lists.masked(signed_weight * _lists.masked(score, docs), docs)
  if reduce_fn is None:
    return terms
  return _lists.reduce_lists(jnp.sum(terms, axis=-1), _lists.list_mask(labels, where), reduce_fn)


def url_loss(yes_logits, no_logits, labels, *, weight, direction, where=None, reduce_fn=jnp.mean,
             log_normalizer=None, hidden=None, extra_scores=None) -> Array:
  r"""The unified reranking loss: ``weight`` of one objective x ``direction`` of another.

  .. math::
     L_{URL} = \mathrm{reduce}_{lists} \sum_i \mathrm{sg}(W_i)\, f_D(x_i), \qquad
     \nabla L_{URL} = \mathrm{reduce}_{lists} \sum_i W_i \nabla f_D(x_i)

  The value is a surrogate (its gradient is what matters); for the pure pairs (``"sft"``,
  ``"sft"``) and (``"cl"``, ``"cl"``) the gradient equals that of :func:`~decomp.sft_loss` /
  :func:`~decomp.cl_loss` with respect to every upstream quantity.

  Args:
    yes_logits: ``[..., n]`` "yes" logits.
    no_logits: ``[..., n]`` "no" logits.
    labels: ``[..., n]`` 1 for positives, 0 for negatives.
    weight: a name in ``decomp.weights.WEIGHTS`` (``"sft"``, ``"cl"``, ``"constant"``,
      ``"tau_mask"``, ``"one_plus_sft"``, ``"cl_rescaled"``, ``"kd"``: reads
      ``extra_scores["teacher"]``) or a callable
      ``(readout, labels, *, where) -> [..., n]`` of signed weights.
    direction: a name in ``decomp.directions.DIRECTIONS`` (``"sft"``, ``"cl"``,
      ``"cl_logprob"``, ``"projection"``) or a callable ``(readout) -> [..., n]``.
    where: optional ``[..., n]`` boolean mask of valid documents.
    reduce_fn: reduction over lists (mean over lists with a positive); ``None`` returns the
      per-document surrogate terms.
    log_normalizer: optional ``[..., n]`` full-vocabulary log-sum-exp (for ``"cl_logprob"``).
    hidden: optional ``[..., n, d]`` hidden states (for directions that read ``h``).
    extra_scores: optional mapping of further per-document scores (e.g. ``"projection"``).

  Returns:
    The surrogate (scalar), or per-document terms when ``reduce_fn is None``.

  Reference: Dai et al., arXiv:2510.14824 (2025), Sec. 3.3 (Unified Reranking Loss).

  >>> import jax, jax.numpy as jnp
  >>> yes, no, labels = jnp.array([[1.0, 0.5, -1.0]]), jnp.array([[0.0, 0.2, 0.3]]), jnp.array([[1, 0, 0]])
  >>> g_url = jax.grad(url_loss)(yes, no, labels, weight="cl", direction="cl")
  >>> bool(jnp.allclose(g_url, jax.grad(cl_loss)(yes, labels)))
  True
  """
  readout = Readout(yes=yes_logits, no=no_logits, log_normalizer=log_normalizer, hidden=hidden,
                    extra_scores=extra_scores)
  return url_surrogate(readout, labels, weight=weight, direction=direction, where=where,
                       reduce_fn=reduce_fn)
