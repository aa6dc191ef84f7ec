"""BEIR-layout test collections plus a first-stage TREC run -> reranking and training groups.

Layout (BEIR's; https://github.com/beir-cellar/beir)::

  <dir>/corpus.jsonl        {"_id": "d1", "title": "...", "text": "...", "image": "img/d1.png"}
  <dir>/queries.jsonl       {"_id": "q1", "text": "...", "image": ..., "instruction": ...}
  <dir>/qrels/<split>.tsv   query-id <TAB> corpus-id <TAB> score   (a header line)
  <dir>/collection.json     optional: {"name", "task", "instruction"} defaults

A document's text is ``title + " " + text``; ``image`` (any row) is a path relative to the file's
folder, or a list of one path (see :func:`decomp.data.mrb.parse_item`); a query's optional
``instruction`` overrides the collection's. Files are streamed; only the queries and documents
the run and the qrels name are kept in memory (all corpus ids are remembered, to find duplicates
and unknown ids).

Malformed rows follow :mod:`decomp.data.reading` (``errors``). Data problems are counted in
``Collection.stats.problems`` (``strict=True`` raises): duplicate ids, qrels for unknown queries
or documents, run lines naming unknown queries or documents (dropped from the candidates),
queries whose candidates hold no judged document, and training queries without a relevant
document or without a negative candidate (skipped).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping

from decomp.data.mrb import MAX_IMAGE_PIXELS, parse_item
from decomp.data.reading import (LoadStats, Problems, RowError, check_file_name, read_json_file,
                                  read_rows)
from decomp.data.trec import Qrels, Run, read_qrels, read_run
from decomp.data.types import TASK_MODALITY, Group, Item
from decomp.metrics import rank_run

META_FILE = "collection.json"


@dataclasses.dataclass
class CollectionStats:
  """Per-file row counts (:class:`LoadStats`) and the collection's data problems."""

  files: dict = dataclasses.field(default_factory=dict)  # path -> LoadStats
  problems: Problems = dataclasses.field(default_factory=Problems)

  def summary(self) -> str:
    lines = [s.summary() for s in self.files.values()]
    return "\n".join(lines + [f"data problems: {self.problems.summary()}"])


@dataclasses.dataclass
class Collection:
  """A test collection as read: the items it needs, its judgments and (optionally) a run."""

  name: str
  directory: str
  split: str
  task: str
  instruction: str
  queries: dict  # query_id -> Item (those the qrels or the run name)
  instructions: dict  # query_id -> instruction (per-query override or the collection's)
  corpus: dict  # doc_id -> Item (those the qrels or the run name)
  qrels: Qrels
  run: Run | None
  run_lines: dict  # (qid, docid) -> line of the run file
  stats: CollectionStats

  @property
  def modality(self) -> str:
    return TASK_MODALITY.get(self.task, "")


def _meta(directory: str) -> dict:
  path = os.path.join(directory, META_FILE)
  if not os.path.exists(path):
    return {}
  meta = read_json_file(path)
  if not isinstance(meta, dict) or set(meta) - {"name", "task", "instruction"}:
    raise ValueError(f"{path}: expected an object with keys name, task, instruction")
  return meta


def _read_items(path: str, keep, *, kind: str, errors: str, stats: CollectionStats,
                image_size, load_images, **images) -> tuple[dict, dict, set]:
  """Streams a BEIR corpus/queries file: ``(items kept, instructions, all ids)``."""
  folder = os.path.dirname(os.path.abspath(path))
  file_stats = stats.files.setdefault(path, LoadStats())
  items, instructions, seen, first_line = {}, {}, set(), {}

  def parse(row, line_no):
    if not isinstance(row, dict):
      raise RowError(f"a row must be a JSON object, got {type(row).__name__}", "not an object")
    if "_id" not in row:
      raise RowError("missing field '_id'", "missing field")
    row_id = str(row["_id"])
    if row_id in seen:
      stats.problems.report("duplicate id", f"{path}:{line_no}: {kind} id {row_id!r} again "
                            f"(first at line {first_line[row_id]}; the first is kept)")
      return None
    seen.add(row_id)
    first_line[row_id] = line_no
    if not keep(row_id):
      return None
    text = row.get("text")
    if text is not None and not isinstance(text, str):
      raise RowError("field 'text' must be a string", "bad item")
    title = row.get("title")
    if title is not None and not isinstance(title, str):
      raise RowError("field 'title' must be a string", "bad item")
    text = " ".join(t for t in (title, text) if t and t.strip()) or None
    item = parse_item({"text": text, "image": row.get("image")}, kind, folder, image_size,
                      load_images, **images)
    instruction = row.get("instruction")
    if instruction is not None and not isinstance(instruction, str):
      raise RowError("field 'instruction' must be a string", "bad field")
    return row_id, item, instruction

  for _, value in read_rows(path, parse, errors=errors, stats=file_stats):
    if value is not None:
      row_id, item, instruction = value
      items[row_id] = item
      if instruction is not None:
        instructions[row_id] = instruction
  return items, instructions, seen


def load_beir(directory: str, *, split: str = "test", run: str | Run | None = None,
              top_k: int | None = 100, name: str | None = None, task: str | None = None,
              instruction: str | None = None, errors: str = "raise", strict: bool = False,
              load_images: bool = True, image_size: int | None = None,
              keep_judged_documents: bool = True, allow_outside_paths: bool = False,
              max_image_pixels: int | None = MAX_IMAGE_PIXELS) -> Collection:
  """Reads a BEIR-layout directory and, optionally, a run of first-stage candidates.

  Args:
    directory: the collection (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``).
    split: which qrels file (a plain name: ``qrels/<split>.tsv``).
    run: a TREC run file (or ``{qid: {docid: score}}``) of candidates; None: none.
    top_k: candidates kept per query (trec_eval's order); None keeps all.
    name, task, instruction: override ``collection.json`` (defaults: the folder's name, the
      name, no instruction).
    errors: ``"raise"`` or ``"skip"`` malformed rows; strict: data problems raise.
    load_images: decode images (False: check that the files exist).
    image_size: resize images to a square of this side (None keeps them).
    keep_judged_documents: keep every document the qrels judge (training positives), not only
      the run's candidates.
    allow_outside_paths, max_image_pixels: as :func:`decomp.data.mrb.read_jsonl` (image paths
      stay in the collection's folder; images above the pixel limit are refused).
  """
  directory = os.path.abspath(directory)
  check_file_name(split, "split")
  meta = _meta(directory)
  name = name or meta.get("name") or os.path.basename(directory)
  task = task or meta.get("task") or name
  instruction = instruction if instruction is not None else meta.get("instruction", "")
  stats = CollectionStats(problems=Problems(strict=strict))
  paths = {k: os.path.join(directory, f) for k, f in (
      ("corpus", "corpus.jsonl"), ("queries", "queries.jsonl"),
      ("qrels", os.path.join("qrels", f"{split}.tsv")))}
  for key, path in paths.items():
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{directory}: no {key} file {path} (BEIR layout)")
  qrels_stats = stats.files.setdefault(paths["qrels"], LoadStats())
  qrels, qrels_lines = read_qrels(paths["qrels"], errors=errors, stats=qrels_stats,
                                  problems=stats.problems)
  run_lines: dict = {}
  run_source = "run"
  if isinstance(run, (str, os.PathLike)):
    run_source = str(run)
    run_stats = stats.files.setdefault(run_source, LoadStats())
    run, run_lines = read_run(run_source, top_k=top_k, errors=errors, stats=run_stats,
                              problems=stats.problems)
  elif run is not None:
    run = {q: {d: docs[d] for d in rank_run(docs)[:top_k]} for q, docs in run.items()}
  wanted_queries = set(qrels) | set(run or {})
  wanted_docs = {d for docs in (run or {}).values() for d in docs}
  if keep_judged_documents or run is None:
    wanted_docs |= {d for judged in qrels.values() for d in judged}
  kw = dict(errors=errors, stats=stats, image_size=image_size, load_images=load_images,
            allow_outside_paths=allow_outside_paths, max_image_pixels=max_image_pixels)
  queries, instructions, _ = _read_items(paths["queries"], wanted_queries.__contains__,
                                         kind="query", **kw)
  corpus, _, corpus_ids = _read_items(paths["corpus"], wanted_docs.__contains__,
                                      kind="document", **kw)
  report = stats.problems.report
  for qid, judged in qrels.items():
    if qid not in queries:
      report("qrels for unknown query", f"{paths['qrels']}:{qrels_lines[qid, next(iter(judged))]}"
             f": query {qid!r} is not in queries.jsonl")
    for docid in judged:
      if docid not in corpus_ids:
        report("qrels for unknown document", f"{paths['qrels']}:{qrels_lines[qid, docid]}: "
               f"document {docid!r} is not in corpus.jsonl")
  if run is not None:
    where = lambda q, d: f"{run_source}:{run_lines[q, d]}" if (q, d) in run_lines else run_source
    for qid in list(run):
      if qid not in queries:
        report("run names unknown query", f"{where(qid, next(iter(run[qid])))}: query {qid!r} "
               "is not in queries.jsonl (its candidates are dropped)")
        del run[qid]
        continue
      for docid in list(run[qid]):
        if docid not in corpus:
          report("run names unknown document", f"{where(qid, docid)}: document {docid!r} is "
                 "not in corpus.jsonl (dropped from the candidates)")
          del run[qid][docid]
      if not run[qid]:
        del run[qid]
  return Collection(name=name, directory=directory, split=split, task=task,
                    instruction=instruction, queries=queries,
                    instructions={q: instructions.get(q, instruction) for q in queries},
                    corpus=corpus, qrels=qrels, run=run, run_lines=run_lines, stats=stats)


def _group(c: Collection, qid: str, doc_ids, labels, kinds) -> Group:
  return Group(query_id=qid, task=c.task, instruction=c.instructions[qid], query=c.queries[qid],
               docs=tuple(c.corpus[d] for d in doc_ids), labels=tuple(labels),
               doc_ids=tuple(doc_ids), doc_kinds=tuple(kinds), modality=c.modality)


def rerank_groups(c: Collection) -> list[Group]:
  """One group per run query: all its candidates in run order, labels from the qrels (graded;
  unjudged 0); kinds 'positive', 'negative' (judged non-relevant) or 'unjudged'.

  A query whose candidates hold no judged document is kept (it is reranked; it scores 0 if it
  has relevant documents elsewhere) and counted as a data problem.
  """
  if c.run is None:
    raise ValueError(f"collection {c.name!r} was read without a run: nothing to rerank")
  groups = []
  for qid, docs in c.run.items():
    judged = c.qrels.get(qid, {})
    order = rank_run(docs)
    if not any(d in judged for d in order):
      c.stats.problems.report("query without judged candidates",
                              f"{c.name}: query {qid!r} has no judged document among its "
                              f"{len(order)} candidates")
    labels = [max(judged.get(d, 0), 0) for d in order]
    kinds = ["positive" if judged.get(d, 0) > 0 else "negative" if d in judged else "unjudged"
             for d in order]
    groups.append(_group(c, qid, order, labels, kinds))
  return groups


def training_groups(c: Collection, *, negatives: int | None = None) -> list[Group]:
  """One group per judged query with a relevant document: its relevant documents (labels =
  relevance levels), then as hard negatives the run's top-ranked candidates that are unjudged
  or judged non-relevant (at most ``negatives``; kind 'hard').

  Queries without a relevant document in the corpus, or without a negative candidate, are
  skipped and counted.
  """
  if c.run is None:
    raise ValueError(f"collection {c.name!r} was read without a run: no hard negatives")
  groups = []
  for qid, judged in c.qrels.items():
    if qid not in c.queries:
      continue  # counted when read
    positives = [d for d, r in judged.items() if r > 0 and d in c.corpus]
    if not positives:
      c.stats.problems.report("training query without relevant document",
                              f"{c.name}: query {qid!r} has no relevant document in the corpus "
                              "(skipped)")
      continue
    hard = [d for d in rank_run(c.run.get(qid, {})) if judged.get(d, 0) <= 0]
    hard = hard[:negatives] if negatives is not None else hard
    if not hard:
      c.stats.problems.report("training query without negatives",
                              f"{c.name}: query {qid!r} has no unjudged or non-relevant "
                              "candidate in the run (skipped)")
      continue
    labels = [judged[d] for d in positives] + [0] * len(hard)
    kinds = ["positive"] * len(positives) + ["hard"] * len(hard)
    groups.append(_group(c, qid, positives + hard, labels, kinds))
  return groups
