"""Reranking with a trained decomp model: a notebook call and a resumable command.

Notebook::

  scores = decomp.rerank.rerank("runs/my_run", "what do cats do", ["purr", "bark"])

CLI (one collection: ``--out`` is the run file; several: a directory of ``<name>.trec``)::

  python -m decomp.rerank --model WORKDIR_OR_HF_DIR [--preset NAME] --data DIR [DIR ...] \
      --run RUN [RUN ...] --out OUT.trec [--top-k 100] [--batch-size N] [--split test]

scores every (query, candidate) pair of the run's top-k with the model, writes a TREC run
(atomically), and prints NDCG@10, MRR@10 and Recall@k per collection under trec_eval's
convention (and, with several collections, an MRB-style table per task family and overall).

Resuming: scores go to ``OUT.partial`` as they are computed (one JSON line per pair, fsynced per
batch, headed by the arguments that produced them). A killed rerank started again with the same
arguments reads it, scores only the missing pairs, and writes ``OUT`` once every pair is scored;
``OUT`` is never half-written.

All model loading is in :func:`load_scorer`: a :class:`Scorer` is anything with
``score(instructions, queries, documents) -> np.ndarray``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np

from decomp.data.types import Group, Item

PARTIAL_SUFFIX = ".partial"


class Scorer(Protocol):
  """Scores (instruction, query, document) triples; higher means more relevant."""

  image_size: int | None  # images are read at this side (None: the model reads no images)

  def score(self, instructions: Sequence[str], queries: Sequence[Any],
            documents: Sequence[Any]) -> np.ndarray:
    ...


def _item(x) -> Item:
  if isinstance(x, Item):
    return x
  if isinstance(x, str):
    return Item(text=x)
  if isinstance(x, np.ndarray):
    return Item(image=x)
  raise TypeError(f"a query or document must be a str, an image array or an Item, got "
                  f"{type(x).__name__}")


def _pair_groups(instructions, queries, documents) -> list[Group]:
  """One single-document group per pair: the encoders of decomp read groups."""
  return [Group(query_id=str(i), task="", instruction=ins, query=_item(q), docs=(_item(d),),
                labels=(0,), doc_ids=("",), doc_kinds=("",))
          for i, (ins, q, d) in enumerate(zip(instructions, queries, documents))]


@dataclasses.dataclass
class PairScorer:
  """A jitted scorer: ``encode(groups) -> arrays [B, 1, ...]`` then ``score_fn(arrays) -> [B, 1]``.

  Every batch is padded to ``batch_size`` pairs (and the encoders pad tokens to a fixed length),
  so one program is compiled once and reused.
  """

  encode: Callable[[list[Group]], Mapping[str, np.ndarray]]
  score_fn: Callable[[Mapping[str, np.ndarray]], Any]
  batch_size: int = 32
  image_size: int | None = None
  description: str = ""

  def score(self, instructions, queries, documents) -> np.ndarray:
    if not len(instructions) == len(queries) == len(documents):
      raise ValueError(f"score: {len(instructions)} instructions, {len(queries)} queries and "
                       f"{len(documents)} documents")
    groups = _pair_groups(instructions, queries, documents)
    out = []
    for start in range(0, len(groups), self.batch_size):
      chunk = groups[start:start + self.batch_size]
      real = len(chunk)
      chunk += [chunk[-1]] * (self.batch_size - real)
      arrays = self.encode(chunk)
      out.append(np.asarray(self.score_fn(arrays), np.float32).reshape(-1)[:real])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


# --- model loading: the one place that knows how a model is built -------------------------------


def _is_workdir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, "config.json")) and os.path.isdir(
      os.path.join(path, "checkpoints"))


def load_scorer(path: str, preset: str | None = None, *, batch_size: int = 32,
                score: str | None = None, step: int | None = None,
                max_length: int = 512, allow_code: bool = False) -> PairScorer:
  """A :class:`Scorer` for a training workdir or a Hugging Face / base-checkpoint directory.

  Both open as a :class:`decomp.train.Run` (``Run.open`` / ``Run.from_model_dir``): the same
  prompt encoder and forward pass as training's evaluation.

  Args:
    path: a decomp workdir (its latest checkpoint, or ``step``) or a model directory
      (``config.json`` + safetensors + tokenizer).
    preset: a prompt preset of :data:`decomp.models.presets.PRESETS` for a model directory
      (None: decomp's own template); a workdir carries its own.
    batch_size: pairs per jitted call.
    score: ``'sft'`` ranks by ``z_y - z_n`` (P(yes)'s logit), ``'cl'`` by ``z_y``; default the
      workdir's evaluation score, ``'sft'`` for a model directory.
    max_length: tokens per prompt of a model directory (a workdir uses its own).
    allow_code: run objective code a workdir's config names outside the installed packages
      (docs/trust.md).
  """
  from decomp.models.presets import PRESETS
  from decomp.train.run import Run

  if preset is not None and preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"model {path!r}: not a directory (a decomp workdir or a model dir)")
  if score not in (None, "sft", "cl"):
    raise ValueError(f"score must be 'sft' or 'cl', got {score!r}")
  if _is_workdir(path):
    if preset is not None:
      raise ValueError(f"--preset {preset!r}: the workdir {path} reads its own prompt preset")
    run = Run.open(path, step, overrides=("mesh.data=1", "num_devices=1"), allow_code=allow_code)
    description = f"{path} (step {run.step}, score {score or run.score})"
  else:
    run = Run.from_model_dir(path, preset=preset or "", max_length=max_length, score=score)
    description = f"{path} (preset {preset or 'decomp'}, score {run.score})"
  score = score or run.score
  scores = run.scores_fn()
  return PairScorer(
      encode=lambda groups: run.encoder.encode(groups, 1),
      score_fn=lambda arrays: scores(run.params, run.frozen, arrays)[score],
      batch_size=batch_size, image_size=run.image_size, description=description)


# --- the notebook call ---------------------------------------------------------------------------

_SCORERS: dict[tuple, PairScorer] = {}


def rerank(model, query, documents: Sequence[Any], *, instruction: str = "",
           batch_size: int = 32, preset: str | None = None) -> np.ndarray:
  """Scores ``documents`` for ``query`` (``[len(documents)]``, higher is more relevant).

  Args:
    model: a :class:`Scorer` (e.g. from :func:`load_scorer`) or a path (loaded once, cached).
    query, documents: strings, ``[H, W, 3]`` uint8 images or :class:`~decomp.data.Item` s
      (images are read when the model has a vision tower).
    instruction: the task instruction of the prompt.
  """
  if isinstance(model, (str, os.PathLike)):
    key = (os.path.abspath(model), preset, batch_size)
    if key not in _SCORERS:
      _SCORERS[key] = load_scorer(str(model), preset, batch_size=batch_size)
    model = _SCORERS[key]
  documents = [_item(d) for d in documents]
  n = len(documents)
  return np.asarray(model.score([instruction] * n, [_item(query)] * n, documents))


# --- reranking a collection, resumable -----------------------------------------------------------


def _read_partial(path: str, header: dict) -> dict[tuple[str, str], float]:
  """Scores already written by an interrupted rerank with the same ``header``; drops a torn
  last line (a kill mid-write) from the file."""
  if not os.path.exists(path):
    return {}
  with open(path, "rb") as f:
    data = f.read()
  complete = data[:data.rfind(b"\n") + 1]
  if len(complete) != len(data):
    with open(path, "r+b") as f:
      f.truncate(len(complete))
  lines = complete.decode("utf-8").splitlines()
  if not lines:
    return {}
  try:
    found = json.loads(lines[0])["rerank"]
  except (json.JSONDecodeError, KeyError, TypeError):
    raise ValueError(f"{path}:1: not a decomp rerank partial file; remove it") from None
  if found != header:
    raise ValueError(f"{path} holds the scores of another rerank ({found}), not of {header}; "
                     "remove it or rerun with the same arguments")
  done = {}
  for line_no, line in enumerate(lines[1:], start=2):
    try:
      qid, docid, value = json.loads(line)
      done[str(qid), str(docid)] = float(value)
    except (json.JSONDecodeError, ValueError, TypeError):
      raise ValueError(f"{path}:{line_no}: corrupt partial score line; remove the file") from None
  return done


class _Progress:
  def __init__(self, enabled: bool, total: int, initial: int, desc: str):
    self.bar = None
    if enabled:
      from tqdm.auto import tqdm
      self.bar = tqdm(total=total, initial=initial, desc=desc, unit="doc", dynamic_ncols=True,
                      file=sys.stderr)

  def update(self, n: int) -> None:
    if self.bar is not None:
      self.bar.update(n)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


def rerank_groups(scorer: Scorer, groups: Sequence[Group], out: str, *, header: dict,
                  batch_size: int = 32, tag: str = "decomp", progress: bool = True,
                  desc: str = "rerank") -> dict[str, dict[str, float]]:
  """Scores every candidate of ``groups``; writes the TREC run ``out``; returns the run.

  Resumable through ``out + '.partial'`` (see the module docstring); ``header`` identifies the
  rerank (model, data, run, top-k) so that a partial file of another one is refused.
  """
  from decomp.data.trec import write_run

  partial = out + PARTIAL_SUFFIX
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  done = _read_partial(partial, header)
  todo = [(g, i) for g in groups for i in range(len(g.docs))
          if (g.query_id, g.doc_ids[i]) not in done]
  total = sum(len(g.docs) for g in groups)
  bar = _Progress(progress, total, total - len(todo), desc)
  start = time.perf_counter()
  try:
    with open(partial, "a", encoding="utf-8") as f:
      if f.tell() == 0:
        f.write(json.dumps({"rerank": header}) + "\n")
      for begin in range(0, len(todo), batch_size):
        chunk = todo[begin:begin + batch_size]
        scores = scorer.score([g.instruction for g, _ in chunk], [g.query for g, _ in chunk],
                              [g.docs[i] for g, i in chunk])
        lines = []
        for (g, i), s in zip(chunk, np.asarray(scores).reshape(-1).tolist()):
          done[g.query_id, g.doc_ids[i]] = s
          lines.append(json.dumps([g.query_id, g.doc_ids[i], s]) + "\n")
        f.write("".join(lines))
        f.flush()
        os.fsync(f.fileno())
        bar.update(len(chunk))
  finally:
    bar.close()
  seconds = time.perf_counter() - start
  if todo and progress:
    print(f"{desc}: {len(todo)} documents in {seconds:.1f} s ({len(todo) / seconds:.1f} docs/s)",
          file=sys.stderr)
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
  parser.add_argument("--batch-size", type=int, default=32, help="pairs per jitted call")
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
  parser.add_argument("--allow-outside-paths", action="store_true",
                      help="image paths of the collection may leave its folder")
  parser.add_argument("--max-image-pixels", type=int, default=50_000_000,
                      help="larger images are refused by name (0: no limit)")
  parser.add_argument("--allow-code", action="store_true",
                      help="run objective code a workdir's config.json names outside the "
                      "installed packages (docs/trust.md)")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  from decomp import metrics
  from decomp.data import beir

  if len(args.run) not in (1, len(args.data)):
    print(f"error: {len(args.run)} runs for {len(args.data)} collections (give one, or one "
          "per collection)", file=sys.stderr)
    return 2
  if args.top_k < 1 or args.batch_size < 1:
    print("error: --top-k and --batch-size must be positive", file=sys.stderr)
    return 2
  runs = args.run * len(args.data) if len(args.run) == 1 else args.run
  several = len(args.data) > 1
  scorer = load_scorer(args.model, args.preset, batch_size=args.batch_size, score=args.score,
                       step=args.step, allow_code=args.allow_code)
  print(f"model: {scorer.description}", file=sys.stderr)
  cutoffs = sorted({10, args.top_k})
  note = metrics.convention_note("trec_eval")
  summary, per_query, tasks, names = {}, {}, [], []
  for data_dir, run_path in zip(args.data, runs):
    collection = beir.load_beir(data_dir, split=args.split, run=run_path, top_k=args.top_k,
                                errors=args.errors, strict=args.strict,
                                load_images=scorer.image_size is not None,
                                image_size=scorer.image_size,
                                allow_outside_paths=args.allow_outside_paths,
                                max_image_pixels=args.max_image_pixels or None)
    groups = beir.rerank_groups(collection)
    name = collection.name
    if name in summary:
      print(f"error: two collections are named {name!r}", file=sys.stderr)
      return 2
    out = os.path.join(args.out, f"{name}.trec") if several else args.out
    header = {"model": os.path.abspath(args.model), "preset": args.preset,
              "score": args.score, "step": args.step, "data": os.path.abspath(data_dir),
              "run": os.path.abspath(run_path), "split": args.split, "top_k": args.top_k}
    run = rerank_groups(scorer, groups, out, header=header, batch_size=args.batch_size,
                        tag=args.tag, progress=not args.quiet, desc=name)
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
    summary[name] = {"out": os.path.abspath(out), "task": collection.task,
                     "num_queries": result["num_queries"], "convention": "trec_eval",
                     **{k: v for k, v in result["mean"].items()},
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
