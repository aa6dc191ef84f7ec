"""Padding groups of different lengths into ``[batch, list_size]`` arrays with ``where`` masks.

Token encoding of the prompts lives in ``decomp.models`` (the reranker); this module only lines
the candidate lists up, so every loss and metric can read ``labels`` and ``where`` directly.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from decomp.data.types import Group, Item


@dataclasses.dataclass(frozen=True)
class GroupBatch:
  """A batch of groups padded to one list size.

  Attributes:
    labels: ``[B, n]`` int32 relevance labels (0 for padding).
    where: ``[B, n]`` bool, True for real documents.
    docs: ``B`` tuples of ``n`` documents (``None`` for padding).
    doc_ids, doc_kinds: ``B`` tuples of ``n`` strings (``""`` for padding).
    queries: the ``B`` query items; instructions, tasks, query_ids, modalities: ``B`` strings.
    groups: the original groups.
  """

  labels: np.ndarray
  where: np.ndarray
  docs: tuple[tuple[Item | None, ...], ...]
  doc_ids: tuple[tuple[str, ...], ...]
  doc_kinds: tuple[tuple[str, ...], ...]
  queries: tuple[Item, ...]
  instructions: tuple[str, ...]
  tasks: tuple[str, ...]
  query_ids: tuple[str, ...]
  modalities: tuple[str, ...]
  groups: tuple[Group, ...]

  @property
  def shape(self) -> tuple[int, int]:
    return self.labels.shape


def pad_groups(groups: Sequence[Group], list_size: int | None = None) -> GroupBatch:
  """Pads ``groups`` to ``list_size`` documents each (default: the longest group).

  Raises:
    ValueError: no groups, or a group longer than ``list_size`` (naming its query id).
  """
  groups = tuple(groups)
  if not groups:
    raise ValueError("pad_groups got no groups")
  longest = max(len(g.docs) for g in groups)
  if list_size is None:
    list_size = longest
  if list_size < 1:
    raise ValueError(f"list_size={list_size} must be >= 1")
  labels = np.zeros((len(groups), list_size), np.int32)
  where = np.zeros((len(groups), list_size), bool)
  docs, doc_ids, doc_kinds = [], [], []
  for b, g in enumerate(groups):
    n = len(g.docs)
    if n > list_size:
      raise ValueError(f"group {g.query_id!r} ({g.task}) has {n} documents, more than "
                       f"list_size={list_size}; raise list_size or cut the list first")
    labels[b, :n] = np.asarray(g.labels, np.int32)
    where[b, :n] = True
    pad = list_size - n
    docs.append(tuple(g.docs) + (None,) * pad)
    doc_ids.append(tuple(g.doc_ids) + ("",) * pad)
    doc_kinds.append(tuple(g.doc_kinds) + ("",) * pad)
  return GroupBatch(
      labels=labels, where=where, docs=tuple(docs), doc_ids=tuple(doc_ids),
      doc_kinds=tuple(doc_kinds), queries=tuple(g.query for g in groups),
      instructions=tuple(g.instruction for g in groups), tasks=tuple(g.task for g in groups),
      query_ids=tuple(g.query_id for g in groups), modalities=tuple(g.modality for g in groups),
      groups=groups)


def batches(groups: Sequence[Group], batch_size: int, *, list_size: int | None = None,
            drop_remainder: bool = False):
  """Yields :class:`GroupBatch` es of ``batch_size`` groups (the last one may be smaller)."""
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be >= 1")
  groups = list(groups)
  if list_size is None and groups:
    list_size = max(len(g.docs) for g in groups)
  for start in range(0, len(groups), batch_size):
    chunk = groups[start:start + batch_size]
    if drop_remainder and len(chunk) < batch_size:
      return
    yield pad_groups(chunk, list_size)
