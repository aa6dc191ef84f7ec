"""Ranking metrics with rax's conventions, and MRB-style aggregation over tasks.

Every metric takes ``scores`` and ``labels`` of shape ``[..., list_size]`` (the last axis is one
candidate list) and follows rax 0.4 exactly, so numbers are comparable with rax-based code:

* ranks come from a *stable* sort by descending score: ties keep their order of appearance
  (the earlier item ranks higher); items masked out by ``where`` are ranked after all valid ones;
* an item is *retrieved* if it is valid, its score is not ``-inf`` and its rank is ``<= topn``;
* an item is *relevant* if its label is ``>= 1``; NDCG uses graded gains ``2**label - 1`` and
  discounts ``1 / log2(rank + 1)`` (``gain="linear"``: gains ``label``, as trec_eval's
  ``ndcg_cut``; see :data:`GAINS`);
* a list without a relevant item scores 0 (its denominator is replaced by 1, as in rax), and a
  list without any valid item is left out of the reduction (and is 0 when ``reduce_fn=None``).

``reduce_fn=jnp.mean`` (the default) averages over lists; ``reduce_fn=None`` returns the
per-list values ``[...]``.

:func:`evaluate_run` scores a TREC-style run (``{qid: {docid: score}}``) against qrels
(``{qid: {docid: relevance}}``) the way papers count it: by default trec_eval's convention
(linear gain, score ties broken by document id, unretrieved relevant documents in the ideal
ranking and in recall's denominator, P@k over k); ``convention="rax"`` keeps this module's.

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


# NDCG's gain of a graded label: rax's (and Burges et al.'s) exponential gain, or trec_eval's
# linear one. They agree on binary labels and differ on graded ones (2 -> 3 vs 2).
GAINS: dict[str, Callable[[Array], Array]] = {
    "exponential": lambda labels: jnp.power(2.0, labels) - 1.0,
    "linear": lambda labels: labels,
}


def _gains(labels, gain: str):
  if gain not in GAINS:
    raise ValueError(f"unknown gain {gain!r}; known: {sorted(GAINS)}")
  return GAINS[gain](labels)


def _dcg(scores, gains, where, topn):
  rank = ranks(scores, where=where)
  retrieved = _retrieved(scores, rank, where, topn)
  return _sum(retrieved * gains / jnp.log2(rank + 1.0), where)


def ndcg(scores, labels, *, where=None, topn=None, reduce_fn: ReduceFn | None = jnp.mean,
         gain: str = "exponential"):
  """Normalised DCG with discounts ``1/log2(rank+1)``; NDCG@topn.

  ``gain="exponential"`` (rax's default) gains ``2**label - 1``; ``gain="linear"`` gains
  ``label`` (trec_eval's ``ndcg_cut``). The ideal ranking sorts the valid items by gain.
  """
  scores, labels, where = _check(scores, labels, where)
  gains = _gains(labels, gain)
  dcg = _dcg(scores, gains, where, topn)
  ideal = _dcg(gains, gains, where, topn)
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


# --- TREC-style runs ------------------------------------------------------------------------------

# How a run is counted. 'trec_eval' reproduces trec_eval 9.x (and pytrec_eval): linear NDCG gain,
# score ties broken by document id (descending, as trec_eval's sort does), P@k over k. 'rax' keeps
# this module's conventions: exponential gain, ties in the run's order, P@k over the retrieved.
CONVENTIONS = {
    "trec_eval": {"gain": "linear", "ties": "docid", "precision": "cutoff"},
    "rax": {"gain": "exponential", "ties": "input", "precision": "retrieved"},
}
RUN_METRICS = ("ndcg", "mrr", "recall", "p")


def convention_note(convention: str) -> str:
  """One line naming a convention's choices, for the header of every table."""
  c = CONVENTIONS[convention]
  ties = "document id (descending)" if c["ties"] == "docid" else "run order"
  return f"{convention} convention: {c['gain']} NDCG gain, score ties broken by {ties}"


def rank_run(scores: Mapping[str, float], ties: str = "docid") -> list[str]:
  """Document ids of one query's run, best first, ties broken as ``ties`` says.

  ``'docid'``: trec_eval's order (score descending, then document id descending);
  ``'input'``: score descending, ties in the mapping's order (a stable sort, as rax).
  A NaN or infinite score is an error (it has no place in an order).
  """
  bad = next((d for d, s in scores.items() if not np.isfinite(s)), None)
  if bad is not None:
    raise ValueError(f"document {bad!r} has score {scores[bad]!r}; run scores must be finite")
  if ties == "docid":
    return [d for d, _ in sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]
  if ties == "input":
    return [d for d, _ in sorted(scores.items(), key=lambda kv: -kv[1])]
  raise ValueError(f"unknown ties={ties!r}; use 'docid' or 'input'")


def evaluate_run(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]],
                 *, cutoffs: Sequence[int] = (10,), convention: str = "trec_eval") -> dict:
  """NDCG@k, MRR@k, Recall@k and P@k of a run against qrels, per query and averaged.

  Args:
    qrels: ``{query_id: {doc_id: relevance}}``; relevance >= 1 is relevant, graded levels are
      NDCG gains (negative levels count as 0).
    run: ``{query_id: {doc_id: score}}`` (higher is better; a run file's ranks are ignored, as
      trec_eval ignores them).
    cutoffs: the k of each metric.
    convention: a key of :data:`CONVENTIONS`.

  Queries are evaluated iff they are in both (trec_eval without ``-c``). Relevant documents the
  run misses still count in the ideal DCG and in recall's denominator. Ranks are computed once in
  float64 from the run's scores; the metric functions above then read exact rank scores, in
  float64 (``jax.enable_x64``), as trec_eval computes.

  Returns:
    ``{"convention", "gain", "cutoffs", "num_queries", "queries_not_in_run",
    "queries_not_in_qrels", "per_query": {qid: {"ndcg@10": ..., "mrr@10", "recall@10",
    "p@10"}}, "mean": {name: mean over evaluated queries}}``.

  >>> qrels = {"q1": {"a": 1, "b": 0, "c": 2}}
  >>> out = evaluate_run(qrels, {"q1": {"a": 0.5, "b": 0.9, "c": 0.1}}, cutoffs=(2,))
  >>> out["mean"]["mrr@2"], out["mean"]["recall@2"], out["mean"]["p@2"]
  (0.5, 0.5, 0.5)
  """
  if convention not in CONVENTIONS:
    raise ValueError(f"unknown convention {convention!r}; known: {sorted(CONVENTIONS)}")
  cutoffs = [int(k) for k in cutoffs]
  if not cutoffs or min(cutoffs) < 1:
    raise ValueError(f"cutoffs must be positive integers, got {cutoffs}")
  c = CONVENTIONS[convention]
  qids = [q for q in run if q in qrels]
  result = {"convention": convention, "gain": c["gain"], "cutoffs": cutoffs,
            "num_queries": len(qids),
            "queries_not_in_run": sorted(q for q in qrels if q not in run),
            "queries_not_in_qrels": sorted(q for q in run if q not in qrels)}
  names = [f"{m}@{k}" for k in cutoffs for m in RUN_METRICS]
  if not qids:
    return {**result, "per_query": {}, "mean": {n: 0.0 for n in names}}
  rows = []
  for q in qids:
    judged = qrels[q]
    order = rank_run(run[q], c["ties"])
    labels = [max(int(judged.get(d, 0)), 0) for d in order]
    missed = [max(int(r), 0) for d, r in judged.items() if r > 0 and d not in run[q]]
    rows.append((labels, missed))
  width = max(len(a) + len(b) for a, b in rows)
  scores = np.full((len(rows), width), -np.inf)
  labels = np.zeros((len(rows), width))
  where = np.zeros((len(rows), width), bool)
  for i, (ranked, missed) in enumerate(rows):
    n = len(ranked)
    scores[i, :n] = np.arange(n, 0, -1)  # exact, strictly decreasing: the rank order above
    labels[i, :n + len(missed)] = ranked + missed
    where[i, :n + len(missed)] = True  # missed relevant documents: valid, never retrieved (-inf)
  values = {}
  with jax.enable_x64(True):  # float64 throughout, as trec_eval computes
    for k in cutoffs:
      values[f"ndcg@{k}"] = ndcg(scores, labels, where=where, topn=k, gain=c["gain"],
                                 reduce_fn=None)
      values[f"mrr@{k}"] = mrr(scores, labels, where=where, topn=k, reduce_fn=None)
      values[f"recall@{k}"] = recall(scores, labels, where=where, topn=k, reduce_fn=None)
      if c["precision"] == "cutoff":  # trec_eval's P_k: relevant in the top k over k
        values[f"p@{k}"] = np.sum((labels[:, :k] >= 1) & (scores[:, :k] > -np.inf), -1) / k
      else:
        values[f"p@{k}"] = precision(scores, labels, where=where, topn=k, reduce_fn=None)
    values = {n: np.asarray(values[n], np.float64) for n in names}
  result["per_query"] = {q: {n: float(values[n][i]) for n in names} for i, q in enumerate(qids)}
  result["mean"] = {n: float(values[n].mean()) for n in names}
  return result
