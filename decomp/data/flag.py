"""FlagEmbedding's reranker fine-tuning JSONL -> :class:`~decomp.data.types.Group` (streaming).

One JSON object per line (FlagEmbedding's ``FlagEmbedding/finetune/reranker`` format)::

  {"query": "what is ...",               # a string, or {"text": ..., "image": ...}
   "pos": ["relevant passage", ...],      # non-empty; entries: strings or {"text", "image"}
   "neg": ["hard negative", ...],         # non-empty
   "pos_scores": [9.1, ...],              # optional teacher scores, aligned with pos ...
   "neg_scores": [2.3, ...],              # ... and with neg (both or neither)
   "pos_labels": [2, ...],                # optional relevance grades >= 1, aligned with pos
   "prompt": "Given a query ...",         # optional: the instruction (default "")
   "image": "q.png",                      # optional: the query's image (a path or a list of one)
   "query_id": "q17", "task": "t2t"}      # optional (default ids '<file stem>:<line>')

Image paths are relative to the file's folder. Positives come first, then negatives, unless
``shuffle_seed`` permutes each row (deterministically, with its teacher scores). Teacher scores
become ``Group.teacher_scores`` (for the ``kd`` weight); ``pos_labels`` the positives' labels
(default 1 each; the listwise weights read grades). Malformed rows follow
:mod:`decomp.data.reading` (``errors``); a repeated ``query_id`` (the row is skipped) and a
passage listed both as positive and negative (kept) are data problems (``strict`` raises).
"""

from __future__ import annotations

import math
import os
from typing import Iterator

import numpy as np

from decomp.data.mrb import MAX_IMAGE_PIXELS, parse_item
from decomp.data.reading import LoadStats, Problems, RowError, read_rows
from decomp.data.types import TASK_MODALITY, Group


def _entry(value, where: str, folder: str, image_size, load_images, **images):
  if isinstance(value, str):
    value = {"text": value}
  return parse_item(value, where, folder, image_size, load_images, **images)


def _scores(row, field: str, count: int):
  values = row[field]
  if not isinstance(values, list) or len(values) != count:
    raise RowError(f"{field!r} must be a list of {count} numbers (one per passage)",
                   "bad teacher score")
  for v in values:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
      raise RowError(f"{field!r} holds {v!r}, not a finite number", "bad teacher score")
  return [float(v) for v in values]


def _grades(row, count: int) -> list[int]:
  values = row["pos_labels"]
  if not isinstance(values, list) or len(values) != count:
    raise RowError(f"'pos_labels' must be a list of {count} relevance grades (one per positive)",
                   "bad label")
  for v in values:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise RowError(f"'pos_labels' holds {v!r}, not an integer relevance grade >= 1",
                     "bad label")
  return values


def parse_flag_row(row, *, query_id: str, folder: str, task: str = "t2t",
                   image_size: int | None = None, load_images: bool = True,
                   shuffle: np.random.Generator | None = None, allow_outside_paths: bool = False,
                   max_image_pixels: int | None = MAX_IMAGE_PIXELS) -> Group:
  """One decoded row -> :class:`Group`; raises :class:`RowError` (no file/line prefix)."""
  images = dict(allow_outside_paths=allow_outside_paths, max_image_pixels=max_image_pixels)
  if not isinstance(row, dict):
    raise RowError(f"a row must be a JSON object, got {type(row).__name__}", "not an object")
  for key in ("query", "pos", "neg"):
    if key not in row:
      raise RowError(f"missing field {key!r}", "missing field")
  query = row["query"]
  if isinstance(query, str):
    query = {"text": query}
  if isinstance(query, dict) and "image" in row:
    query = {**query, "image": row["image"]}
  query = parse_item(query, "query", folder, image_size, load_images, **images)
  docs, labels, ids, kinds = [], [], [], []
  for field, label, kind, prefix in (("pos", 1, "positive", "p"), ("neg", 0, "hard", "n")):
    values = row[field]
    if not isinstance(values, list):
      raise RowError(f"{field!r} must be a list", "bad field")
    if not values:
      raise RowError(f"{field!r} is empty", f"empty {field}")
    grades = (_grades(row, len(values)) if field == "pos" and "pos_labels" in row
              else [label] * len(values))
    for i, value in enumerate(values):
      docs.append(_entry(value, f"{field}[{i}]", folder, image_size, load_images, **images))
      labels.append(grades[i])
      ids.append(f"{query_id}-{prefix}{i}")
      kinds.append(kind)
  has_pos, has_neg = "pos_scores" in row, "neg_scores" in row
  if has_pos != has_neg:
    raise RowError("give both 'pos_scores' and 'neg_scores' or neither", "bad teacher score")
  teacher = None
  if has_pos:
    teacher = (_scores(row, "pos_scores", len(row["pos"]))
               + _scores(row, "neg_scores", len(row["neg"])))
  instruction = row.get("prompt", "")
  if not isinstance(instruction, str):
    raise RowError("field 'prompt' must be a string", "bad field")
  task = row.get("task", task)
  if not isinstance(task, str):
    raise RowError("field 'task' must be a string", "bad field")
  if shuffle is not None:
    order = shuffle.permutation(len(docs))
    docs, labels, ids, kinds = ([x[i] for i in order] for x in (docs, labels, ids, kinds))
    teacher = None if teacher is None else [teacher[i] for i in order]
  return Group(query_id=query_id, task=task, instruction=instruction, query=query,
               docs=tuple(docs), labels=tuple(labels), doc_ids=tuple(ids),
               doc_kinds=tuple(kinds), modality=TASK_MODALITY.get(task, ""),
               teacher_scores=None if teacher is None else tuple(teacher))


def read_flag(path: str, *, task: str = "t2t", image_size: int | None = None,
              load_images: bool = True, errors: str = "raise", strict: bool = False,
              shuffle_seed: int | None = None, stats: LoadStats | None = None,
              problems: Problems | None = None, allow_outside_paths: bool = False,
              max_image_pixels: int | None = MAX_IMAGE_PIXELS) -> Iterator[Group]:
  """Streams the groups of a FlagEmbedding reranker JSONL file (constant memory).

  Args:
    path: the file; image paths in it are relative to its folder.
    task: the task family of rows without a ``task`` field (for per-task tables).
    image_size, load_images, shuffle_seed: as :func:`decomp.data.mrb.read_jsonl`.
    errors: ``"raise"`` / ``"skip"`` malformed rows (counted in ``stats``).
    strict: data problems raise instead of being counted in ``problems``.
    allow_outside_paths, max_image_pixels: as :func:`decomp.data.mrb.read_jsonl` (image paths
      stay in the file's folder; images above the pixel limit are refused).
  """
  problems = problems if problems is not None else Problems(strict=strict)
  folder = os.path.dirname(os.path.abspath(path))
  stem = os.path.splitext(os.path.basename(path))[0]
  first_line: dict[str, int] = {}

  def parse(row, line_no):
    query_id = f"{stem}:{line_no}"
    if isinstance(row, dict) and "query_id" in row:
      if not isinstance(row["query_id"], str) or not row["query_id"]:
        raise RowError("field 'query_id' must be a non-empty string", "bad field")
      query_id = row["query_id"]
    shuffle = None if shuffle_seed is None else np.random.default_rng([shuffle_seed, line_no])
    group = parse_flag_row(row, query_id=query_id, folder=folder, task=task,
                           image_size=image_size, load_images=load_images, shuffle=shuffle,
                           allow_outside_paths=allow_outside_paths,
                           max_image_pixels=max_image_pixels)
    if query_id in first_line:
      problems.report("duplicate id", f"{path}:{line_no}: query_id {query_id!r} again (first "
                      f"at line {first_line[query_id]}; this row is skipped)")
      return None
    first_line[query_id] = line_no
    texts = lambda kind: {(d.text, d.image_path) for d, k in zip(group.docs, group.doc_kinds)
                          if k == kind}
    both = texts("positive") & texts("hard")
    if both:
      problems.report("passage both positive and negative",
                      f"{path}:{line_no}: {len(both)} passage(s) in both 'pos' and 'neg'")
    return group

  for _, group in read_rows(path, parse, errors=errors, stats=stats):
    if group is not None:
      yield group


def load_flag(path: str, **kwargs) -> tuple[list[Group], LoadStats, Problems]:
  """Reads a whole file: ``(groups, stats, problems)``; keyword arguments as :func:`read_flag`."""
  stats = LoadStats()
  problems = Problems(strict=kwargs.pop("strict", False))
  groups = list(read_flag(path, stats=stats, problems=problems, **kwargs))
  return groups, stats, problems
