"""Ranking metrics with rax's conventions, and MRB-style aggregation over tasks.

Every metric takes ``scores`` and ``labels`` of shape ``[..., list_size]`` (the last axis is one
candidate list) and follows rax 0.4 exactly, so numbers are comparable with rax-based code:

* ranks come from a *stable* sort by descending score: ties keep their order of appearance
  (the earlier item ranks higher); items masked out by ``where`` are ranked after all valid ones;
* an item is *retrieved* if it is valid, its score is not ``-inf`` and its rank is ``<= topn``;
* an item is *relevant* if its label is ``>= 1``; NDCG uses graded gains ``2**label - 1`` and
  discounts ``1 / log2(rank + 1)``;
* a list without a relevant item scores 0 (its denominator is replaced by 1, as in rax), and a
  list without any valid item is left out of the reduction (and is 0 when ``reduce_fn=None``).

``reduce_fn=jnp.mean`` (the default) averages over lists; ``reduce_fn=None`` returns the
per-list values ``[...]``.

>>> scores = jnp.array([[0., 1., 3.], [1., 2., 0.]])
>>> labels = jnp.array([[0., 0., 1.], [1., 0., 0.]])
>>> print(mrr(scores, labels), ap(scores, labels), ndcg(scores, labels))
0.75 0.75 0.81546485

This module imports only jax and numpy (the math core's wall).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = Any
ReduceFn = Callable[..., Array]

# MRB's grouping of task families by modality (decomp.data.types.TASK_MODALITY is this table;
# it lives here so that the math core imports nothing from data).
MRB_MODALITY = {
    "t2t": "single",
    "i2i": "single",
    "t2i": "cross",
    "i2t": "cross",
    "t2vd": "cross",
    "it2it": "fused",
}


def _check(scores, labels, where):
  scores = jnp.asarray(scores)
  labels = jnp.asarray(labels)
  if scores.ndim == 0 or scores.shape != labels.shape:
    raise ValueError(
        f"scores {scores.shape} and labels {labels.shape} must have the same shape [..., list_size]")
  if where is not None:
    where = jnp.asarray(where, dtype=bool)
    if where.shape != scores.shape:
      raise ValueError(f"where {where.shape} must have the shape of scores {scores.shape}")
  if not jnp.issubdtype(scores.dtype, jnp.floating):
    scores = scores.astype(jnp.float32)
  return scores, labels.astype(scores.dtype), where


def ranks(scores: Array, *, where: Array | None = None) -> Array:
  """1-based ranks ``[..., n]`` by descending score; stable ties; masked items last."""
  scores = jnp.asarray(scores)
  n = scores.shape[-1]
  positions = jnp.broadcast_to(jnp.arange(n), scores.shape)
  operands = [] if where is None else [jnp.logical_not(where)]
  operands += [-scores, positions]
  order = jax.lax.sort(operands, dimension=-1, num_keys=len(operands) - 1, is_stable=True)[-1]
  return jnp.argsort(order, axis=-1) + 1


def _retrieved(scores, rank, where, topn):
  retrieved = jnp.logical_not(jnp.isneginf(scores))
  if where is not None:
    retrieved &= where
  if topn is not None:
    retrieved &= rank <= topn
  return retrieved.astype(scores.dtype)


def _relevant(labels):
  return (labels >= 1).astype(labels.dtype)


def _reduce(values, where, reduce_fn):
  """rax's safe_reduce: lists without valid items are ignored (mean of none is 0, not NaN)."""
  list_valid = None if where is None else jnp.any(where, axis=-1)
  if reduce_fn is None:
    return values if list_valid is None else jnp.where(list_valid, values, 0.0)
  out = reduce_fn(values, where=list_valid)
  if reduce_fn is jnp.mean:
    out = jnp.where(jnp.isnan(out) & ~jnp.any(jnp.isnan(values)), 0.0, out)
  return out


def _sum(x, where):
  return jnp.sum(x, axis=-1, where=where)


def mrr(scores, labels, *, where=None, topn=None, reduce_fn: ReduceFn | None = jnp.mean):
  """Mean reciprocal rank: ``1 / rank`` of the first retrieved relevant item (0 if none)."""
  scores, labels, where = _check(scores, labels, where)
  rank = ranks(scores, where=where)
  hit = _relevant(labels) * _retrieved(scores, rank, where, topn)
  values = jnp.max(hit / rank, axis=-1, where=where, initial=0.0)
  return _reduce(values, where, reduce_fn)


def recall(scores, labels, *, where=None, topn=None, reduce_fn: ReduceFn | None = jnp.mean):
  """Retrieved relevant items over all relevant items."""
  scores, labels, where = _check(scores, labels, where)
  relevant = _relevant(labels)
  retrieved = _retrieved(scores, ranks(scores, where=where), where, topn)
  n_relevant = _sum(relevant, where)
  values = _sum(relevant * retrieved, where) / jnp.where(n_relevant == 0, 1.0, n_relevant)
  return _reduce(values, where, reduce_fn)


def precision(scores, labels, *, where=None, topn=None, reduce_fn: ReduceFn | None = jnp.mean):
  """Retrieved relevant items over retrieved items (all valid items when ``topn`` is None)."""
  scores, labels, where = _check(scores, labels, where)
  relevant = _relevant(labels)
  retrieved = _retrieved(scores, ranks(scores, where=where), where, topn)
  n_retrieved = _sum(retrieved, where)
  values = _sum(relevant * retrieved, where) / jnp.where(n_retrieved == 0, 1.0, n_retrieved)
  return _reduce(values, where, reduce_fn)


def ap(scores, labels, *, where=None, topn=None, reduce_fn: ReduceFn | None = jnp.mean):
  """Average precision: mean over relevant items of precision at their rank (retrieved only)."""
  scores, labels, where = _check(scores, labels, where)
  relevant = _relevant(labels)
  rank = ranks(scores, where=where)
  retrieved = _retrieved(scores, rank, where, topn)
  # precision@rank_i = #relevant ranked at or above i / rank_i, counted for retrieved relevant i.
  above = (rank[..., None, :] <= rank[..., :, None]).astype(scores.dtype)
  precision_at = jnp.sum(above * relevant[..., None, :], axis=-1) / rank
  n_relevant = _sum(relevant, where)
  values = jnp.sum(precision_at * relevant * retrieved, axis=-1) / jnp.where(
      n_relevant == 0, 1.0, n_relevant)
  return _reduce(values, where, reduce_fn)


def _dcg(scores, labels, where, topn):
  rank = ranks(scores, where=where)
  retrieved = _retrieved(scores, rank, where, topn)
  gains = jnp.power(2.0, labels) - 1.0
  return _sum(retrieved * gains / jnp.log2(rank + 1.0), where)


def ndcg(scores, labels, *, where=None, topn=None, reduce_fn: ReduceFn | None = jnp.mean):
  """Normalised DCG with gains ``2**label - 1`` and discounts ``1/log2(rank+1)``; NDCG@topn."""
  scores, labels, where = _check(scores, labels, where)
  dcg = _dcg(scores, labels, where, topn)
  ideal = _dcg(jnp.power(2.0, labels) - 1.0, labels, where, topn)
  values = dcg / jnp.where(ideal == 0.0, 1.0, ideal)
  return _reduce(values, where, reduce_fn)


METRICS = {"ndcg": ndcg, "mrr": mrr, "recall": recall, "precision": precision, "ap": ap}


def aggregate(per_query: Mapping[str, Array], tasks: Sequence[str],
              modalities: Sequence[str] | Mapping[str, str] | None = None) -> dict:
  """Aggregates per-query metric values the way MRB's tables do.

  Args:
    per_query: metric name (e.g. ``"ndcg@10"``) -> ``[num_queries]`` values, one per query
      (e.g. from a metric with ``reduce_fn=None``, concatenated over batches).
    tasks: ``[num_queries]`` task name of each query (MRB: the dataset or task family).
    modalities: the modality group of each query as a ``[num_queries]`` sequence, or a mapping
      task -> group; default :data:`MRB_MODALITY` (tasks it does not know get group ``"other"``).

  Returns:
    ``{"queries": {metric: mean over all queries},
       "tasks": {metric: macro mean of the per-task means}   # MRB's ALL: every task counts once
       "per_task": {task: {metric: mean, "num_queries": n}},
       "per_modality": {group: {metric: macro mean over its tasks, "num_queries": n,
                                "tasks": [...]}}}``
    with plain Python floats, ready for JSON.
  """
  tasks = [str(t) for t in tasks]
  n = len(tasks)
  values = {}
  for name, v in per_query.items():
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    if v.shape[0] != n:
      raise ValueError(f"per_query[{name!r}] has {v.shape[0]} values for {n} task names")
    values[name] = v
  if modalities is None:
    modalities = MRB_MODALITY
  if isinstance(modalities, Mapping):
    groups = [modalities.get(t, "other") for t in tasks]
  else:
    groups = [str(g) for g in modalities]
    if len(groups) != n:
      raise ValueError(f"modalities has {len(groups)} entries for {n} task names")
  task_arr = np.asarray(tasks, dtype=object)
  task_names = sorted(set(tasks))
  per_task = {}
  for task in task_names:
    sel = task_arr == task
    per_task[task] = {k: float(v[sel].mean()) for k, v in values.items()}
    per_task[task]["num_queries"] = int(sel.sum())
  per_modality = {}
  group_of_task = {}
  for task, group in zip(tasks, groups):
    if group_of_task.setdefault(task, group) != group:
      raise ValueError(f"task {task!r} is in two modality groups: {group_of_task[task]!r}, {group!r}")
  for group in sorted(set(groups)):
    members = [t for t in task_names if group_of_task[t] == group]
    per_modality[group] = {k: float(np.mean([per_task[t][k] for t in members])) for k in values}
    per_modality[group]["num_queries"] = sum(per_task[t]["num_queries"] for t in members)
    per_modality[group]["tasks"] = members
  return {
      "queries": {k: float(v.mean()) if n else 0.0 for k, v in values.items()},
      "tasks": {k: float(np.mean([per_task[t][k] for t in task_names])) if n else 0.0
                for k in values},
      "per_task": per_task,
      "per_modality": per_modality,
  }
