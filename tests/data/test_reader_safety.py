"""The data readers against hostile or broken input: bytes that are not UTF-8 (named by file
and line, also within the first 8 KB that format sniffing reads), image paths that leave the
data folder, images above the pixel limit (refused from the header), split names that are
paths."""

import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from decomp.data import beir, flag, mrb, sources, trec


def _flag_row(i, image=None):
  row = {"query": f"query {i}", "pos": ["yes"], "neg": ["no"]}
  if image is not None:
    row["image"] = image
  return json.dumps(row).encode()


def test_bad_byte_in_the_first_kilobytes_names_file_and_line(tmp_path):
  # Line 20 sits well inside the first 8 KB, which a text-mode read decodes at once.
  lines = [_flag_row(i) for i in range(30)]
  lines[19] = lines[19].replace(b"query 19", b"query \xff19")
  path = tmp_path / "train.jsonl"
  path.write_bytes(b"\n".join(lines) + b"\n")
  assert sources.is_flag_directory(str(tmp_path))  # sniffing reads the first row only
  with pytest.raises(ValueError, match=rf"^{path}:20: not UTF-8 text \(byte 17"):
    flag.load_flag(str(path))
  path.write_bytes(b"\xff" + b"\n".join(lines))
  with pytest.raises(ValueError, match=rf"^{path}:1: not UTF-8 text"):
    sources.is_flag_directory(str(tmp_path))


def test_every_reader_names_file_and_line_of_a_bad_byte(tmp_path):
  run = tmp_path / "run.trec"
  run.write_bytes(b"q1 Q0 d1 1 2.0 t\nq1 Q0 d\xfe2 2 1.0 t\n")
  with pytest.raises(ValueError, match=rf"^{run}:2: not UTF-8"):
    trec.read_run(str(run))
  qrels = tmp_path / "qrels.tsv"
  qrels.write_bytes(b"query-id\tcorpus-id\tscore\nq1\td\xe91\t1\n")
  with pytest.raises(ValueError, match=rf"^{qrels}:2: not UTF-8"):
    trec.read_qrels(str(qrels))
  mrb_file = tmp_path / "mrb.jsonl"
  mrb_file.write_bytes(b"\n\n{\"query_id\": \"\xc3\"}\n")
  with pytest.raises(ValueError, match=rf"^{mrb_file}:3: not UTF-8"):
    mrb.load_jsonl(str(mrb_file))
  collection = tmp_path / "c"
  (collection / "qrels").mkdir(parents=True)
  (collection / "collection.json").write_bytes(b'{"name": "c",\n "task": "t\xff"}')
  for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
    (collection / name).write_text("")
  with pytest.raises(ValueError, match=rf"^{collection / 'collection.json'}:2: not UTF-8"):
    beir.load_beir(str(collection))


@pytest.mark.parametrize("split", ["../../run", "a/b", "..", ""])
def test_split_names_that_are_paths_are_refused(tmp_path, split):
  with pytest.raises(ValueError, match="split .* must be a plain name"):
    beir.load_beir(str(tmp_path), split=split)


def _image(path, size=(4, 4)):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full((*size[::-1], 3), 120, np.uint8)).save(path)
  return path


def _mrb_row(image):
  return {"query_id": "q", "task": "t2i", "instruction": "", "query": {"text": "a"},
          "positives": [{"image": image}], "negatives": [{"text": "b"}]}


def test_image_paths_stay_in_the_data_folder(tmp_path):
  outside = _image(tmp_path / "secret.png")
  data = tmp_path / "data"
  _image(data / "img" / "in.png")
  for image in ("../secret.png", str(outside), "img/../../secret.png"):
    path = data / "mrb.jsonl"
    path.write_text(json.dumps(_mrb_row(image)) + "\n")
    with pytest.raises(ValueError, match=rf"^{path}:1: positives\[0\]: image path .* leads "
                       "outside the data folder .*allow_outside_paths=True"):
      mrb.load_jsonl(str(path))
    (group,), _ = mrb.load_jsonl(str(path), allow_outside_paths=True)
    assert group.docs[0].image.shape == (32, 32, 3)
    flag_file = data / "flag.jsonl"
    flag_file.write_bytes(_flag_row(0, image=image) + b"\n")
    with pytest.raises(ValueError, match=rf"^{flag_file}:1: query: image path"):
      flag.load_flag(str(flag_file))
    assert flag.load_flag(str(flag_file), allow_outside_paths=True)[0][0].query.image is not None
  # Inside the folder, relative or absolute, is read as before.
  for image in ("img/in.png", str(data / "img" / "in.png"), "img/./../img/in.png"):
    path.write_text(json.dumps(_mrb_row(image)) + "\n")
    assert mrb.load_jsonl(str(path))[0][0].docs[0].image is not None


def test_beir_image_paths_stay_in_the_collection(tmp_path):
  _image(tmp_path / "secret.png")
  c = tmp_path / "c"
  (c / "qrels").mkdir(parents=True)
  (c / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "image": "../secret.png"}) + "\n")
  (c / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "a"}) + "\n")
  (c / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
  with pytest.raises(ValueError, match=r"corpus.jsonl:1: document: image path '../secret.png'"):
    beir.load_beir(str(c))
  assert beir.load_beir(str(c), allow_outside_paths=True).corpus["d1"].image is not None


def _png_header(path, width, height):
  """A PNG that declares ``width x height`` and holds no pixel data: only its header can be
  read, so refusing it proves nothing was decoded."""
  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
  return path


def test_images_above_the_pixel_limit_are_refused_by_name(tmp_path):
  big = _png_header(tmp_path / "big.png", 10_000, 10_000)  # PIL itself only warns (no file)
  with pytest.raises(mrb.ImageTooLarge, match=rf"^{big}: 10000 x 10000 pixels .* limit of 50 "
                     "megapixels"):
    mrb.load_image(str(big))
  bomb = _png_header(tmp_path / "bomb.png", 20_000, 20_000)  # above PIL's own hard limit
  with pytest.raises(mrb.ImageTooLarge, match=rf"^{bomb}: "):
    mrb.load_image(str(bomb), max_image_pixels=None)
  small = _image(tmp_path / "small.png", (20, 10))
  path = tmp_path / "d.jsonl"
  path.write_text(json.dumps(_mrb_row("small.png")) + "\n")
  with pytest.raises(ValueError, match=rf"^{path}:1: positives\[0\]: image {small}: 20 x 10 "
                     r"pixels \(0.0 megapixels\) is above the limit of 0.0001"):
    mrb.load_jsonl(str(path), max_image_pixels=100)
  _, stats = mrb.load_jsonl(str(path), max_image_pixels=100, errors="skip")
  assert stats.reasons == {"image too large": 1}
  assert mrb.load_jsonl(str(path), max_image_pixels=200)[0][0].docs[0].image is not None
