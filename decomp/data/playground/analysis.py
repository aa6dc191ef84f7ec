"""Which distinctions has a reranker learned? Pairwise accuracy by what a negative gets wrong.

A playground hard negative differs from the query's scene in known attributes (``GroupPlan``), so
a ranking can be read attribute by attribute: the fraction of (positive, negative) pairs of a
list in which the positive scores above a negative that differs *only* in, say, its colour says
whether the model tells colours apart. Chance is 0.5 for every row; a row at 1 is a learned
distinction. This is how the playground's seed spread was traced to runs that learn the
attributes one by one, each at its own step (docs/calibration.md).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from decomp.data.playground import world
from decomp.data.playground.tasks import GroupPlan

MULTI = "2+ attributes"  # hard negatives that differ in more than one attribute
RANDOM = "random"  # random negatives of the split
CATEGORIES = (*world.ATTRIBUTES, MULTI, RANDOM)


def negative_category(plan: GroupPlan, doc: int) -> str:
  """What negative ``doc`` of ``plan`` gets wrong: one attribute's name, MULTI or RANDOM."""
  if plan.doc_kinds[doc] == RANDOM:
    return RANDOM
  differs = np.flatnonzero(plan.doc_scenes[doc] != plan.target)
  if len(differs) == 1:
    return world.ATTRIBUTES[int(differs[0])]
  return MULTI


def pairwise_accuracy(scores, plans: Sequence[GroupPlan], labels=None
                      ) -> dict[str, dict[str, float]]:
  r"""Pairwise ranking accuracy of every (positive, negative) pair, by the negative's category.

  .. math::
     \mathrm{acc}_c = \frac{1}{|P_c|} \sum_{(i, j) \in P_c}
        \big([s_i > s_j] + \tfrac12 [s_i = s_j]\big)

  over the pairs :math:`P_c` of a positive :math:`i` and a negative :math:`j` of category
  :math:`c` (:func:`negative_category`) in the same list.

  Args:
    scores: ``[Q, n]`` scores of the ``Q`` lists, documents in the plans' order.
    plans: the ``Q`` groups' plans (``Playground.plan(split, index)``).
    labels: optional ``[Q, >= n]`` relevance labels the scores were evaluated with (padding
      beyond ``n`` ignored); checked against the plans, so scores of other lists, or of the same
      lists in another document order, raise instead of being read as the wrong negatives.

  Returns:
    ``{category: {'accuracy', 'pairs'}}`` for the categories that occur, in ``CATEGORIES``
    order.

  >>> from decomp.data.playground import Playground, PlaygroundConfig
  >>> world_ = Playground(PlaygroundConfig(tasks=("t2t",), negatives=7))
  >>> plans = [world_.plan("test", i) for i in range(4)]
  >>> perfect = np.array([[1.0 if y else 0.0 for y in p.labels] for p in plans])
  >>> {c: r["accuracy"] for c, r in pairwise_accuracy(perfect, plans).items()} == {
  ...     c: 1.0 for c in pairwise_accuracy(perfect, plans)}
  True
  """
  scores = np.asarray(scores, dtype=np.float64)
  if scores.ndim != 2 or scores.shape[0] != len(plans):
    raise ValueError(f"scores {scores.shape}: expected [{len(plans)} lists, documents]")
  correct = {c: 0.0 for c in CATEGORIES}
  pairs = {c: 0 for c in CATEGORIES}
  for q, (row, plan) in enumerate(zip(scores, plans)):
    if len(plan.labels) != len(row):
      raise ValueError(f"{plan.split} group {plan.index} has {len(plan.labels)} documents, "
                       f"its scores {len(row)}")
    relevant = np.asarray(plan.labels)
    if labels is not None and not np.array_equal(np.asarray(labels[q])[:len(row)] > 0,
                                                 relevant > 0):
      raise ValueError(f"{plan.split} group {plan.index}: the evaluated labels "
                       f"{[int(v) for v in np.asarray(labels[q])[:len(row)]]} are not the plan's "
                       f"{list(plan.labels)} (scores and plans of different lists or orders)")
    positives = row[relevant > 0]
    for doc in np.flatnonzero(relevant == 0):
      category = negative_category(plan, doc)
      correct[category] += float(np.sum(positives > row[doc]) + 0.5 * np.sum(positives == row[doc]))
      pairs[category] += len(positives)
  return {c: {"accuracy": correct[c] / pairs[c], "pairs": pairs[c]}
          for c in CATEGORIES if pairs[c]}
