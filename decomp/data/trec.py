"""TREC run files (``qid Q0 docid rank score tag``) and qrels: streaming readers, an atomic writer.

A run is ``{query_id: {doc_id: score}}`` in file order (the rank column is read and checked but,
as trec_eval does, order comes from the scores). Malformed lines follow
:mod:`decomp.data.reading` (``errors="raise"``: ``file:line`` errors; ``"skip"``: counted); a
document listed twice for one query is a data problem (the first line wins, counted in
``problems``; ``strict=True`` raises).

Qrels: TREC's ``qid iter docid rel`` (whitespace separated) or BEIR's tab-separated
``query-id corpus-id score`` with a header line; :func:`read_qrels` reads both.
"""

from __future__ import annotations

import math
import os
from typing import Iterator, Mapping

from decomp._files import write_atomic
from decomp.data.reading import LoadStats, Problems, RowError, read_rows
from decomp.metrics import rank_run

Run = dict  # {query_id: {doc_id: score}}
Qrels = dict  # {query_id: {doc_id: relevance}}


def _number(text: str, what: str, kind=float):
  try:
    value = kind(text)
  except ValueError:
    raise RowError(f"{what} {text!r} is not a number", f"bad {what}") from None
  if kind is float and not math.isfinite(value):
    raise RowError(f"{what} {text!r} is not finite", f"bad {what}")
  return value


def parse_run_line(line: str) -> tuple[str, str, int, float, str]:
  """``'q1 Q0 d7 1 12.5 tag'`` -> ``('q1', 'd7', 1, 12.5, 'tag')``; raises :class:`RowError`."""
  fields = line.split()
  if len(fields) != 6:
    raise RowError(f"expected 6 fields 'qid Q0 docid rank score tag', got {len(fields)}",
                   "wrong field count")
  qid, _, docid, rank, score, tag = fields
  return qid, docid, _number(rank, "rank", int), _number(score, "score"), tag


def iter_run(path: str, *, errors: str = "raise", stats: LoadStats | None = None
             ) -> Iterator[tuple[int, str, str, int, float, str]]:
  """Streams ``(line_no, qid, docid, rank, score, tag)`` of a run file."""
  for line_no, (qid, docid, rank, score, tag) in read_rows(
      path, lambda line, _: parse_run_line(line), errors=errors, stats=stats, json_lines=False):
    yield line_no, qid, docid, rank, score, tag


def read_run(path: str, *, top_k: int | None = None, errors: str = "raise",
             stats: LoadStats | None = None, problems: Problems | None = None,
             strict: bool = False) -> tuple[Run, dict[tuple[str, str], int]]:
  """Reads a run: ``({qid: {docid: score}}, {(qid, docid): line_no})``.

  ``top_k`` keeps each query's best ``top_k`` documents (trec_eval's order: score, then document
  id, descending). Line numbers let later checks (unknown documents) name the line.
  """
  problems = problems if problems is not None else Problems(strict=strict)
  run: Run = {}
  lines: dict[tuple[str, str], int] = {}
  for line_no, qid, docid, _, score, _ in iter_run(path, errors=errors, stats=stats):
    docs = run.setdefault(qid, {})
    if docid in docs:
      problems.report("duplicate id",
                      f"{path}:{line_no}: document {docid!r} listed again for query {qid!r} "
                      f"(first at line {lines[qid, docid]}; the first is kept)")
      continue
    docs[docid] = score
    lines[qid, docid] = line_no
  if top_k is not None:
    run = {q: {d: docs[d] for d in rank_run(docs)[:top_k]} for q, docs in run.items()}
  return run, lines


def format_score(score: float) -> str:
  """A score's shortest exact text (``repr``): read back, it is the same float, so ties and
  order survive the file."""
  return repr(float(score))


def write_run(path: str, run: Mapping[str, Mapping[str, float]], *, tag: str = "decomp",
              top_k: int | None = None) -> str:
  """Writes a run atomically (a temporary file in the same folder, fsync, rename).

  Documents are written best first in trec_eval's order (score, then document id, descending)
  with ranks 1, 2, ...; scores at full precision. A reader never sees a torn file.
  """
  if not tag or any(c.isspace() for c in tag):
    raise ValueError(f"run tag {tag!r} must be a non-empty word")
  path = os.path.abspath(path)

  def write(f):
    for qid, docs in run.items():
      for rank, docid in enumerate(rank_run(docs)[:top_k], start=1):
        if any(c.isspace() for c in qid + docid):
          raise ValueError(f"query {qid!r} / document {docid!r}: ids in a run file must not "
                           "contain whitespace")
        f.write(f"{qid} Q0 {docid} {rank} {format_score(docs[docid])} {tag}\n")

  write_atomic(path, write)
  return path


def _is_beir_header(line: str) -> bool:
  fields = line.strip().split("\t")
  return len(fields) == 3 and not _is_int(fields[2])


def _is_int(text: str) -> bool:
  try:
    int(text)
    return True
  except ValueError:
    return False


def read_qrels(path: str, *, errors: str = "raise", stats: LoadStats | None = None,
               problems: Problems | None = None, strict: bool = False
               ) -> tuple[Qrels, dict[tuple[str, str], int]]:
  """Reads qrels, TREC (``qid iter docid rel``) or BEIR (``query-id\\tcorpus-id\\tscore``, with a
  header): ``({qid: {docid: relevance}}, {(qid, docid): line_no})``. A pair judged twice is a
  data problem (the first judgment is kept)."""
  problems = problems if problems is not None else Problems(strict=strict)

  def parse(line, _):
    fields = line.split("\t") if "\t" in line else line.split()
    if len(fields) == 3:
      qid, docid, rel = fields
    elif len(fields) == 4:
      qid, _, docid, rel = fields
    else:
      raise RowError(f"expected 'query-id corpus-id score' or 'qid iter docid rel', got "
                     f"{len(fields)} fields", "wrong field count")
    qid, docid = qid.strip(), docid.strip()
    if not qid or not docid:
      raise RowError("empty query or document id", "empty id")
    return qid, docid, _number(rel.strip(), "relevance", int)

  qrels: Qrels = {}
  lines: dict[tuple[str, str], int] = {}
  for line_no, (qid, docid, rel) in read_rows(path, parse, errors=errors, stats=stats,
                                              json_lines=False, skip_header=_is_beir_header):
    judged = qrels.setdefault(qid, {})
    if docid in judged:
      problems.report("duplicate id", f"{path}:{line_no}: query {qid!r} judges document "
                      f"{docid!r} again (first at line {lines[qid, docid]}; the first is kept)")
      continue
    judged[docid] = rel
    lines[qid, docid] = line_no
  return qrels, lines
