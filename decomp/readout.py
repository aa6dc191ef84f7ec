"""The reranker's readout: what the losses, weights and directions of decomp read.

A reranker scores a list of ``n`` documents per query. Everything the math core needs is a handful
of per-document arrays; a model produces them once per step and every loss, weight, direction and
diagnostic reads the same :class:`Readout`.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax

Array = Any

# How the logits of K >= 2 label tokens become (yes, no); see :func:`pool_label_logits`.
LABEL_POOLINGS = ("first", "pairs")
# Where the K label rows come from: 'lm_head', the LM head's rows of the label tokens (M_y, M_n);
# 'random', a fresh learnable K x d matrix (rows ~ N(0, 1/d)) that replaces them in every score,
# weight and direction (the paper's D_Rand: no label token is read at all).
LABEL_HEADS = ("lm_head", "random")
# Readout fields an objective may need beyond the two label logits; a model computes each only
# when asked (the log-normaliser costs a full-vocabulary matmul, the projection a parameter).
# 'teacher' is not the model's: the trainer passes the data's teacher scores through.
READOUT_NEEDS = ("log_normalizer", "projection", "hidden", "teacher")


class Readout(NamedTuple):
  """Per-document outputs of a yes/no reranker (a pytree, so it passes through ``jax.jit``).

  Attributes:
    yes: ``[..., n]`` logit of the "yes" label token at the answer position, ``z_y = M_y . h``
      (with several positive label words pooled: their log-sum-exp, :func:`pool_label_logits`).
    no: ``[..., n]`` logit of the "no" label token, ``z_n = M_n . h`` (pooled likewise).
    log_normalizer: optional ``[..., n]`` log-sum-exp of the logits over the whole vocabulary;
      needed only by directions that read a vocabulary log-probability (``cl_logprob``).
    hidden: optional ``[..., n, d]`` final hidden state ``h`` at the answer position.
    extra_scores: optional mapping name -> ``[..., n]`` further per-document scores: the model's
      (``"projection"``, a learnable random projection of ``h`` used as direction) or the data's
      (``"teacher"``, a teacher's scores for distillation).
  """

  yes: Array
  no: Array
  log_normalizer: Array | None = None
  hidden: Array | None = None
  extra_scores: Mapping[str, Array] | None = None


def pool_label_logits(logits: Array, pooling: str = "first") -> tuple[Array, Array]:
  r"""``[..., K]`` label-token logits -> ``(yes, no)``, each ``[...]``.

  ``'first'``: :math:`z_y` = the first label's logit, :math:`z_n` = the second's (further labels
  are not pooled). ``'pairs'``: the label words alternate positive and negative (yes, no, true,
  false, ...), and each side is the log-sum-exp of its words' logits,

  .. math:: z_y = \log \sum_{j \text{ even}} e^{z_j}, \qquad
            z_n = \log \sum_{j \text{ odd}} e^{z_j},

  so :math:`\sigma(z_y - z_n)` is the probability mass of the positive words among all label
  words (the paper's "2 to 16 label tokens" ablation) and :math:`\nabla_h z_y` is the
  softmax-weighted mix of the positive words' LM-head rows. With one pair both poolings agree.

  >>> import jax.numpy as jnp
  >>> yes, no = pool_label_logits(jnp.array([0.0, 1.0, 0.0, 1.0]), "pairs")
  >>> float(yes - no)  # log 2 - (1 + log 2)
  -1.0
  """
  if pooling not in LABEL_POOLINGS:
    raise ValueError(f"unknown label pooling {pooling!r}; known: {LABEL_POOLINGS}")
  k = logits.shape[-1]
  if k < 2:
    raise ValueError(f"need at least two label logits (yes, no), got {k}")
  if pooling == "first" or k == 2:
    return logits[..., 0], logits[..., 1]
  if k % 2:
    raise ValueError(f"label pooling 'pairs' needs positive/negative word pairs, got {k} labels")
  return (jax.nn.logsumexp(logits[..., 0::2], axis=-1),
          jax.nn.logsumexp(logits[..., 1::2], axis=-1))


def check_label_rows(label_rows: Array) -> Array:
  """``label_rows`` as an array, checked to be ``[K >= 2, d]`` (yes row, no row, ...)."""
  import jax.numpy as jnp
  rows = jnp.asarray(label_rows)
  if rows.ndim != 2 or rows.shape[0] < 2:
    raise ValueError(f"label_rows must be [K >= 2, d] (yes row, no row, ...), got {rows.shape}")
  return rows


def readout_from_label_rows(hidden: Array, label_rows: Array, *, pooling: str = "first",
                            log_normalizer: Array | None = None,
                            projection: Array | None = None) -> Readout:
  r"""The readout of hidden states ``h [..., d]`` under label rows ``[K >= 2, d]``.

  The one map from an answer-position hidden state to what the math core reads: label logits
  :math:`h \cdot M_k` (float32 accumulation) pooled into ``yes``/``no``
  (:func:`pool_label_logits`), the optional log-normaliser (already computed from ``h`` by the
  caller, who owns the vocabulary) and, given a projection vector ``r [d]``,
  ``extra_scores["projection"] = h . r``.

  >>> import jax.numpy as jnp
  >>> r = readout_from_label_rows(jnp.array([[1.0, 2.0]]), jnp.array([[1.0, 0.0], [0.0, 1.0]]))
  >>> r.yes.tolist(), r.no.tolist()
  ([1.0], [2.0])
  """
  import jax.numpy as jnp
  rows = check_label_rows(label_rows)
  logits = jnp.einsum("...d,kd->...k", hidden, rows.astype(hidden.dtype),
                      preferred_element_type=jnp.float32)
  extra = None
  if projection is not None:
    extra = {"projection": jnp.einsum("...d,d->...", hidden.astype(jnp.float32),
                                      jnp.asarray(projection).astype(jnp.float32))}
  yes, no = pool_label_logits(logits, pooling)
  return Readout(yes=yes, no=no, log_normalizer=log_normalizer, hidden=hidden, extra_scores=extra)
