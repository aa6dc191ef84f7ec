"""The tokenizer under $DECOMP_CACHE is verified on use (manifest of checksums, then a load test)
and a corrupt entry rebuilt in place, with a warning naming it."""

import json
import logging
import os

from decomp.data import tokenizer as tokenizer_lib
from decomp.train import cache


def test_corrupt_tokenizer_entry_is_rebuilt(tmp_path, monkeypatch, caplog):
  monkeypatch.setenv("DECOMP_CACHE", str(tmp_path))
  path = cache.playground_tokenizer_dir()
  assert os.path.exists(os.path.join(path, cache.MANIFEST))
  vocab_file = os.path.join(path, "tokenizer.json")
  intact = open(vocab_file, "rb").read()

  # Still valid JSON, still loads: only the checksum sees it (a word renamed in the vocabulary).
  with open(vocab_file, "wb") as f:
    f.write(intact.replace(b'"circle"', b'"circlx"', 1))
  assert "tokenizer.json" in cache.entry_problem(path, tokenizer_lib.check_tokenizer)
  with caplog.at_level(logging.WARNING, logger=cache.__name__):
    assert cache.playground_tokenizer_dir() == path
  assert open(vocab_file, "rb").read() == intact
  assert f"cache entry {path} is corrupt" in caplog.text

  # A truncated file in an entry without a manifest (built before manifests): the load test.
  os.remove(os.path.join(path, cache.MANIFEST))
  with open(vocab_file, "wb") as f:
    f.write(intact[:200])
  assert "does not load" in cache.entry_problem(path, tokenizer_lib.check_tokenizer)
  cache.playground_tokenizer_dir()
  assert open(vocab_file, "rb").read() == intact
  assert cache.entry_problem(path, tokenizer_lib.check_tokenizer) is None
  assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(path),
                                                 os.path.basename(path) + ".lock"])
  with open(os.path.join(path, cache.MANIFEST)) as f:
    assert "tokenizer.json" in json.load(f)
