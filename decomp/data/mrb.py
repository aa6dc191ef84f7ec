"""MRB-style reranking data on local disk: a streaming JSONL reader and a writer.

Schema: one JSON object per line (blank lines are allowed and counted)::

  {"query_id": "coco-17",                      # str, required, unique per file is advisable
   "task": "t2i",                              # str, required (t2t, t2i, i2t, i2i, it2it, t2vd
                                               #   or any dataset name)
   "instruction": "Find the image ...",        # str, required (may be "")
   "query": {"text": "...", "image": "q.png"}, # at least one of text / image (image: a path
                                               #   or a list of one path)
   "positives": [{"id": "d1", "text": "...", "image": "img/d1.png", "label": 1}, ...],
   "negatives": [{"id": "d9", "image": "img/d9.png", "kind": "hard"}, ...],
   "modality": "cross"}                        # optional: single / cross / fused

* ``positives`` and ``negatives`` must be non-empty lists of documents; a document needs text,
  an image or both; ``id`` defaults to ``<query_id>-p<i>`` / ``<query_id>-n<i>``; ``label``
  defaults to 1 for positives (must be >= 1) and 0 for negatives (must be 0); ``kind`` defaults
  to ``"positive"`` / ``"negative"`` (the playground writes ``"hard"`` / ``"random"``).
* Image paths are relative to the JSONL file's folder and must stay inside it (``../`` out of it,
  or an absolute path elsewhere, is a row error unless ``allow_outside_paths=True``; the check
  is on the path as written, so a symlink you placed in the folder is followed). Images are read
  with PIL, converted to RGB ``uint8 [H, W, 3]`` and resized to ``image_size`` (``None``: keep);
  one above ``max_image_pixels`` (default :data:`MAX_IMAGE_PIXELS`, 50 megapixels) is refused
  by name from its header, before it is decoded.
* a document's optional ``teacher_score`` (a number; all documents of a row or none) becomes
  ``Group.teacher_scores`` (distillation).
* ``modality`` defaults to MRB's grouping of known task names (``TASK_MODALITY``), else ``""``.

Documents come out positives first, then negatives, in file order; pass ``shuffle_seed`` to
permute them per row (deterministically) -- metrics break score ties by position, so a
constant-score model would otherwise look perfect.

Errors: with ``errors="raise"`` (default) any malformed row raises
``ValueError("<file>:<line>: <what is wrong>")``. With ``errors="skip"`` the row is skipped and
counted in :class:`LoadStats` (per reason, with the first messages kept) and a warning is logged
at the end; nothing is dropped silently.
"""

from __future__ import annotations

import collections
import json
import os
import re
from typing import Iterable, Iterator

import numpy as np

from decomp.data.reading import LoadStats, RowError, read_rows
from decomp.data.types import TASK_MODALITY, Group, Item

__all__ = ["ImageTooLarge", "LoadStats", "MAX_IMAGE_PIXELS", "RowError", "load_image",
           "load_jsonl", "parse_item", "parse_row", "read_jsonl", "write_jsonl"]

# The default pixel limit of a data image (about 8000 x 6000): a 10000 x 10000 PNG would take
# 300 MB decoded, before the resize to a few hundred pixels. ``max_image_pixels=None`` lifts it.
MAX_IMAGE_PIXELS = 50_000_000


class ImageTooLarge(ValueError):
  """An image above the pixel limit, refused before it is decoded."""


def load_image(path: str, image_size: int | None = None, *,
               max_image_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
  """Reads an image file into RGB ``uint8 [H, W, 3]``, resized to ``image_size`` if given.

  Raises :class:`ImageTooLarge` naming the file when it has more than ``max_image_pixels``
  pixels (read from its header; nothing is decoded). PIL's own hard limit (twice
  ``PIL.Image.MAX_IMAGE_PIXELS``) gives the same error.
  """
  import warnings

  from PIL import Image

  try:
    with warnings.catch_warnings():  # PIL's warning names no file; the limit below does
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      im = Image.open(path)  # reads the header only
  except Image.DecompressionBombError as e:
    raise ImageTooLarge(f"{path}: {e}") from None
  with im:
    width, height = im.size
    if max_image_pixels is not None and width * height > max_image_pixels:
      raise ImageTooLarge(
          f"{path}: {width} x {height} pixels ({width * height / 1e6:.1f} megapixels) is above "
          f"the limit of {max_image_pixels / 1e6:g} megapixels (max_image_pixels; raise it, or "
          "None, to read such images)")
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      im = im.convert("RGB")
    if image_size is not None and im.size != (image_size, image_size):
      im = im.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.uint8).copy()


def image_path_in(folder: str, image: str, *, allow_outside_paths: bool = False) -> str:
  """Where a data row's ``image`` path points: relative to ``folder`` and inside it.

  Raises :class:`RowError` when it leaves ``folder`` (``../``, or an absolute path elsewhere)
  unless ``allow_outside_paths``: a row must not make the reader open any file on the machine.
  The check is lexical (symlinks inside the folder are followed).
  """
  path = os.path.normpath(os.path.join(folder, image))  # an absolute image replaces folder
  if not allow_outside_paths:
    root = os.path.normpath(os.path.abspath(folder))
    if os.path.commonpath([root, os.path.abspath(path)]) != root:
      raise RowError(f"image path {image!r} leads outside the data folder {root} (pass "
                     "allow_outside_paths=True to read files outside it)", "outside path")
  return path


def parse_item(obj, where: str, folder: str, image_size, load_images, *,
               allow_outside_paths: bool = False,
               max_image_pixels: int | None = MAX_IMAGE_PIXELS) -> Item:
  """``{"text", "image"}`` -> :class:`Item`; image paths relative to ``folder`` and inside it
  (:func:`image_path_in`), images up to ``max_image_pixels``."""
  if not isinstance(obj, dict):
    raise RowError(f"{where} must be an object with 'text' and/or 'image', got {obj!r:.80}",
                   "bad item")
  text = obj.get("text")
  image_rel = obj.get("image")
  if text is not None and not isinstance(text, str):
    raise RowError(f"{where}.text must be a string", "bad item")
  if isinstance(image_rel, list):  # a list of paths: Item holds one image today
    if len(image_rel) > 1:
      raise RowError(f"{where}.image lists {len(image_rel)} images; an item holds at most one",
                     "several images")
    image_rel = image_rel[0] if image_rel else None
  if image_rel is not None and not isinstance(image_rel, str):
    raise RowError(f"{where}.image must be a path string or a list of one", "bad item")
  if not text and not image_rel:
    raise RowError(f"{where} has neither text nor image", "empty item")
  image, image_path = None, None
  if image_rel:
    try:
      image_path = image_path_in(folder, image_rel, allow_outside_paths=allow_outside_paths)
    except RowError as e:
      raise RowError(f"{where}: {e}", e.reason) from None
    if not os.path.isfile(image_path):
      raise RowError(f"{where}: image {image_rel!r} not found (looked for {image_path})",
                     "missing image")
    if load_images:
      try:
        image = load_image(image_path, image_size, max_image_pixels=max_image_pixels)
      except ImageTooLarge as e:
        raise RowError(f"{where}: image {e}", "image too large") from None
      except Exception as e:  # PIL raises several types for broken files
        raise RowError(f"{where}: image {image_rel!r} cannot be read: {e}", "bad image") from e
  return Item(text=text or None, image=image, image_path=image_path)


def parse_row(row, *, folder: str, image_size: int | None = 32, load_images: bool = True,
              shuffle: np.random.Generator | None = None, allow_outside_paths: bool = False,
              max_image_pixels: int | None = MAX_IMAGE_PIXELS) -> Group:
  """One decoded JSON row -> :class:`Group`; raises :class:`RowError` (no file/line prefix)."""
  images = dict(allow_outside_paths=allow_outside_paths, max_image_pixels=max_image_pixels)
  if not isinstance(row, dict):
    raise RowError(f"a row must be a JSON object, got {type(row).__name__}", "not an object")
  for key in ("query_id", "task", "instruction", "query", "positives", "negatives"):
    if key not in row:
      raise RowError(f"missing field {key!r}", "missing field")
  query_id, task, instruction = row["query_id"], row["task"], row["instruction"]
  for key in ("query_id", "task", "instruction"):
    if not isinstance(row[key], str):
      raise RowError(f"field {key!r} must be a string", "bad field")
  query = parse_item(row["query"], "query", folder, image_size, load_images, **images)
  docs, labels, ids, kinds, teacher = [], [], [], [], []
  for field, default_label, default_kind, prefix in (("positives", 1, "positive", "p"),
                                                     ("negatives", 0, "negative", "n")):
    values = row[field]
    if not isinstance(values, list):
      raise RowError(f"{field!r} must be a list", "bad field")
    if not values:
      raise RowError(f"{field!r} is empty", f"empty {field}")
    for i, doc in enumerate(values):
      where = f"{field}[{i}]"
      docs.append(parse_item(doc, where, folder, image_size, load_images, **images))
      label = doc.get("label", default_label)
      if not isinstance(label, int) or isinstance(label, bool):
        raise RowError(f"{where}.label must be an integer, got {label!r}", "bad label")
      if (label >= 1) != (field == "positives") or label < 0:
        raise RowError(f"{where}.label={label} contradicts its list ({field})", "bad label")
      labels.append(label)
      ids.append(str(doc.get("id", f"{query_id}-{prefix}{i}")))
      kinds.append(str(doc.get("kind", default_kind)))
      score = doc.get("teacher_score")
      if score is not None and (not isinstance(score, (int, float)) or isinstance(score, bool)
                                or not np.isfinite(score)):
        raise RowError(f"{where}.teacher_score must be a finite number, got {score!r}",
                       "bad teacher score")
      teacher.append(score)
  if any(s is not None for s in teacher) and any(s is None for s in teacher):
    raise RowError("teacher_score is given for some documents but not all", "bad teacher score")
  teacher = None if teacher[0] is None else [float(s) for s in teacher]
  if len(set(ids)) != len(ids):
    dup = [k for k, v in collections.Counter(ids).items() if v > 1]
    raise RowError(f"duplicate document ids {dup[:3]}", "duplicate id")
  if shuffle is not None:
    order = shuffle.permutation(len(docs))
    docs, labels, ids, kinds = ([x[i] for i in order] for x in (docs, labels, ids, kinds))
    teacher = None if teacher is None else [teacher[i] for i in order]
  modality = row.get("modality", TASK_MODALITY.get(task, ""))
  return Group(query_id=query_id, task=task, instruction=instruction, query=query,
               docs=tuple(docs), labels=tuple(labels), doc_ids=tuple(ids),
               doc_kinds=tuple(kinds), modality=str(modality),
               teacher_scores=None if teacher is None else tuple(teacher))


def read_jsonl(path: str, *, image_size: int | None = 32, errors: str = "raise",
               load_images: bool = True, shuffle_seed: int | None = None,
               stats: LoadStats | None = None, allow_outside_paths: bool = False,
               max_image_pixels: int | None = MAX_IMAGE_PIXELS) -> Iterator[Group]:
  """Streams the groups of an MRB-style JSONL file, one line at a time (constant memory).

  Args:
    path: the JSONL file; image paths in it are relative to its folder.
    image_size: resize images to ``image_size x image_size`` (None keeps their size).
    errors: ``"raise"`` (ValueError naming file and line) or ``"skip"`` (count in ``stats``).
    load_images: False checks that image files exist but does not decode them.
    shuffle_seed: if given, permute each row's documents with a generator seeded by
      ``(shuffle_seed, line number)``.
    stats: a :class:`LoadStats` to fill (read it after the generator is exhausted).
    allow_outside_paths: read image paths that leave the file's folder (``../``, absolute
      paths elsewhere); by default such a row is an error.
    max_image_pixels: refuse (a row error naming the image) images with more pixels than this,
      before decoding them; None: no limit but PIL's.
  """
  folder = os.path.dirname(os.path.abspath(path))

  def parse(row, line_no):
    shuffle = None if shuffle_seed is None else np.random.default_rng([shuffle_seed, line_no])
    return parse_row(row, folder=folder, image_size=image_size, load_images=load_images,
                     shuffle=shuffle, allow_outside_paths=allow_outside_paths,
                     max_image_pixels=max_image_pixels)

  for _, group in read_rows(path, parse, errors=errors, stats=stats):
    yield group


def load_jsonl(path: str, **kwargs) -> tuple[list[Group], LoadStats]:
  """Reads a whole file: ``(groups, stats)``; keyword arguments as :func:`read_jsonl`."""
  stats = LoadStats()
  groups = list(read_jsonl(path, stats=stats, **kwargs))
  return groups, stats


def _safe_name(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def write_jsonl(groups: Iterable[Group], path: str, *, image_dir: str | None = None) -> str:
  """Writes groups in the schema above; images become PNG files next to the JSONL file.

  Images go to ``image_dir`` (default ``<stem>_images/`` beside ``path``) and are referenced by
  relative paths, so the folder can be moved as a whole. Returns ``path``.
  """
  from PIL import Image

  path = os.path.abspath(path)
  folder = os.path.dirname(path)
  stem = os.path.splitext(os.path.basename(path))[0]
  image_dir = image_dir or os.path.join(folder, f"{stem}_images")
  os.makedirs(image_dir, exist_ok=True)

  def item_json(item: Item, name: str) -> dict:
    out = {}
    if item.text:
      out["text"] = item.text
    if item.image is not None:
      file = os.path.join(image_dir, _safe_name(name) + ".png")
      Image.fromarray(np.asarray(item.image, np.uint8)).save(file)
      out["image"] = os.path.relpath(file, folder)
    return out

  with open(path, "w", encoding="utf-8") as f:
    for group in groups:
      row = {"query_id": group.query_id, "task": group.task, "instruction": group.instruction,
             "query": item_json(group.query, f"{group.query_id}__query"),
             "positives": [], "negatives": []}
      teacher = group.teacher_scores or (None,) * len(group.docs)
      for doc, label, doc_id, kind, score in zip(group.docs, group.labels, group.doc_ids,
                                                 group.doc_kinds, teacher):
        entry = {"id": doc_id, **item_json(doc, f"{group.query_id}__{doc_id}"),
                 "label": int(label), "kind": kind}
        if score is not None:
          entry["teacher_score"] = float(score)
        row["positives" if label >= 1 else "negatives"].append(entry)
      if group.modality:
        row["modality"] = group.modality
      f.write(json.dumps(row) + "\n")
  return path
