"""Plain records shared by the data pipeline, the reranker's prompt encoder and the trainer.

Data never imports models; models read these records by attribute only.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

# Task families and MRB's modality grouping of them: one table, owned by the math core's metrics.
from decomp.metrics import MRB_MODALITY as TASK_MODALITY  # noqa: E402

TASKS = tuple(TASK_MODALITY)
TEXT_ONLY_TASKS = ('t2t',)  # families whose queries and documents carry no image


@dataclasses.dataclass(frozen=True)
class Item:
  """A query or a document: text, an image, or both (fused-modal)."""

  text: str | None = None
  image: np.ndarray | None = None  # [H, W, 3] uint8, already loaded
  image_path: str | None = None  # where the image came from (real data), for error messages

  @property
  def modality(self) -> str:
    """'T', 'I' or 'IT' (text, image, image+text)."""
    has_text = bool(self.text)
    has_image = self.image is not None
    if has_text and has_image:
      return "IT"
    if has_image:
      return "I"
    if has_text:
      return "T"
    raise ValueError("an Item needs text, an image, or both")


@dataclasses.dataclass(frozen=True)
class Group:
  """One training/evaluation instance: a query with its candidate list.

  ``labels[i]`` is 1 for a relevant document and 0 otherwise; ``doc_kinds[i]`` says how the
  candidate was chosen ('positive', 'hard', 'random') so that update magnitudes can be split by
  difficulty.
  """

  query_id: str
  task: str  # e.g. 't2t', 't2i', 'i2t', 'i2i', 'it2it', 't2vd'
  instruction: str
  query: Item
  docs: Sequence[Item]
  labels: Sequence[int]
  doc_ids: Sequence[str]
  doc_kinds: Sequence[str]
  modality: str = ""  # 'single', 'cross' or 'fused' (MRB's grouping)
  # A teacher's score of each document (distillation, e.g. FlagEmbedding's pos/neg_scores).
  teacher_scores: tuple[float, ...] | None = None

  def __post_init__(self):
    n = len(self.docs)
    if n == 0:
      raise ValueError(f"group {self.query_id!r} has an empty candidate list")
    for name in ("labels", "doc_ids", "doc_kinds", "teacher_scores"):
      if getattr(self, name) is not None and len(getattr(self, name)) != n:
        raise ValueError(
            f"group {self.query_id!r}: {name} has {len(getattr(self, name))} entries for {n} docs")
