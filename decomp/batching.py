"""Batches by length: the ladder of lengths prompts are padded to, and batches of items sorted by
length that hold a fixed number of tokens (:func:`plan_batches`), shared by reranking and a
training run's evaluation.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from decomp.models.prompt import bucket_length

LADDER_FRACTIONS = (1 / 8, 1 / 4, 1 / 2, 3 / 4, 1)


def length_ladder(max_length: int, multiple: int = 16) -> tuple[int, ...]:
  """The lengths prompts are padded to when batches are sorted by length: ``max_length`` times
  1/8, 1/4, 1/2, 3/4 and 1, rounded up to ``multiple`` (at most 5 compiled lengths; a batch of
  short prompts is not padded to ``max_length``).

  >>> length_ladder(512)
  (64, 128, 256, 384, 512)
  """
  rungs = {min(bucket_length(int(max_length * f), multiple), max_length) for f in
           LADDER_FRACTIONS}
  return tuple(sorted(rungs | {max_length}))


def plan_batches(lengths: Sequence[int], *, max_length: int, batch_size: int,
                 multiple: int = 1, lengths_ladder: Sequence[int] | None = None
                 ) -> list[tuple[np.ndarray, int, int]]:
  """Batches of items (pairs, or groups by their longest prompt) sorted by length:
  ``[(indices, T, rows)]``, longest first.

  Each batch pads its prompts to ``T``, the smallest rung of ``lengths_ladder`` (default
  :func:`length_ladder`; its longest rung at least ``max_length``) that holds them (a prompt
  longer than ``max_length`` is cut to it), and holds as many items as ``batch_size *
  max_length`` tokens allow (``batch_size`` at ``max_length``; more when they are shorter).
  ``rows`` (what the batch is padded to) is the smallest of ``multiple`` (the data-parallel
  devices) times a power of two, or the capacity, that holds its items: a few compiled shapes,
  less than 2x padding.

  >>> [(i.tolist(), t, rows) for i, t, rows in plan_batches([20, 500, 30, 90], max_length=512,
  ...                                                    batch_size=2)]
  [([1], 512, 1), ([3], 128, 1), ([2, 0], 64, 2)]
  """
  ladder = np.asarray(sorted(lengths_ladder) if lengths_ladder else length_ladder(max_length))
  clipped = np.minimum(np.asarray(lengths, np.int64), max_length)
  rung = np.searchsorted(ladder, clipped)
  order = np.argsort(-clipped, kind='stable')
  budget = batch_size * max_length
  plan, i = [], 0
  while i < len(order):
    r = rung[order[i]]
    t = int(ladder[r])
    capacity = max(multiple, budget // t // multiple * multiple)
    j = i
    while j < len(order) and j - i < capacity and rung[order[j]] == r:
      j += 1
    rows = multiple  # the fewest of multiple x 2^k rows (or the capacity) that hold them
    while rows < j - i:
      rows *= 2
    rows = min(rows, capacity)
    plan.append((order[i:j], t, rows))
    i = j
  return plan
