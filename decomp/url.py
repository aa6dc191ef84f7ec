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

from typing import Any

import jax.numpy as jnp

from decomp.losses import cl_loss  # noqa: F401  (the doctests compare against it)
# The surrogate and name resolution live with the objectives; url_loss is their array-level face.
from decomp.objectives import resolve_direction, resolve_weight, url_surrogate  # noqa: F401
from decomp.readout import Readout

Array = Any


def url_loss(yes_logits, no_logits, labels, *, weight, direction, where=None, reduce_fn=jnp.mean,
             log_normalizer=None, extra_scores=None) -> Array:
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
      ``"tau_mask"``, ``"one_plus_sft"``, ``"cl_rescaled"``, or one registered in code), an
      import path ``"package.module:attribute"``, a :class:`~decomp.weights.Weight` or a function
      ``(readout, labels, *, where) -> [..., n]`` of signed weights.
    direction: a name in ``decomp.directions.DIRECTIONS`` (``"sft"``, ``"cl"``,
      ``"cl_logprob"``, ``"projection"``, or registered), an import path, a
      :class:`~decomp.directions.Direction` or a function ``(readout) -> [..., n]``.
    where: optional ``[..., n]`` boolean mask of valid documents.
    reduce_fn: reduction over lists (mean over lists with a positive); ``None`` returns the
      per-document surrogate terms.
    log_normalizer: optional ``[..., n]`` full-vocabulary log-sum-exp (for ``"cl_logprob"``).
    extra_scores: optional mapping of further per-document scores (``"projection"``,
      ``"teacher"``).

  Returns:
    The surrogate (scalar), or per-document terms when ``reduce_fn is None``.

  Reference: Dai et al., arXiv:2510.14824 (2025), Sec. 3.3 (Unified Reranking Loss).

  >>> import jax, jax.numpy as jnp
  >>> yes, no, labels = jnp.array([[1.0, 0.5, -1.0]]), jnp.array([[0.0, 0.2, 0.3]]), jnp.array([[1, 0, 0]])
  >>> g_url = jax.grad(url_loss)(yes, no, labels, weight="cl", direction="cl")
  >>> bool(jnp.allclose(g_url, jax.grad(cl_loss)(yes, labels)))
  True
  """
  readout = Readout(yes=yes_logits, no=no_logits, log_normalizer=log_normalizer,
                    extra_scores=extra_scores)
  return url_surrogate(readout, labels, weight=weight, direction=direction, where=where,
                       reduce_fn=reduce_fn)
