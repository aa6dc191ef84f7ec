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


def _row_levels(multiple: int, capacity: int) -> list[int]:
  """The row counts a batch may be padded to: ``multiple`` x 2^k below ``capacity``, and it."""
  levels, rows = [], multiple
  while rows < capacity:
    levels.append(rows)
    rows *= 2
  return levels + [capacity]


def plan_batches(lengths: Sequence[int], *, max_length: int, batch_size: int,
                 multiple: int = 1, lengths_ladder: Sequence[int] | None = None
                 ) -> list[tuple[np.ndarray, int, int]]:
  """Batches of items (pairs, or groups by their longest prompt) sorted by length:
  ``[(indices, T, rows)]``, longest first, with the fewest padded token slots.

  A batch pads its prompts to ``T``, the smallest rung of ``lengths_ladder`` (default
  :func:`length_ladder`; its longest rung at least ``max_length``) that holds its longest (a
  prompt longer than ``max_length`` is cut to it), and its items to ``rows``: ``multiple`` (the
  data-parallel devices) times a power of two, or the capacity ``batch_size * max_length // T``
  (rounded down to ``multiple``), so only a few shapes compile. Among the ways to cut the sorted
  items into consecutive batches of such shapes, the plan is one with the fewest token slots
  ``sum(T * rows)`` (then the fewest batches), found exactly by dynamic programming: every batch
  but the last is full (a free row could take the next, shorter item at no cost), so a batch
  starting at item ``i`` has one of ``log2(capacity)`` sizes.

  >>> [(i.tolist(), t, rows) for i, t, rows in plan_batches([20, 500, 30, 90], max_length=512,
  ...                                                    batch_size=2)]
  [([1], 512, 1), ([3], 128, 1), ([2, 0], 64, 2)]
  """
  if batch_size < 1 or multiple < 1:
    raise ValueError(f'batch_size and multiple must be >= 1, got {batch_size} and {multiple}')
  ladder = np.asarray(sorted(lengths_ladder) if lengths_ladder else length_ladder(max_length))
  if ladder[-1] < max_length:
    raise ValueError(f'the longest length of the ladder {ladder.tolist()} must hold '
                     f'max_length={max_length}')
  clipped = np.minimum(np.asarray(lengths, np.int64), max_length)
  order = np.argsort(-clipped, kind='stable')
  rung_length = ladder[np.searchsorted(ladder, clipped[order])]
  budget = batch_size * max_length
  n = len(order)
  # best[i]: (token slots, batches) of the best plan of the items from i on; take[i]: its first
  # batch's (items, rows).
  best: list[tuple[int, int]] = [(0, 0)] * (n + 1)
  take: list[tuple[int, int]] = [(0, 0)] * n
  for i in range(n - 1, -1, -1):
    t = int(rung_length[i])
    capacity = max(multiple, budget // t // multiple * multiple)
    choice = None
    for rows in _row_levels(multiple, capacity):
      items = min(rows, n - i)  # the last batch may hold fewer (a smaller level costs less)
      slots, batches = best[i + items]
      cost = (slots + t * rows, batches + 1)
      if choice is None or cost < choice[0]:
        choice = (cost, (items, rows))
    best[i], take[i] = choice
  plan, i = [], 0
  while i < n:
    items, rows = take[i]
    plan.append((order[i:i + items], int(rung_length[i]), rows))
    i += items
  return plan
