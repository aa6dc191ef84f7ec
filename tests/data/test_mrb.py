"""MRB-style JSONL: round trip through the writer, streaming, and every error path."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from decomp.data import mrb
from decomp.data.playground import Playground, PlaygroundConfig


@pytest.fixture(scope="module")
def playground_groups():
  return Playground(PlaygroundConfig(num_eval_queries=1, negatives=3)).groups("val")


def test_round_trip_of_playground_groups(tmp_path, playground_groups):
  path = mrb.write_jsonl(playground_groups, str(tmp_path / "val.jsonl"))
  back, stats = mrb.load_jsonl(path)
  assert stats.loaded == len(playground_groups) == 6 and stats.skipped == 0
  for orig, read in zip(playground_groups, back):
    assert (read.query_id, read.task, read.instruction, read.modality) == (
        orig.query_id, orig.task, orig.instruction, orig.modality)
    assert read.query.text == orig.query.text
    if orig.query.image is not None:
      np.testing.assert_array_equal(read.query.image, orig.query.image)
      assert os.path.isfile(read.query.image_path)
    # The file lists positives then negatives; compare document by document id.
    by_id = {i: (d, l, k) for d, l, i, k in zip(read.docs, read.labels, read.doc_ids,
                                                 read.doc_kinds)}
    assert set(by_id) == set(orig.doc_ids)
    for doc, label, doc_id, kind in zip(orig.docs, orig.labels, orig.doc_ids, orig.doc_kinds):
      rdoc, rlabel, rkind = by_id[doc_id]
      assert (rdoc.text, rlabel, rkind) == (doc.text, label, kind)
      if doc.image is not None:
        np.testing.assert_array_equal(rdoc.image, doc.image)
    assert list(read.labels) == sorted(read.labels, reverse=True)


def test_resize_and_absolute_paths_and_shuffle(tmp_path):
  Image.fromarray(np.full((40, 20, 3), 200, np.uint8)).save(tmp_path / "q.png")
  row = {"query_id": "q1", "task": "i2t", "instruction": "Find it.",
         "query": {"image": str(tmp_path / "q.png")},
         "positives": [{"text": "a"}], "negatives": [{"text": f"n{i}"} for i in range(6)]}
  path = tmp_path / "d.jsonl"
  path.write_text(json.dumps(row) + "\n\n")
  (g,), stats = mrb.load_jsonl(str(path), image_size=16)
  assert g.query.image.shape == (16, 16, 3) and g.modality == "cross"
  assert g.doc_ids == ("q1-p0",) + tuple(f"q1-n{i}" for i in range(6))
  assert g.doc_kinds[:2] == ("positive", "negative") and stats.blank_lines == 1
  (kept,), _ = mrb.load_jsonl(str(path), image_size=None)
  assert kept.query.image.shape == (40, 20, 3)
  (s1,), _ = mrb.load_jsonl(str(path), shuffle_seed=3)
  (s2,), _ = mrb.load_jsonl(str(path), shuffle_seed=3)
  assert s1.doc_ids == s2.doc_ids and s1.doc_ids != g.doc_ids
  assert sorted(s1.doc_ids) == sorted(g.doc_ids)
  assert s1.labels[s1.doc_ids.index("q1-p0")] == 1


GOOD = {"query_id": "q", "task": "t2t", "instruction": "i", "query": {"text": "x"},
        "positives": [{"text": "p"}], "negatives": [{"text": "n"}]}
BAD_ROWS = [
    ("{not json", "malformed JSON", "malformed json"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "positives"}), "missing field 'positives'",
     "missing field"),
    (json.dumps({**GOOD, "positives": []}), "'positives' is empty", "empty positives"),
    (json.dumps({**GOOD, "negatives": []}), "'negatives' is empty", "empty negatives"),
    (json.dumps({**GOOD, "negatives": [{"image": "nope.png"}]}),
     r"negatives\[0\]: image 'nope.png' not found", "missing image"),
    (json.dumps({**GOOD, "query": {}}), "query has neither text nor image", "empty item"),
    (json.dumps({**GOOD, "positives": [{"text": "p", "label": 0}]}),
     r"positives\[0\].label=0 contradicts", "bad label"),
    (json.dumps([1, 2]), "a row must be a JSON object", "not an object"),
    (json.dumps({**GOOD, "negatives": [{"text": "n", "id": "a"}, {"text": "m", "id": "a"}]}),
     "duplicate document ids", "duplicate id"),
]


@pytest.mark.parametrize("line,message,reason", BAD_ROWS, ids=[r[2] for r in BAD_ROWS])
def test_bad_row_names_file_and_line(tmp_path, line, message, reason):
  path = tmp_path / "bad.jsonl"
  path.write_text(json.dumps(GOOD) + "\n" + line + "\n" + json.dumps(GOOD) + "\n")
  with pytest.raises(ValueError, match=f"{path}:2: {message}"):
    mrb.load_jsonl(str(path))
  groups, stats = mrb.load_jsonl(str(path), errors="skip")
  assert len(groups) == 2 and stats.loaded == 2 and stats.skipped == 1 and stats.lines == 3
  assert stats.reasons == {reason: 1}
  assert stats.messages[0].startswith(f"{path}:2: ")
  assert "1 rows skipped" in stats.summary()


def test_corrupt_image_is_named(tmp_path):
  (tmp_path / "broken.png").write_bytes(b"not a png")
  path = tmp_path / "d.jsonl"
  path.write_text(json.dumps({**GOOD, "negatives": [{"image": "broken.png"}]}) + "\n")
  with pytest.raises(ValueError, match=r"d.jsonl:1: negatives\[0\]: image 'broken.png' cannot"):
    mrb.load_jsonl(str(path))
  (g,), _ = mrb.load_jsonl(str(path), load_images=False)  # only checks that the file exists
  assert g.docs[1].image is None and g.docs[1].image_path.endswith("broken.png")


def test_reading_streams(tmp_path):
  path = tmp_path / "s.jsonl"
  path.write_text(json.dumps(GOOD) + "\n" + "{broken\n")
  rows = mrb.read_jsonl(str(path))
  assert next(rows).query_id == "q"  # the broken second line has not been read yet
  with pytest.raises(ValueError, match=":2: malformed JSON"):
    next(rows)
  with pytest.raises(ValueError, match="errors="):
    next(mrb.read_jsonl(str(path), errors="ignore"))
