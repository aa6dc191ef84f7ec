"""The two reranking objectives the paper compares, as pure functions (rax conventions).

Both take per-document arrays shaped ``[..., list_size]``: leading axes are batch, the last axis
is the candidate list of one query (one or more positives, the rest negatives). ``where`` masks
padded documents. A list takes part iff it has at least one valid positive (see
``decomp._lists``); with ``reduce_fn=jnp.mean`` the result is the mean over the lists that take
part, and 0 (with zero gradients) when none does.

Labels are 0 (not relevant) or 1 (relevant); called eagerly, any other value raises
``ValueError``. Inside your own ``jax.jit`` the values are tracers and cannot be checked: a label
above 0 (say 0.7) then counts as a positive exactly like 1, and one at or below 0 (say -1) as a
negative, silently. Check labels on the host before ``jit`` (``decomp.train`` does).

Reference: Dai et al., "Supervised Fine-Tuning or Contrastive Learning? Towards Better Multimodal
LLM Reranking", arXiv:2510.14824 (2025), Sec. 3; derivations in ``paper_notes.md``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from decomp import _lists

Array = Any


def sft_loss(yes_logits, no_logits, labels, *, where=None, reduce_fn=jnp.mean):
  r"""Supervised fine-tuning loss: a yes/no classification per (query, document) pair.

  With :math:`f_i = z_y(h_i) - z_n(h_i)` and :math:`s_i = \sigma(f_i)`, the probability of "yes"
  in the two-way softmax over {yes, no}, each list contributes

  .. math::
     L_{SFT} = -\sum_{i \in pos} \log s_i - \sum_{j \in neg} \log (1 - s_j)

  (summed over the documents of the list, as in the paper), then ``reduce_fn`` over lists.

  Args:
    yes_logits: ``[..., n]`` logits of the "yes" token at the answer position.
    no_logits: ``[..., n]`` logits of the "no" token.
    labels: ``[..., n]`` 1 for relevant documents, 0 for the others (under ``jax.jit``: > 0
      positive, <= 0 negative, unchecked; see the module docstring).
    where: optional ``[..., n]`` boolean mask of valid documents.
    reduce_fn: reduction over lists (default mean over lists that take part). ``None`` returns the
      unreduced per-document terms ``[..., n]`` (0 for documents that do not take part).

  Returns:
    The loss (scalar), or per-document terms when ``reduce_fn is None``.

  >>> import jax.numpy as jnp
  >>> yes, no = jnp.array([[2.0, 0.0, 1.0]]), jnp.array([[0.0, 0.0, 1.0]])
  >>> float(sft_loss(yes, no, jnp.array([[1, 0, 0]])))  # -log s(2) - 2 log(1 - s(0))
  1.5132...
  """
  _lists.check_inputs("sft_loss", labels, where, yes_logits=yes_logits, no_logits=no_logits)
  docs = _lists.doc_mask(labels, where)
  margin = _lists.masked(yes_logits - no_logits, docs)
  per_doc = jnp.where(labels > 0, jax.nn.softplus(-margin), jax.nn.softplus(margin))
  per_doc = _lists.masked(per_doc, docs)
  if reduce_fn is None:
    return per_doc
  return _lists.reduce_lists(jnp.sum(per_doc, axis=-1), _lists.list_mask(labels, where),
                             reduce_fn)


def cl_loss(yes_logits, labels, *, where=None, temperature=1.0, reduce_fn=jnp.mean):
  r"""Contrastive (InfoNCE) loss over each list, scoring a document by its "yes" logit.

  With :math:`s_i = z_y(h_i) / \tau`, each positive :math:`p` of a list gives one InfoNCE term
  against all the list's negatives (other positives are *not* in its denominator), and the list's
  loss is the sum of those terms:

  .. math::
     L_{CL} = \sum_{p \in pos} -\log \frac{e^{s_p}}{e^{s_p} + \sum_{j \in neg} e^{s_j}}

  With one positive this is the paper's CL loss (:math:`\tau = 1`). A list without a valid
  positive contributes 0 and is left out of the mean (explicitly masked, never NaN); a list without
  negatives contributes 0 (nothing to contrast).

  Args:
    yes_logits: ``[..., n]`` logits of the "yes" token (the CL score).
    labels: ``[..., n]`` 1 for relevant documents, 0 for the others (under ``jax.jit``: > 0
      positive, <= 0 negative, unchecked; see the module docstring).
    where: optional ``[..., n]`` boolean mask of valid documents.
    temperature: the InfoNCE temperature :math:`\tau` (> 0).
    reduce_fn: reduction over lists; ``None`` returns the per-list losses ``[...]``.

  Returns:
    The loss (scalar), or per-list losses when ``reduce_fn is None``.

  >>> import jax.numpy as jnp
  >>> float(cl_loss(jnp.array([2.0, 1.0, 3.0]), jnp.array([1, 0, 0])))  # = rax.softmax_loss
  1.4076...
  """
  _lists.check_inputs("cl_loss", labels, where, yes_logits=yes_logits)
  if isinstance(temperature, (int, float)) and temperature <= 0:
    raise ValueError(f"cl_loss: temperature must be > 0, got {temperature}")
  docs = _lists.doc_mask(labels, where)
  pos, neg = _lists.positives(labels, docs), _lists.negatives(labels, docs)
  scores = _lists.masked(yes_logits, docs) / temperature
  log_neg, has_neg = _lists.masked_logsumexp(scores, neg)
  # -log(e^s_p / (e^s_p + N)) = softplus(log N - s_p): stable for logits of any magnitude.
  per_positive = jnp.where(pos & has_neg, jax.nn.softplus(log_neg - scores), 0.0)
  return _lists.reduce_lists(jnp.sum(per_positive, axis=-1), _lists.list_mask(labels, where),
                             reduce_fn)


def kd_loss(scores, teacher_scores, *, where=None, temperature=1.0, reduce_fn=jnp.mean):
  r"""Listwise distillation: KL divergence from the teacher's ranking distribution to the student's.

  With :math:`p = \mathrm{softmax}(s / \tau)` and :math:`q = \mathrm{softmax}(t / \tau)` over the
  valid documents of a list (``s`` the student's scores, e.g. yes-logits; ``t`` the teacher's),

  .. math:: L_{KD} = \mathrm{KL}(q \,\|\, p) = \sum_i q_i (\log q_i - \log p_i),
            \qquad \frac{\partial L_{KD}}{\partial s_i} = \frac{1}{\tau}(p_i - q_i)

  without Hinton et al.'s :math:`\tau^2` factor (multiply it in if gradient scales across
  temperatures must match). A list takes part iff it has a valid document; the mean is over
  those lists, and all-masked input gives 0 with zero gradients. FlagEmbedding's reranker
  distillation; Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network" (2015).
  ``decomp.url_loss(weight="kd", direction="cl")`` has the same gradient (lists with a positive).

  Args:
    scores: ``[..., n]`` the student's scores.
    teacher_scores: ``[..., n]`` the teacher's scores (logits, not probabilities).
    where: optional ``[..., n]`` boolean mask of valid documents.
    temperature: :math:`\tau` (> 0), shared by student and teacher.
    reduce_fn: reduction over lists; ``None`` returns the per-list losses ``[...]``.

  >>> import jax.numpy as jnp
  >>> round(float(kd_loss(jnp.zeros(2), jnp.array([jnp.log(3.0), 0.0]))), 4)  # KL((3/4,1/4)||(1/2,1/2))
  0.1308
  """
  scores, teacher_scores = jnp.asarray(scores), jnp.asarray(teacher_scores)
  if scores.ndim < 1 or scores.shape != teacher_scores.shape:
    raise ValueError(f"kd_loss: scores {scores.shape} and teacher_scores {teacher_scores.shape} "
                     "must have the same shape [..., list_size]")
  if where is not None and (jnp.shape(where) != scores.shape
                            or jnp.result_type(where) != jnp.bool_):
    raise ValueError(f"kd_loss: where must be a boolean mask shaped {scores.shape}")
  if isinstance(temperature, (int, float)) and temperature <= 0:
    raise ValueError(f"kd_loss: temperature must be > 0, got {temperature}")
  docs = jnp.ones(scores.shape, bool) if where is None else where
  log_p = _lists.masked_log_softmax(_lists.masked(scores, docs) / temperature, docs)
  log_q = _lists.masked_log_softmax(_lists.masked(teacher_scores, docs) / temperature, docs)
  per_list = jnp.sum(_lists.masked(jnp.exp(log_q) * (log_q - log_p), docs), axis=-1)
  return _lists.reduce_lists(per_list, jnp.any(docs, axis=-1), reduce_fn)
