"""The two reranking objectives the paper compares, as pure functions (rax conventions).

Both take per-document arrays shaped ``[..., list_size]``: leading axes are batch, the last axis
is the candidate list of one query (one or more positives, the rest negatives). ``where`` masks
padded documents. A list takes part iff it has at least one valid positive (see
``decomp._lists``); with ``reduce_fn=jnp.mean`` the result is the mean over the lists that take
part, and 0 (with zero gradients) when none does.

Labels are relevance grades >= 0: 0 is not relevant, and SFT and CL count every grade > 0 (say
0.7, 1 or 3) as a positive, alike; the listwise losses below read the grades themselves. Called
eagerly, a negative or non-finite label raises ``ValueError``. Inside your own ``jax.jit`` the
values are tracers and cannot be checked: a label at or below 0 (say -1) then counts as a
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
    labels: ``[..., n]`` relevance grades >= 0, every grade > 0 a positive (under ``jax.jit``:
      > 0 positive, <= 0 negative, unchecked; see the module docstring).
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
    labels: ``[..., n]`` relevance grades >= 0, every grade > 0 a positive (under ``jax.jit``:
      > 0 positive, <= 0 negative, unchecked; see the module docstring).
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


# --- the field's ranking losses (sentence-transformers' CrossEncoder, rax, LLaVE) ---------------
#
# Each takes one score per document ``[..., n]`` (decomp's weights pass z_y, or z_y - z_n) and
# graded labels (non-negative; ``labels > 0`` is a positive). A list takes part iff it has a valid
# positive, as for SFT and CL; ``reduce_fn=None`` returns the per-list losses ``[...]``.


def _grades(labels, docs, dtype) -> Array:
  """The labels as float grades on the documents that take part (0 elsewhere)."""
  return _lists.masked(jnp.asarray(labels, dtype), docs)


def listnet_loss(scores, labels, *, where=None, reduce_fn=jnp.mean):
  r"""ListNet: cross-entropy from the labels' distribution to the scores' softmax over the list.

  .. math:: L = -\sum_i q_i \log p_i, \qquad p = \mathrm{softmax}(s), \quad
            q_i = y_i / \textstyle\sum_j y_j

  over the valid documents: ``rax.softmax_loss`` with
  ``label_fn=rax.utils.normalize_probabilities`` (its default leaves the labels unnormalised), and
  sentence-transformers' CrossEncoder ``ListNetLoss``. Graded labels set the target distribution.
  Cao et al., "Learning to Rank: From Pairwise Approach to Listwise Approach", ICML 2007.

  >>> import jax.numpy as jnp
  >>> round(float(listnet_loss(jnp.array([2.0, 1.0, 3.0]), jnp.array([1, 0, 0]))), 7)
  1.4076059
  """
  scores = jnp.asarray(scores)
  _lists.check_inputs("listnet_loss", labels, where, scores=scores)
  docs = _lists.doc_mask(labels, where)
  grades = _grades(labels, docs, scores.dtype)
  target = grades / jnp.maximum(jnp.sum(grades, -1, keepdims=True), 1e-30)
  log_p = _lists.masked_log_softmax(_lists.masked(scores, docs), docs)
  return _lists.reduce_lists(-jnp.sum(target * log_p, -1), _lists.list_mask(labels, where),
                             reduce_fn)


def listmle_follows(labels, docs) -> Array:
  """``[..., n, n]``: entry ``(i, j)`` True iff document ``j`` is at or after ``i`` in the
  labels' order (grades descending; equal grades in list order, as ``rax.listmle_loss`` breaks
  ties without a key). Only documents that take part."""
  y = jnp.asarray(labels)
  position = jnp.arange(y.shape[-1])
  later = (y[..., None, :] < y[..., :, None]) | (
      (y[..., None, :] == y[..., :, None]) & (position[None, :] >= position[:, None]))
  return later & docs[..., :, None] & docs[..., None, :]


def listmle_loss(scores, labels, *, where=None, reduce_fn=jnp.mean):
  r"""ListMLE: minus the Plackett-Luce log-likelihood of the labels' order under the scores.

  With :math:`\pi` the valid documents sorted by grade (ties kept in list order),

  .. math:: L = \sum_r \Big( \log \sum_{r' \ge r} e^{s_{\pi(r')}} - s_{\pi(r)} \Big)

  ``rax.listmle_loss`` without a tie-breaking key, and sentence-transformers' CrossEncoder
  ``ListMLELoss``. With binary labels the order among equal grades is the list's order, so the
  loss also ranks negatives among themselves (as rax's does). Xia et al., "Listwise Approach to
  Learning to Rank: Theory and Algorithm", ICML 2008.

  >>> import jax.numpy as jnp
  >>> round(float(listmle_loss(jnp.zeros(2), jnp.array([1, 0]))), 4)  # log 2 + log 1
  0.6931
  """
  scores = jnp.asarray(scores)
  _lists.check_inputs("listmle_loss", labels, where, scores=scores)
  docs = _lists.doc_mask(labels, where)
  follows = listmle_follows(labels, docs)
  s = _lists.masked(scores, docs)
  suffix, _ = _lists.masked_logsumexp(jnp.broadcast_to(s[..., None, :], follows.shape), follows)
  per_doc = _lists.masked(suffix[..., 0] - s, docs)
  return _lists.reduce_lists(jnp.sum(per_doc, -1), _lists.list_mask(labels, where), reduce_fn)


LAMBDAWEIGHTS = ("none", "dcg", "labeldiff")
"""Pair weights of :func:`lambda_loss`: none (RankNet), DCG's swap cost, the label difference."""


def lambdaweights(scores, labels, docs, lambdaweight: str = "dcg") -> Array:
  r"""``[..., n, n]`` pair weights :math:`\lambda_{ij}` (constants: no gradient).

  ``'dcg'``: :math:`|g(y_i) - g(y_j)| \cdot |d(r_i) - d(r_j)| \cdot n`, with gain
  :math:`g(y) = 2^y - 1`, discount :math:`d(r) = 1/\log_2(1 + r)` and :math:`r` the rank by score
  among the valid documents (ties in list order), scaled by :math:`n` the number of valid
  documents (``rax.dcg_lambdaweight`` scales by the padded list size instead, which would make a
  masked list differ from the same list sliced). ``'labeldiff'``: :math:`|y_i - y_j|`
  (``rax.labeldiff_lambdaweight``). ``'none'``: 1.
  """
  if lambdaweight not in LAMBDAWEIGHTS:
    raise ValueError(f"unknown lambdaweight {lambdaweight!r}; known: {LAMBDAWEIGHTS}")
  pairs = docs[..., :, None] & docs[..., None, :]
  y = _grades(labels, docs, jnp.result_type(scores))
  if lambdaweight == "none":
    return pairs.astype(y.dtype)
  if lambdaweight == "labeldiff":
    return jnp.where(pairs, jnp.abs(y[..., :, None] - y[..., None, :]), 0.0)
  s = jax.lax.stop_gradient(_lists.masked(scores, docs))
  position = jnp.arange(s.shape[-1])
  ahead = (s[..., None, :] > s[..., :, None]) | (
      (s[..., None, :] == s[..., :, None]) & (position[None, :] < position[:, None]))
  rank = 1 + jnp.sum(ahead & pairs, -1)
  discount = 1.0 / jnp.log2(1.0 + rank.astype(y.dtype))
  gain = jnp.exp2(y) - 1.0
  size = jnp.sum(docs, -1)[..., None, None].astype(y.dtype)
  weight = (jnp.abs(gain[..., :, None] - gain[..., None, :])
            * jnp.abs(discount[..., :, None] - discount[..., None, :]) * size)
  return jnp.where(pairs, weight, 0.0)


def lambda_loss(scores, labels, *, where=None, lambdaweight: str = "dcg", reduce_fn=jnp.mean):
  r"""Pairwise logistic loss over the pairs a grade apart, each pair weighted by
  :math:`\lambda_{ij}` (:func:`lambdaweights`):

  .. math:: L = \sum_{i,j:\, y_i > y_j} \lambda_{ij} \log\big(1 + e^{-(s_i - s_j)}\big)

  ``lambdaweight='none'`` is RankNet (``rax.pairwise_logistic_loss``; Burges et al., ICML 2005);
  ``'dcg'`` is LambdaLoss with DCG lambdaweights (``rax.pairwise_logistic_loss`` with
  ``rax.dcg_lambdaweight``; Wang et al., "The LambdaLoss Framework for Ranking Metric
  Optimization", CIKM 2018); both as in sentence-transformers' CrossEncoder ``RankNetLoss`` /
  ``LambdaLoss``. Pairs are summed per list.

  >>> import jax.numpy as jnp
  >>> round(float(lambda_loss(jnp.zeros(3), jnp.array([1, 0, 0]), lambdaweight="none")), 4)
  1.3863
  """
  scores = jnp.asarray(scores)
  _lists.check_inputs("lambda_loss", labels, where, scores=scores)
  docs = _lists.doc_mask(labels, where)
  y = _grades(labels, docs, scores.dtype)
  s = _lists.masked(scores, docs)
  ordered = (y[..., :, None] > y[..., None, :]) & docs[..., :, None] & docs[..., None, :]
  pair_loss = jax.nn.softplus(s[..., None, :] - s[..., :, None])  # log(1 + e^{-(s_i - s_j)})
  weight = lambdaweights(s, labels, docs, lambdaweight)
  per_list = jnp.sum(jnp.where(ordered, weight * pair_loss, 0.0), (-2, -1))
  return _lists.reduce_lists(per_list, _lists.list_mask(labels, where), reduce_fn)


def margin_mse_loss(scores, teacher_scores, labels, *, where=None, reduce_fn=jnp.mean):
  r"""MarginMSE: the student's score margins, positive minus negative, regressed on the teacher's.

  .. math:: L = \frac{1}{|P||N|} \sum_{p \in P} \sum_{j \in N}
            \big((s_p - s_j) - (t_p - t_j)\big)^2

  over the list's positives :math:`P` (``labels > 0``) and negatives :math:`N`: the mean over
  (positive, negative) pairs, as sentence-transformers' CrossEncoder ``MarginMSELoss`` (an
  ``nn.MSELoss`` over the margins of each query's negatives). Hofstaetter et al., "Improving
  Efficient Neural Ranking Models with Cross-Architecture Knowledge Distillation", 2020.

  >>> import jax.numpy as jnp
  >>> float(margin_mse_loss(jnp.array([1.0, 0.0]), jnp.array([3.0, 0.0]), jnp.array([1, 0])))
  4.0
  """
  scores, teacher_scores = jnp.asarray(scores), jnp.asarray(teacher_scores)
  _lists.check_inputs("margin_mse_loss", labels, where, scores=scores,
                      teacher_scores=teacher_scores)
  docs = _lists.doc_mask(labels, where)
  pairs, count = margin_pairs(labels, docs)
  error = margin_errors(scores, teacher_scores, docs)
  per_list = jnp.sum(jnp.where(pairs, error ** 2, 0.0), (-2, -1)) / count
  return _lists.reduce_lists(per_list, _lists.list_mask(labels, where), reduce_fn)


def margin_pairs(labels, docs) -> tuple[Array, Array]:
  """``[..., n, n]`` (positive, negative) pairs and ``[...]`` their number (at least 1)."""
  pos, neg = _lists.positives(labels, docs), _lists.negatives(labels, docs)
  pairs = pos[..., :, None] & neg[..., None, :]
  return pairs, jnp.maximum(jnp.sum(pairs, (-2, -1)), 1)


def margin_errors(scores, teacher_scores, docs) -> Array:
  """``[..., n, n]``: (s_i - s_j) - (t_i - t_j) on the documents that take part."""
  s, t = _lists.masked(scores, docs), _lists.masked(teacher_scores, docs)
  return (s[..., :, None] - s[..., None, :]) - jax.lax.stop_gradient(
      t[..., :, None] - t[..., None, :])


def hard_infonce_loss(scores, labels, *, where=None, alpha: float = 1.0, temperature=1.0,
                      reduce_fn=jnp.mean):
  r"""Hardness-weighted InfoNCE: each negative's term reweighted by a stop-gradient function of
  its own score.

  .. math:: L = \sum_{p \in pos} -\log \frac{e^{s_p/\tau}}
            {e^{s_p/\tau} + \sum_{j \in neg} w_j e^{s_j/\tau}}, \qquad
            w_j = e^{\alpha\, \mathrm{sg}(s_j)}

  LLaVE's hardness-weighted contrastive loss (Lan et al., "LLaVE: Large Language and Vision
  Embedding Models with Hardness-Weighted Contrastive Learning", 2025) on one list: a negative
  the model already scores high is a hard one and weighs more. ``alpha=0`` is :func:`cl_loss`.

  >>> import jax.numpy as jnp
  >>> s, y = jnp.array([2.0, 1.0, 3.0]), jnp.array([1, 0, 0])
  >>> bool(jnp.isclose(hard_infonce_loss(s, y, alpha=0.0), cl_loss(s, y)))
  True
  """
  scores = jnp.asarray(scores)
  _lists.check_inputs("hard_infonce_loss", labels, where, scores=scores)
  docs = _lists.doc_mask(labels, where)
  pos, neg = _lists.positives(labels, docs), _lists.negatives(labels, docs)
  s = _lists.masked(scores, docs)
  logits = s / temperature
  log_neg, has_neg = _lists.masked_logsumexp(logits + alpha * jax.lax.stop_gradient(s), neg)
  per_positive = jnp.where(pos & has_neg, jax.nn.softplus(log_neg - logits), 0.0)
  return _lists.reduce_lists(jnp.sum(per_positive, axis=-1), _lists.list_mask(labels, where),
                             reduce_fn)
