"""BEIR layout + TREC runs + FlagEmbedding JSONL: readers, problems, the atomic run writer."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from decomp.data import beir, flag, mrb, sources, trec
from decomp.data.reading import DataProblem


def _jsonl(path, rows):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


@pytest.fixture
def collection(tmp_path):
  """A tiny BEIR collection with one of each data problem, and a run of candidates."""
  d = tmp_path / "scifact"
  (d / "img").mkdir(parents=True)
  Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(d / "img" / "d6.png")
  _jsonl(d / "corpus.jsonl", [
      {"_id": "d1", "title": "Cats", "text": "purr softly"},
      {"_id": "d2", "text": "dogs bark"},
      {"_id": "d2", "text": "a duplicate"},                       # line 3: duplicate id
      {"_id": "d3", "text": "fish swim"},
      {"_id": "d4", "text": "birds fly"},
      {"_id": "d5", "text": "cows moo"},
      {"_id": "d6", "image": "img/d6.png"},
  ])
  _jsonl(d / "queries.jsonl", [
      {"_id": "q1", "text": "which animal purrs"},
      {"_id": "q2", "text": "what swims", "instruction": "Find a fact."},
      {"_id": "q3", "image": ["img/d6.png"]},
  ])
  (d / "qrels").mkdir()
  (d / "qrels" / "test.tsv").write_text(
      "query-id\tcorpus-id\tscore\n"
      "q1\td1\t2\nq1\td2\t0\nq1\td99\t1\n"   # d99: unknown document (line 4)
      "q2\td3\t1\nqX\td1\t1\n"               # qX: unknown query (line 6)
      "q1\td1\t1\nq3\td6\t1\n")               # line 7: q1/d1 judged again
  run = tmp_path / "bm25.trec"
  run.write_text(
      "q1 Q0 d2 1 9.5 bm25\nq1 Q0 d1 2 7.25 bm25\nq1 Q0 d3 3 7.25 bm25\n"
      "q1 Q0 d77 4 5 bm25\n"                  # line 4: unknown document
      "q1 Q0 d4 5 4 bm25\nq1 Q0 d5 6 3 bm25\n"
      "q2 Q0 d4 1 2 bm25\nq2 Q0 d5 2 1 bm25\n"  # q2: no judged candidate
      "q9 Q0 d1 1 1 bm25\n"                   # line 9: unknown query
      "q1 Q0 d4 7 0.5 bm25\n"                 # line 10: duplicate (q1, d4)
      "q3 Q0 d6 1 1 bm25\nq3 Q0 d5 2 0.5 bm25\n")
  return d, run


def test_beir_with_run_counts_every_problem(collection):
  d, run = collection
  c = beir.load_beir(str(d), run=str(run), top_k=4)
  assert (c.name, c.task, c.split) == ("scifact", "scifact", "test")
  counts = c.stats.problems.counts
  assert dict(counts) == {"duplicate id": 3, "qrels for unknown document": 1,
                          "qrels for unknown query": 1, "run names unknown document": 1,
                          "run names unknown query": 1}
  text = "\n".join(c.stats.problems.messages)
  assert f"{d}/corpus.jsonl:3" in text and f"{run}:4" in text and f"{run}:9" in text
  assert f"{d}/qrels/test.tsv:4" in text and f"{run}:10" in text
  # top_k=4 is applied before unknown documents are dropped: d77 was among the 4.
  assert list(c.run["q1"]) == ["d2", "d3", "d1"] and "q9" not in c.run
  assert c.corpus["d1"].text == "Cats purr softly" and c.corpus["d2"].text == "dogs bark"
  assert c.corpus["d6"].image.shape == (8, 8, 3) and c.queries["q3"].image is not None
  assert c.instructions == {"q1": "", "q2": "Find a fact.", "q3": ""}
  assert "4 rows loaded" in c.stats.summary() or "rows loaded" in c.stats.summary()


def test_rerank_and_training_groups(collection):
  d, run = collection
  c = beir.load_beir(str(d), run=str(run), top_k=None)
  groups = {g.query_id: g for g in beir.rerank_groups(c)}
  g1 = groups["q1"]
  # trec_eval's order: 9.5, then the 7.25 tie by document id descending (d3 before d1).
  assert g1.doc_ids == ("d2", "d3", "d1", "d4", "d5")
  assert g1.labels == (0, 0, 2, 0, 0)  # graded: the first judgment (2) is kept
  assert g1.doc_kinds == ("negative", "unjudged", "positive", "unjudged", "unjudged")
  assert c.stats.problems.counts["query without judged candidates"] == 1  # q2
  assert groups["q2"].instruction == "Find a fact." and groups["q2"].labels == (0, 0)
  train = {g.query_id: g for g in beir.training_groups(c, negatives=2)}
  assert train["q1"].doc_ids == ("d1", "d2", "d3") and train["q1"].labels == (2, 0, 0)
  assert train["q1"].doc_kinds == ("positive", "hard", "hard")
  assert train["q2"].doc_ids == ("d3", "d4", "d5")  # its positive is not in the run: still kept
  assert train["q3"].doc_ids == ("d6", "d5") and train["q3"].modality == ""


def test_strict_makes_problems_errors(collection):
  d, run = collection
  with pytest.raises(DataProblem, match=r"qrels/test.tsv:7: query 'q1' judges document 'd1' again"):
    beir.load_beir(str(d), run=str(run), strict=True)


def test_malformed_rows_name_file_and_line(collection, tmp_path):
  d, run = collection
  with open(run, "a") as f:
    f.write("q1 Q0 d5 8 high bm25\nq1 Q0 d5\n")
  with pytest.raises(ValueError, match=rf"{run}:13: score 'high' is not a number"):
    beir.load_beir(str(d), run=str(run))
  c = beir.load_beir(str(d), run=str(run), errors="skip")
  run_stats = c.stats.files[str(run)]
  assert run_stats.skipped == 2 and dict(run_stats.reasons) == {"bad score": 1,
                                                                "wrong field count": 1}
  (run).write_text("\n".join(run.read_text().splitlines()[:-2]) + "\n")
  corpus = (d / "corpus.jsonl").read_text().replace('"text": "cows moo"', '"text": 5')
  (d / "corpus.jsonl").write_text(corpus + '{"_id": "d8", "text": 5}\n{broken\n')
  with pytest.raises(ValueError, match=r"corpus.jsonl:6: field 'text' must be a string"):
    beir.load_beir(str(d), run=str(run))
  c = beir.load_beir(str(d), run=str(run), errors="skip")
  # d8 is wanted by nothing: only its id is read. d5 is skipped, so the run's d5 is unknown.
  assert dict(c.stats.files[str(d / "corpus.jsonl")].reasons) == {"bad item": 1,
                                                                  "malformed json": 1}
  assert c.stats.problems.counts["run names unknown document"] == 4  # d77 + d5 of q1, q2, q3


def test_run_writer_is_atomic_and_exact(tmp_path):
  scores = {"q1": {"a": 0.1 + 0.2, "b": 1 / 3, "c": 1 / 3}, "q2": {"x": -1e-300}}
  path = trec.write_run(str(tmp_path / "out" / "run.trec"), scores, tag="mine")
  lines = open(path).read().splitlines()
  assert lines[0] == f"q1 Q0 c 1 {1 / 3!r} mine" and lines[1].startswith("q1 Q0 b 2 ")
  back, line_of = trec.read_run(path)
  assert back == scores and line_of["q2", "x"] == 4
  assert os.listdir(tmp_path / "out") == ["run.trec"]  # no temporary file left
  with pytest.raises(ValueError, match="whitespace"):
    trec.write_run(str(tmp_path / "out" / "run.trec"), {"q 1": {"a": 1.0}})
  assert open(path).read().splitlines() == lines  # a failed write leaves the old file
  assert os.listdir(tmp_path / "out") == ["run.trec"]
  assert trec.read_run(path, top_k=1)[0] == {"q1": {"c": 1 / 3}, "q2": {"x": -1e-300}}


def test_trec_qrels_and_bad_numbers(tmp_path):
  (tmp_path / "q.txt").write_text("q1 0 d1 1\nq1 0 d2 0\n\nq2 0 d1 2\n")
  qrels, _ = trec.read_qrels(str(tmp_path / "q.txt"))
  assert qrels == {"q1": {"d1": 1, "d2": 0}, "q2": {"d1": 2}}
  (tmp_path / "r.trec").write_text("q1 Q0 d1 1 nan t\n")
  with pytest.raises(ValueError, match=r"r.trec:1: score 'nan' is not finite"):
    trec.read_run(str(tmp_path / "r.trec"))


def _flag_rows(tmp_path):
  Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / "q.png")
  return [
      {"query": "cats", "pos": ["purr"], "neg": ["bark", "moo"], "pos_scores": [3.0],
       "neg_scores": [1.0, -2], "prompt": "Rank passages."},
      {"query": {"text": "pets"}, "image": "q.png", "pos": [{"text": "a", "image": ["q.png"]}],
       "neg": ["b"], "query_id": "p1", "task": "it2it"},
      {"query": "dup", "pos": ["x"], "neg": ["x"], "query_id": "p1"},  # repeated id + pos==neg
      {"query": "bad", "pos": ["x"], "neg": ["y"], "pos_scores": [1.0]},
      {"query": "bad", "pos": ["x"], "neg": ["y", "z"], "pos_scores": [1], "neg_scores": [2]},
      {"query": "bad", "pos": [], "neg": ["y"]},
  ]


def test_flag_reader(tmp_path):
  _jsonl(tmp_path / "train.jsonl", _flag_rows(tmp_path))
  with pytest.raises(ValueError, match=r"train.jsonl:4: give both 'pos_scores' and"):
    list(flag.read_flag(str(tmp_path / "train.jsonl")))
  groups, stats, problems = flag.load_flag(str(tmp_path / "train.jsonl"), errors="skip")
  assert [g.query_id for g in groups] == ["train:1", "p1"]
  assert stats.skipped == 3 and dict(stats.reasons) == {"bad teacher score": 2, "empty pos": 1}
  assert dict(problems.counts) == {"duplicate id": 1}
  g = groups[0]
  assert (g.instruction, g.labels, g.doc_kinds) == ("Rank passages.", (1, 0, 0),
                                                   ("positive", "hard", "hard"))
  assert g.teacher_scores == (3.0, 1.0, -2.0) and g.task == "t2t"
  assert groups[1].query.image.shape == (6, 6, 3) and groups[1].docs[0].image is not None
  assert groups[1].modality == "fused" and groups[1].teacher_scores is None
  shuffled, _, _ = flag.load_flag(str(tmp_path / "train.jsonl"), errors="skip", shuffle_seed=1)
  by_id = dict(zip(shuffled[0].doc_ids, zip(shuffled[0].teacher_scores, shuffled[0].labels)))
  assert by_id == {"train:1-p0": (3.0, 1), "train:1-n0": (1.0, 0), "train:1-n1": (-2.0, 0)}
  with pytest.raises(DataProblem, match=r"train.jsonl:3: query_id 'p1' again"):
    flag.load_flag(str(tmp_path / "train.jsonl"), errors="skip", strict=True)


def test_flag_source_and_mrb_export_keep_teacher_scores(tmp_path):
  rows = [{"query": f"q{i}", "pos": [f"p{i}"], "neg": [f"n{i}-{j}" for j in range(3)],
           "pos_scores": [float(i)], "neg_scores": [0.5, 0.25, 0.125]} for i in range(4)]
  for split in ("train", "val", "test"):
    _jsonl(tmp_path / "flag" / f"{split}.jsonl", rows)
  assert sources.is_flag_directory(str(tmp_path / "flag"))
  from decomp.train import data as data_lib
  from decomp.train import overrides as overrides_lib
  cfg = overrides_lib.apply_overrides(overrides_lib.TrainConfig(), [
      f"data={tmp_path / 'flag'}", "vision=false", "image_size=16"])
  source = data_lib.FlagEmbeddingSource(cfg)
  assert source.max_negatives == 3 and len(source.split_groups("val", 2)) == 2
  seen = {source.train_group(i).query_id for i in range(4)}
  assert seen == {f"train:{i}" for i in range(1, 5)}
  out = sources.export_mrb(str(tmp_path / "mrb"), {"train": source.split_groups("train", 0)})
  assert not sources.is_flag_directory(out)
  back, _ = mrb.load_jsonl(os.path.join(out, "train.jsonl"))
  for a, b in zip(source.split_groups("train", 0), back):
    assert dict(zip(a.doc_ids, a.teacher_scores)) == dict(zip(b.doc_ids, b.teacher_scores))
  cut = data_lib.take_negatives(back[0], 1, positives=1)
  assert len(cut.teacher_scores) == 2


def test_teacher_scores_array():
  from decomp.data.types import Group, Item
  make = lambda t: Group(query_id="q", task="t2t", instruction="", query=Item(text="q"),
                         docs=(Item(text="a"), Item(text="b")), labels=(1, 0),
                         doc_ids=("a", "b"), doc_kinds=("", ""), teacher_scores=t)
  np.testing.assert_array_equal(sources.teacher_scores_array([make((2.0, 1.0))], 3),
                                [[2.0, 1.0, 0.0]])
  assert sources.teacher_scores_array([make(None)], 3) is None
  with pytest.raises(ValueError, match="no teacher scores"):
    sources.teacher_scores_array([make((2.0, 1.0)), make(None)], 2)
  with pytest.raises(ValueError, match="teacher_scores has 1 entries"):
    make((1.0,))
