"""Reranking with a trained decomp model or a model directory: a notebook call and a resumable
command.

Notebook::

  scores = decomp.rerank.rerank("runs/my_run", "what do cats do", ["purr", "bark"])
  scores = decomp.rerank.rerank(QWEN3_DIR, "what do cats do", docs, preset="qwen3-reranker")

CLI (one collection: ``--out`` is the run file; several: a directory of ``<name>.trec``)::

  python -m decomp.rerank --model WORKDIR_OR_HF_DIR [--preset NAME] --data DIR [DIR ...] \
      --run RUN [RUN ...] --out OUT.trec [--top-k 100] [--batch-size N] [--split test]

scores every (query, candidate) pair of the run's top-k, writes a TREC run (atomically) and
prints NDCG@10, MRR@10 and Recall@k per collection (trec_eval's convention; with several
collections, an MRB-style table per task family and overall).
Pairs are sorted by prompt length into token-sized batches padded to a short ladder of lengths
(:func:`~decomp.batching.plan_batches`) on every local device. Refusals are one ``error:``
line, exit status 2, found before the model loads (:mod:`decomp.rerank_inputs`).

Resuming: scores go to ``OUT.partial`` as they are computed (one JSON line per pair, fsynced per
batch, headed by the arguments, the checkpoint step, a fingerprint of the weights and the hash of
every input file). A killed rerank started again with the same inputs reads it, scores only the
missing pairs, and writes ``OUT`` once every pair is scored; ``OUT`` is never half-written; a
partial file of other weights or other data is refused by name.
All model loading is in :func:`load_scorer`; a :class:`Scorer` is anything with ``score``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any, Sequence

import numpy as np

from decomp.data.types import Group
from decomp.rerank_scorer import (PairScorer, ScoredBatch, Scorer, as_item, check_batch_size,
                                  load_scorer, plan_batches)

__all__ = ["PARTIAL_SUFFIX", "PairScorer", "ScoredBatch", "Scorer", "load_scorer", "main",
           "plan_batches", "rerank", "rerank_groups"]

PARTIAL_SUFFIX = ".partial"


# --- the notebook call ---------------------------------------------------------------------------

_SCORERS: dict[tuple, PairScorer] = {}


def rerank(model, query, documents: Sequence[Any], *, instruction: str = "",
           batch_size: int = 32, preset: str | None = None,
           image_size: int | None = None) -> np.ndarray:
  """Scores ``documents`` for ``query`` (``[len(documents)]``, higher is more relevant).

  Args:
    model: a :class:`Scorer` (e.g. from :func:`load_scorer`) or a path (loaded once, cached).
    query, documents: strings, ``[H, W, 3]`` uint8 images or :class:`~decomp.data.Item` s
      (images are read when the model has a vision tower).
    instruction: the task instruction of the prompt ('' : the preset's default one).
    batch_size: pairs per batch at the model's ``max_length`` (see :func:`load_scorer`).
    preset: the prompt preset of a model directory (:data:`decomp.models.presets.PRESETS`).
    image_size: the side a VL model reads images at (see :func:`load_scorer`).
  """
  check_batch_size(batch_size)
  if isinstance(model, (str, os.PathLike)):
    key = (os.path.abspath(model), preset, batch_size, image_size)
    if key not in _SCORERS:
      _SCORERS[key] = load_scorer(str(model), preset, batch_size=batch_size,
                                  image_size=image_size)
    model = _SCORERS[key]
  documents = [as_item(d) for d in documents]
  n = len(documents)
  return np.asarray(model.score([instruction] * n, [as_item(query)] * n, documents))


# --- reranking a collection, resumable -----------------------------------------------------------


class _Progress:
  """A tqdm bar counting documents (its rate: documents/s) with tokens/s beside it."""

  def __init__(self, enabled: bool, total: int, initial: int, desc: str):
    self.bar = None
    self.tokens = 0
    self.start = time.perf_counter()
    if enabled:
      from tqdm.auto import tqdm
      self.bar = tqdm(total=total, initial=initial, desc=desc, unit="doc", dynamic_ncols=True,
                      file=sys.stderr)

  def update(self, docs: int, tokens: int) -> None:
    self.tokens += tokens
    if self.bar is not None:
      self.bar.update(docs)
      if self.tokens:
        rate = self.tokens / max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{rate:,.0f} tokens/s", refresh=False)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


def rerank_groups(scorer: Scorer, groups: Sequence[Group], out: str, *, header: dict,
                  batch_size: int = 32, tag: str = "decomp", progress: bool = True,
                  desc: str = "rerank", report: dict | None = None
                  ) -> dict[str, dict[str, float]]:
  """Scores every candidate of ``groups``; writes the TREC run ``out``; returns the run.

  Resumable through ``out + '.partial'`` (see the module docstring); ``header`` identifies the
  rerank (model, weights, data, run, top-k, ...) so that a partial file of another one is
  refused by :func:`decomp.rerank_inputs.check_partial`. ``report`` (a dict) receives
  ``documents``, ``seconds``, ``tokens`` and ``truncated`` (pairs whose prompt was cut to the
  model's ``max_length``).
  """
  from decomp import rerank_inputs
  from decomp.data.trec import write_run

  check_batch_size(batch_size)
  partial = out + PARTIAL_SUFFIX
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  done = rerank_inputs.read_partial(partial, header)
  todo = [(g, i) for g in groups for i in range(len(g.docs))
          if (g.query_id, g.doc_ids[i]) not in done]
  total = sum(len(g.docs) for g in groups)
  bar = _Progress(progress, total, total - len(todo), desc)
  args = ([g.instruction for g, _ in todo], [g.query for g, _ in todo],
          [g.docs[i] for g, i in todo])
  if hasattr(scorer, "batches"):
    batches = scorer.batches(*args)
  else:  # any Scorer: fixed batches in data order
    batches = (ScoredBatch(np.arange(s, min(s + batch_size, len(todo))), np.asarray(
        scorer.score(*(a[s:s + batch_size] for a in args))).reshape(-1))
               for s in range(0, len(todo), batch_size))
  counts = {"documents": len(todo), "tokens": 0, "truncated": 0}
  start = time.perf_counter()
  try:
    with open(partial, "a", encoding="utf-8") as f:
      if f.tell() == 0:
        f.write(json.dumps({"rerank": header}) + "\n")
      for batch in batches:
        lines = []
        for i, s in zip(batch.indices.tolist(), batch.scores.tolist()):
          g, d = todo[i]
          done[g.query_id, g.doc_ids[d]] = s
          lines.append(json.dumps([g.query_id, g.doc_ids[d], s]) + "\n")
        f.write("".join(lines))
        f.flush()
        os.fsync(f.fileno())
        counts["tokens"] += batch.tokens
        counts["truncated"] += batch.truncated
        bar.update(len(batch.indices), batch.tokens)
  finally:
    bar.close()
  counts["seconds"] = time.perf_counter() - start
  if todo and progress:
    seconds = counts["seconds"]
    print(f"{desc}: {len(todo)} documents in {seconds:.1f} s ({len(todo) / seconds:.1f} docs/s, "
          f"{counts['tokens'] / seconds:,.0f} tokens/s)", file=sys.stderr)
  if report is not None:
    report.update(counts)
  run = {g.query_id: {d: done[g.query_id, d] for d in g.doc_ids} for g in groups}
  write_run(out, run, tag=tag)
  os.remove(partial)
  return run


# --- the command ---------------------------------------------------------------------------------


def _table(rows: list[tuple[str, dict]], names: Sequence[str]) -> str:
  width = max([len(r[0]) for r in rows] + [10])
  head = f"{'':<{width}}  " + "  ".join(f"{n:>10}" for n in names)
  lines = [head] + [f"{label:<{width}}  " + "  ".join(f"{values[n]:>10.4f}" for n in names)
                    for label, values in rows]
  return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m decomp.rerank",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--model", required=True, help="a decomp workdir or a model directory")
  parser.add_argument("--preset", default=None,
                      help="prompt preset of a model directory (decomp.models.presets.PRESETS: "
                      "qwen3-reranker, monoqwen2-vl, gmr, playground; default decomp's template)")
  parser.add_argument("--data", required=True, nargs="+", help="BEIR-layout collection dir(s)")
  parser.add_argument("--run", required=True, nargs="+",
                      help="first-stage TREC run(s): one, or one per collection")
  parser.add_argument("--out", required=True, help="the output run (a directory for several "
                      "collections)")
  parser.add_argument("--top-k", type=int, default=100, help="candidates per query")
  parser.add_argument("--batch-size", type=int, default=32,
                      help="pairs per batch at --max-length (shorter prompts: more per batch)")
  parser.add_argument("--max-length", type=int, default=512,
                      help="tokens per prompt of a model directory (longer: the document text "
                      "is cut; a workdir uses its own)")
  parser.add_argument("--image-size", type=int, default=None,
                      help="side images are read at by a VL model (a multiple of its patch x "
                      "merge size, e.g. 448 for Qwen2-VL; default a workdir's own, else 32)")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                      help="activation dtype of the forward pass (default: a workdir's own, "
                      "float32 for a model dir)")
  parser.add_argument("--split", default="test", help="qrels split (qrels/<split>.tsv)")
  parser.add_argument("--score", choices=("sft", "cl"), default=None,
                      help="z_y - z_n or z_y (default: the model's)")
  parser.add_argument("--step", type=int, default=None, help="workdir checkpoint (default last)")
  parser.add_argument("--tag", default="decomp", help="run tag of the output")
  parser.add_argument("--errors", choices=("raise", "skip"), default="raise",
                      help="malformed rows: stop (file:line) or skip and count")
  parser.add_argument("--strict", action="store_true",
                      help="data problems (duplicate ids, unknown documents, ...) are errors")
  parser.add_argument("--quiet", action="store_true", help="no progress bar")
  parser.add_argument("--debug", action="store_true",
                      help="show the traceback of a refusal (default: one 'error:' line)")
  parser.add_argument("--allow-outside-paths", action="store_true",
                      help="image paths of the collection may leave its folder")
  parser.add_argument("--max-image-pixels", type=int, default=50_000_000,
                      help="larger images are refused by name (0: no limit)")
  parser.add_argument("--allow-code", action="store_true",
                      help="run objective code a workdir's config.json names outside the "
                      "installed packages (docs/trust.md)")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  """The command: 0 when every collection is written; a refusal is one ``error:`` line on
  stderr and exit status 2 (``--debug`` raises it with its traceback)."""
  from decomp.train import interrupt
  from decomp.train.errors import report_error, user_errors
  args = parse_args(argv)
  try:
    # Ctrl-C: one 'interrupted:' line and exit 130; the scores fsynced to OUT.partial so far are
    # kept, and the same command resumes from them (decomp.train.interrupt says why os._exit).
    with interrupt.handling_sigint():
      return _main(args)
  except (*user_errors(), OSError) as e:
    if args.debug:
      raise
    return report_error(e)
  except KeyboardInterrupt as e:
    if args.debug:
      raise
    interrupt.exit_interrupted(e)


@dataclasses.dataclass
class _Job:
  """One collection to rerank, checked before the model loads."""
  data_dir: str
  run_path: str
  collection: Any  # read without images (every row, qrel and run line checked)
  out: str
  header: dict


def _plan(args: argparse.Namespace) -> list[_Job]:
  """Everything the command can check without the model: arguments, model path, preset, every
  collection (files, rows, run), output paths and names, and the partial files' headers."""
  from decomp import rerank_inputs
  from decomp.data import beir
  if len(args.run) not in (1, len(args.data)):
    raise ValueError(f"{len(args.run)} runs for {len(args.data)} collections (give one, or one "
                     "per collection)")
  for flag, value in (("--top-k", args.top_k), ("--batch-size", args.batch_size),
                      ("--max-length", args.max_length), ("--image-size", args.image_size)):
    if value is not None and value < 1:
      raise ValueError(f"{flag} must be a positive integer, got {value}")
  if args.max_image_pixels < 0:
    raise ValueError(f"--max-image-pixels must be >= 0, got {args.max_image_pixels}")
  rerank_inputs.check_tag(args.tag)
  rerank_inputs.check_model_path(args.model, args.preset, args.step)
  several = len(args.data) > 1
  rerank_inputs.check_output(args.out, directory=several)
  runs = args.run * len(args.data) if len(args.run) == 1 else args.run
  jobs: list[_Job] = []
  for data_dir, run_path in zip(args.data, runs):
    files = rerank_inputs.collection_files(data_dir, args.split)
    if not os.path.isfile(run_path):
      raise FileNotFoundError(f"--run {run_path}: no such file")
    files["run"] = run_path
    collection = beir.load_beir(data_dir, split=args.split, run=run_path, top_k=args.top_k,
                                errors=args.errors, strict=args.strict, load_images=False,
                                allow_outside_paths=args.allow_outside_paths,
                                max_image_pixels=args.max_image_pixels or None)
    same = [j.data_dir for j in jobs if j.collection.name == collection.name]
    if same:
      raise ValueError(f"two collections are named {collection.name!r} ({same[0]} and "
                       f"{data_dir}): their runs would be one file; name one in its "
                       "collection.json")
    out = os.path.join(args.out, f"{collection.name}.trec") if several else args.out
    if several:
      rerank_inputs.check_output(out, directory=False)
    inputs = rerank_inputs.fingerprint(args.model, args.step, files)
    header = {"model": os.path.abspath(args.model), "preset": args.preset,
              "score": args.score, "dtype": args.dtype, "max_length": args.max_length,
              "image_size": args.image_size, "data": os.path.abspath(data_dir),
              "run": os.path.abspath(run_path), "split": args.split, "top_k": args.top_k,
              "inputs": inputs["inputs"]}
    if not rerank_inputs.is_workdir(args.model) or args.step is not None:
      header.update(step=inputs["step"], weights=inputs["weights"])
    rerank_inputs.check_partial(out + PARTIAL_SUFFIX, header)
    jobs.append(_Job(data_dir, run_path, collection, out, header))
  return jobs


def _main(args: argparse.Namespace) -> int:
  from decomp import metrics, rerank_inputs
  from decomp.data import beir

  jobs = _plan(args)
  scorer = load_scorer(args.model, args.preset, batch_size=args.batch_size, score=args.score,
                       step=args.step, allow_code=args.allow_code, max_length=args.max_length,
                       dtype=args.dtype, image_size=args.image_size)
  print(f"model: {scorer.description}", file=sys.stderr)
  weights = rerank_inputs.weights_fingerprint(args.model, scorer.step)
  cutoffs = sorted({10, args.top_k})
  note = metrics.convention_note("trec_eval")
  several = len(jobs) > 1
  summary, per_query, tasks, names = {}, {}, [], []
  for job in jobs:
    collection = job.collection
    if scorer.image_size is not None:  # the model reads the images: decode them now
      collection = beir.load_beir(job.data_dir, split=args.split, run=job.run_path,
                                  top_k=args.top_k, errors=args.errors, strict=args.strict,
                                  image_size=scorer.image_size,
                                  allow_outside_paths=args.allow_outside_paths,
                                  max_image_pixels=args.max_image_pixels or None)
    groups = beir.rerank_groups(collection)
    name = collection.name
    header = dict(job.header, step=scorer.step, weights=weights)
    counts: dict = {}
    run = rerank_groups(scorer, groups, job.out, header=header, batch_size=args.batch_size,
                        tag=args.tag, progress=not args.quiet, desc=name, report=counts)
    if counts.get("truncated"):
      print(f"{name}: {counts['truncated']} of {counts['documents']} prompts were longer than "
            f"max_length={scorer.max_length} tokens: their document text was cut from the end",
            file=sys.stderr)
    result = metrics.evaluate_run(collection.qrels, run, cutoffs=cutoffs)
    problems = collection.stats.problems
    skipped = {p: s.skipped for p, s in collection.stats.files.items() if s.skipped}
    if problems.counts or skipped:
      print(f"{name}: {collection.stats.summary()}", file=sys.stderr)
      for message in problems.messages[:5]:
        print(f"  {message}", file=sys.stderr)
    shown = {"NDCG@10": result["mean"]["ndcg@10"], "MRR@10": result["mean"]["mrr@10"],
             f"Recall@{args.top_k}": result["mean"][f"recall@{args.top_k}"]}
    names = list(shown)
    print(f"{name} ({note}; {result['num_queries']} queries, "
          f"{len(result['queries_not_in_run'])} judged queries not in the run)")
    print(_table([(name, shown)], names))
    summary[name] = {"out": os.path.abspath(job.out), "task": collection.task,
                     "num_queries": result["num_queries"], "convention": "trec_eval",
                     **{k: v for k, v in result["mean"].items()},
                     "truncated_pairs": counts.get("truncated", 0),
                     "data_problems": dict(problems.counts), "skipped_rows": skipped}
    for qid, values in result["per_query"].items():
      for key, value in values.items():
        per_query.setdefault(key, []).append(value)
      tasks.append(collection.task)
  if several and tasks:
    table = metrics.aggregate(per_query, tasks)
    rows = [(f"task {t}", v) for t, v in table["per_task"].items()]
    rows += [(f"modality {m}", v) for m, v in table["per_modality"].items()]
    rows += [("ALL (mean over tasks)", table["tasks"]), ("all queries", table["queries"])]
    keys = {"NDCG@10": "ndcg@10", "MRR@10": "mrr@10", f"Recall@{args.top_k}":
            f"recall@{args.top_k}"}
    print(f"\nMRB-style summary ({note})")
    print(_table([(label, {n: v[k] for n, k in keys.items()}) for label, v in rows], list(keys)))
    summary["ALL"] = table["tasks"]
  print(json.dumps(summary))
  return 0


if __name__ == "__main__":
  sys.exit(main())
