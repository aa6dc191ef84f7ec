"""decomp.rerank's resumable scoring with a stand-in scorer (no model): nothing scored twice."""

import json
import os
import shutil

import numpy as np
import pytest

from decomp import rerank as rerank_lib
from decomp.data.types import Group, Item


class HashScorer:
  """Deterministic scores from the texts; counts the pairs it scores; can die mid-way."""

  image_size = None

  def __init__(self, die_after=None):
    self.scored = []
    self.die_after = die_after

  def score(self, instructions, queries, documents):
    if self.die_after is not None and len(self.scored) >= self.die_after:
      raise KeyboardInterrupt("killed")
    self.scored += [(q.text, d.text) for q, d in zip(queries, documents)]
    return np.array([(hash((q.text, d.text)) % 1000) / 7.0 for q, d in zip(queries, documents)],
                    np.float32)


def _groups():
  return [Group(query_id=f"q{i}", task="t2t", instruction="", query=Item(text=f"query {i}"),
                docs=tuple(Item(text=f"doc {i} {j}") for j in range(5)), labels=(1, 0, 0, 0, 0),
                doc_ids=tuple(f"d{i}-{j}" for j in range(5)), doc_kinds=("",) * 5)
          for i in range(4)]


def test_killed_rerank_resumes_without_rescoring(tmp_path):
  out = str(tmp_path / "out.trec")
  header = {"model": "m", "top_k": 5}
  reference = rerank_lib.rerank_groups(HashScorer(), _groups(), str(tmp_path / "ref.trec"),
                                       header=header, batch_size=3, progress=False)
  dying = HashScorer(die_after=6)
  with pytest.raises(KeyboardInterrupt):
    rerank_lib.rerank_groups(dying, _groups(), out, header=header, batch_size=3, progress=False)
  assert not os.path.exists(out)  # no torn output
  partial = out + rerank_lib.PARTIAL_SUFFIX
  assert len(open(partial).read().splitlines()) == 1 + 6
  with open(partial, "a") as f:
    f.write('["q2", "d2-0", 1.')  # a kill in the middle of a line
  with pytest.raises(ValueError, match="another rerank"):
    rerank_lib.rerank_groups(HashScorer(), _groups(), out, header={"model": "other"},
                             progress=False)
  resumed = HashScorer()
  run = rerank_lib.rerank_groups(resumed, _groups(), out, header=header, batch_size=3,
                                 progress=False)
  assert len(resumed.scored) == 20 - 6 and not set(resumed.scored) & set(dying.scored)
  assert run == reference and not os.path.exists(partial)
  assert open(out).read() == open(tmp_path / "ref.trec").read()


def test_notebook_call_with_a_scorer():
  scores = rerank_lib.rerank(HashScorer(), "query 1", ["doc 1 0", "doc 1 1"])
  ref = HashScorer().score(["", ""], [Item(text="query 1")] * 2,
                           [Item(text="doc 1 0"), Item(text="doc 1 1")])
  np.testing.assert_array_equal(scores, ref)
  import decomp
  np.testing.assert_array_equal(decomp.rerank.rerank(HashScorer(), "query 1", ["doc 1 0", "doc 1 1"]),
                                ref)


def test_pair_scorer_pads_batches_to_one_shape():
  shapes = []

  def encode(groups, lengths):
    shapes.append((len(groups), lengths))
    return {"x": np.array([len(g.docs[0].text) for g in groups], np.float32)}

  scorer = rerank_lib.PairScorer(encode=encode, score_fn=lambda a: a["x"][:, None], batch_size=4)
  got = scorer.score([""] * 6, ["q"] * 6, ["a", "bb", "ccc", "d", "ee", "fff"])
  np.testing.assert_array_equal(got, [1, 2, 3, 1, 2, 3])
  assert shapes == [(4, None), (4, None)]
  with pytest.raises(TypeError, match="must be a str"):
    scorer.score([""], ["q"], [3])


def test_pairs_sorted_by_length_fill_token_sized_batches():
  """With prompt lengths: longest first, each batch padded to a ladder length and holding at most
  batch_size * max_length tokens, cut where that pads the fewest token slots; scores come back
  in the caller's order and truncated pairs are counted."""
  calls = []

  def encode(groups, lengths):
    calls.append((len(groups), lengths))
    return {"x": np.array([len(g.docs[0].text) for g in groups], np.float32)}

  docs = ["x" * n for n in (30, 200, 20, 600, 64, 10, 120)]
  scorer = rerank_lib.PairScorer(
      encode=encode, score_fn=lambda a: a["x"][:, None], batch_size=2, max_length=512,
      prompt_lengths=lambda groups: [len(g.docs[0].text) for g in groups], rows_multiple=2)
  batches = list(scorer.batches([""] * 7, ["q"] * 7, docs))
  # 2 x 512 + 2 x 128 + 4 x 64 = 1,536 slots (one batch per rung: 2,048).
  assert calls == [(2, (512,)), (2, (128,)), (4, (64,))]
  assert [b.indices.tolist() for b in batches] == [[3, 1], [6, 4], [0, 2, 5]]
  assert [b.truncated for b in batches] == [1, 0, 0]
  assert batches[0].tokens == 512 + 200 and batches[2].tokens == 30 + 20 + 10
  np.testing.assert_array_equal(scorer.score([""] * 7, ["q"] * 7, docs), [len(d) for d in docs])


@pytest.mark.parametrize("seed", range(40))
def test_batch_plan_pads_the_fewest_slots_of_any_cut(seed):
  """plan_batches against every way of cutting the sorted items into consecutive batches (each
  padded to its ladder rung and to multiple x 2^k rows or the capacity): the fewest slots."""
  import itertools

  from decomp.batching import length_ladder, plan_batches
  rng = np.random.default_rng(seed)
  n, multiple = int(rng.integers(1, 10)), int(rng.choice([1, 2]))
  batch_size, max_length = int(rng.integers(1, 4)), int(rng.choice([64, 100, 512]))
  lengths = rng.integers(1, max_length + 40, size=n)
  plan = plan_batches(lengths, max_length=max_length, batch_size=batch_size, multiple=multiple)
  ladder = np.asarray(length_ladder(max_length))
  clipped = np.minimum(lengths, max_length)
  flat = np.concatenate([indices for indices, _, _ in plan])
  assert sorted(flat.tolist()) == list(range(n))
  assert (np.diff(clipped[flat]) <= 0).all()  # longest first
  for indices, t, rows in plan:
    capacity = max(multiple, batch_size * max_length // t // multiple * multiple)
    assert t == ladder[np.searchsorted(ladder, clipped[indices].max())]
    assert len(indices) <= rows <= capacity and (rows == capacity or rows % multiple == 0)
  ordered = np.sort(clipped)[::-1]

  def cost(piece):
    t = int(ladder[np.searchsorted(ladder, piece.max())])
    capacity = max(multiple, batch_size * max_length // t // multiple * multiple)
    if len(piece) > capacity:
      return None
    rows = multiple
    while rows < len(piece):
      rows *= 2
    return t * min(rows, capacity)

  best = None
  for cuts in itertools.product([0, 1], repeat=n - 1):
    edges = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
    costs = [cost(ordered[a:b]) for a, b in zip(edges, edges[1:])]
    if None not in costs:
      best = sum(costs) if best is None else min(best, sum(costs))
  assert sum(t * rows for _, t, rows in plan) == best
  with pytest.raises(ValueError, match="must hold max_length"):
    plan_batches(lengths, max_length=max_length, batch_size=batch_size,
                 lengths_ladder=[max_length // 2])


class StepScorer(HashScorer):
  """The stand-in as ``load_scorer`` returns it for a workdir opened at ``step``."""

  description = "stand-in"
  max_length = 512

  def __init__(self, step, die_after=None):
    super().__init__(die_after)
    self.step = step


def test_a_resume_never_mixes_checkpoints_or_data(tmp_path, monkeypatch, capsys):
  """The partial file records the checkpoint step used, a fingerprint of its files and a hash of
  every input file: a newer checkpoint, other weights at the same step or data edited between
  the kill and the rerun are refused by name; the same ones resume."""
  workdir = tmp_path / "run"
  (workdir / "checkpoints" / "3").mkdir(parents=True)
  (workdir / "checkpoints" / "3" / "weights").write_bytes(b"three")
  (workdir / "config.json").write_text("{}")
  coll = tmp_path / "coll"
  (coll / "qrels").mkdir(parents=True)
  (coll / "corpus.jsonl").write_text("".join(
      json.dumps({"_id": f"d{i}", "text": f"doc {i}"}) + "\n" for i in range(6)))
  (coll / "queries.jsonl").write_text(json.dumps({"_id": "q0", "text": "a query"}) + "\n")
  (coll / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\n")
  run = tmp_path / "bm25.trec"
  run.write_text("".join(f"q0 Q0 d{i} {i + 1} {6 - i} bm25\n" for i in range(6)))
  out = tmp_path / "out.trec"
  argv = ["--model", str(workdir), "--data", str(coll), "--run", str(run), "--out", str(out),
          "--quiet", "--batch-size", "2"]
  scorer = {}
  monkeypatch.setattr(rerank_lib, "load_scorer", lambda *a, step=None, **k: scorer["next"](step))

  scorer["next"] = lambda step: StepScorer(3, die_after=2)
  with pytest.raises(KeyboardInterrupt):  # --debug: raised, not the command's exit 130
    rerank_lib.main(argv + ["--debug"])
  partial = str(out) + rerank_lib.PARTIAL_SUFFIX
  header = json.loads(open(partial).readline())["rerank"]
  assert header["step"] == 3 and len(header["inputs"]) == 4 and header["weights"]

  (workdir / "checkpoints" / "5").mkdir()  # training went on: the newest step is now 5
  scorer["next"] = lambda step: StepScorer(5 if step is None else step)
  capsys.readouterr()
  assert rerank_lib.main(argv) == 2
  assert "step (3 -> 5)" in capsys.readouterr().err

  corpus = (coll / "corpus.jsonl").read_text()
  (coll / "corpus.jsonl").write_text(corpus.replace("doc 5", "doc five"))
  assert rerank_lib.main(argv + ["--step", "3"]) == 2
  assert "input corpus (its content changed)" in capsys.readouterr().err
  (coll / "corpus.jsonl").write_text(corpus)

  weights = workdir / "checkpoints" / "3" / "weights"
  shutil.copy2(weights, tmp_path / "weights.bak")
  weights.write_bytes(b"other")
  assert rerank_lib.main(argv + ["--step", "3"]) == 2
  assert "weights (the model files changed)" in capsys.readouterr().err
  shutil.copy2(tmp_path / "weights.bak", weights)  # the same bytes and modification time

  resumed = StepScorer(3)
  scorer["next"] = lambda step: resumed
  assert rerank_lib.main(argv + ["--step", "3"]) == 0
  assert len(resumed.scored) == 4 and out.exists() and not os.path.exists(partial)


def test_ctrl_c_of_the_command_is_one_line_and_exit_130(monkeypatch, capsys):
  """Ctrl-C while scoring: one 'interrupted:' line, status 130 (the .partial file keeps what was
  scored; test_killed_rerank_resumes_without_rescoring covers the resume)."""
  import decomp.rerank as rerank_lib
  from decomp.train import interrupt

  def scoring(args):
    raise KeyboardInterrupt

  def leave(status):
    raise SystemExit(status)

  monkeypatch.setattr(rerank_lib, "_main", scoring)
  monkeypatch.setattr(interrupt.os, "_exit", leave)
  with pytest.raises(SystemExit) as left:
    rerank_lib.main(["--model", "m", "--data", "d", "--run", "r", "--out", "o"])
  assert left.value.code == interrupt.EXIT_STATUS
  assert capsys.readouterr().err.strip().splitlines() == [
      "interrupted: stopped before the run finished; rerun the same command to resume"]
