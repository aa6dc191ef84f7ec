"""Ranking evaluation on the validation / test split with ``decomp.metrics``.

Scores: every entry of :data:`decomp.RANK_SCORES` (``'sft'`` ranks by ``z_y - z_n``, the logit of
P(yes), which it orders identically; ``'cl'`` by ``z_y``); the run's own is its objective's
``rank_by`` (or the config's ``eval_score``). Metrics per query (NDCG@10, MRR@10, Recall@1, AP) are aggregated overall,
per task and per modality (``decomp.metrics.aggregate``). On the playground each score also gets
``pairwise``: the positive-above-negative accuracy by what the negative gets wrong (one attribute,
several, or a random scene; ``decomp.data.playground.analysis``).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from decomp.data.playground import analysis
from decomp.metrics import aggregate, ap, mrr, ndcg, recall
from decomp.batching import plan_batches
from decomp.objectives import RANK_SCORES, Objective
from decomp.train import config as config_lib
from decomp.train import mesh as mesh_lib
from decomp.train import step as step_lib

METRICS = {
    'ndcg@10': lambda s, l, w: ndcg(s, l, where=w, topn=10, reduce_fn=None),
    'mrr@10': lambda s, l, w: mrr(s, l, where=w, topn=10, reduce_fn=None),
    'recall@1': lambda s, l, w: recall(s, l, where=w, topn=1, reduce_fn=None),
    'ap': lambda s, l, w: ap(s, l, where=w, reduce_fn=None),
}


def _longest(lengths, groups) -> list[int]:
  """Each group's longest prompt; ``lengths``: one per (group, document), in order."""
  longest, i = [], 0
  for g in groups:
    longest.append(max(lengths[i:i + len(g.docs)], default=1))
    i += len(g.docs)
  return longest


def primary_score(cfg: config_lib.TrainConfig, objective: Objective) -> str:
  """The score a run is judged by: the config's ``eval_score``, or for 'auto' the objective's."""
  return objective.rank_by if cfg.eval_log.eval_score == 'auto' else cfg.eval_log.eval_score


class Evaluator:
  """Scores the first ``count`` groups of a split and aggregates ranking metrics.

  Every process encodes its share of each evaluation batch once: the encoded batches of a split
  are kept, so periodic validation re-runs only the model. Scores come back to every host.
  """

  def __init__(self, cfg: config_lib.TrainConfig, run, data, mesh, objective: Objective, *,
               transform=None):
    self.cfg, self.data, self.mesh = cfg, data, mesh
    self.transform = transform  # encoded arrays -> what the step reads (cached features)
    self.score = primary_score(cfg, objective)
    shardings = (run.params_shardings, run.frozen_shardings)
    self._eval = jax.jit(step_lib.make_eval_step(run.graphdef), in_shardings=(*shardings, None))
    self._groups: dict[tuple[str, int], list] = {}
    self._plans: dict[tuple[str, int], list | None] = {}
    self._batches: dict[tuple[str, int], list] = {}

  def _groups_of(self, split: str, count: int):
    key = (split, count)
    if key not in self._groups:
      self._groups[key] = self.data.eval_groups(split, count)
    return self._groups[key]

  def _plans_of(self, split: str, count: int):
    key = (split, count)
    if key not in self._plans:
      self._plans[key] = self.data.eval_plans(split, count)
    return self._plans[key]

  def _batches_of(self, split: str, count: int) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """``(group indices, this process's encoded arrays)`` per evaluation batch, encoded once.

    Groups are sorted by their longest prompt (longest first) into batches of
    ``eval_batch_size`` groups' worth of tokens at ``max_length`` (more groups when their
    prompts are shorter), each padded to the smallest of ``data.length_buckets`` (default
    :func:`~decomp.batching.length_ladder`) that holds it (:func:`~decomp.batching.plan_batches`):
    a handful of compiled shapes, little padding. A batch is padded (with copies of a real
    group) only to the fewest of (data-parallel devices) x 2^k rows that hold its groups.
    """
    key = (split, count)
    if key not in self._batches:
      groups = self._groups_of(split, count)
      cfg = self.cfg
      procs, rank = jax.process_count(), jax.process_index()
      n = self.data.eval_list_size(groups)
      plan = plan_batches(_longest(self.data.encoder.prompt_lengths(groups), groups),
                          max_length=cfg.data.max_length,
                          batch_size=cfg.eval_log.eval_batch_size,
                          multiple=mesh_lib.data_parallel_size(self.mesh),
                          lengths_ladder=cfg.data.length_buckets or None)
      batches = []
      for indices, length, rows in plan:
        chunk = [groups[i] for i in indices]
        chunk += [chunk[-1]] * (rows - len(chunk))
        local = rows // procs
        arrays = self.data.encode(chunk[rank * local:(rank + 1) * local], n, lengths=(length,))
        batches.append((indices, self.transform(arrays) if self.transform else arrays))
      self._batches[key] = batches
    return self._batches[key]

  def scores(self, split: str, params, frozen, count: int, *,
             progress: bool = False) -> dict[str, Any]:
    """``{score: [Q, n] for each ranking score, 'labels', 'where', 'tasks', 'modalities'}``
    (rows in the split's group order); ``progress``: a bar over the evaluation batches (on
    stderr)."""
    groups = self._groups_of(split, count)
    procs = jax.process_count()
    out = {**{k: [] for k in RANK_SCORES}, 'labels': [], 'where': []}
    order = []
    batches = self._batches_of(split, count)
    if progress:
      from tqdm.auto import tqdm
      batches = tqdm(batches, desc=f'evaluate {split} ({len(groups)} queries)', unit='batch',
                     dynamic_ncols=True)
    for indices, arrays in batches:
      real = len(indices)
      order.append(indices)
      batch = {k: jax.make_array_from_process_local_data(
          mesh_lib.batch_sharding(self.mesh, v.ndim), v) for k, v in arrays.items()}
      scores = self._eval(params, frozen, batch)
      if procs > 1:
        scores = multihost_utils.process_allgather(scores, tiled=True)
        labels = multihost_utils.process_allgather(batch['labels'], tiled=True)
        where = multihost_utils.process_allgather(batch['where'], tiled=True)
      else:
        labels, where = batch['labels'], batch['where']
      scores, labels, where = jax.device_get((scores, labels, where))
      for k in RANK_SCORES:
        out[k].append(np.asarray(scores[k])[:real])
      out['labels'].append(np.asarray(labels)[:real])
      out['where'].append(np.asarray(where)[:real])
    inverse = np.argsort(np.concatenate(order)) if order else np.zeros((0,), int)
    result = {k: np.concatenate(v)[inverse] for k, v in out.items()}
    result['tasks'] = [g.task for g in groups]
    result['modalities'] = [g.modality for g in groups]
    return result

  def run(self, split: str, params, frozen, count: int, *,
          progress: bool = False) -> dict[str, Any]:
    """Metrics of every ranking score; top-level keys are those of the run's own score."""
    s = self.scores(split, params, frozen, count, progress=progress)
    results: dict[str, Any] = {'split': split, 'num_queries': len(s['tasks']),
                               'score': self.score}
    for score in RANK_SCORES:
      per_query = {name: np.asarray(fn(s[score], s['labels'], s['where']))
                   for name, fn in METRICS.items()}
      results[score] = aggregate(per_query, s['tasks'], s['modalities'])
    plans = self._plans_of(split, count)
    if plans is not None:
      results['pairwise'] = {score: analysis.pairwise_accuracy(s[score], plans, s['labels'])
                             for score in RANK_SCORES}
    primary = results[results['score']]
    results.update(primary['queries'])
    return results
