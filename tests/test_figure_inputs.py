"""figures/make_all.py on broken sweep directories: each unreadable file named on one `error:`
line, every figure the rest supports still drawn, exit 1 only when nothing was drawn."""

import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "figures"))

import make_all  # noqa: E402


def _write_run(workdir, seed):
  os.makedirs(os.path.join(workdir, "examples"))
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({"objective": "sft", "weight": "sft", "seed": seed}, f)
  with open(os.path.join(workdir, "steps.jsonl"), "w") as f:
    f.writelines(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2))
  with open(os.path.join(workdir, "eval.jsonl"), "w") as f:
    f.writelines(json.dumps({"step": s, "ndcg@10": 0.5 + 0.1 * s}) + "\n" for s in (1, 2))
  rows = 8
  rng = np.random.default_rng(seed)
  np.savez(os.path.join(workdir, "examples", "2.npz"), step=np.full(rows, 2),
           query_id=np.array(["q0"] * 4 + ["q1"] * 4), label=np.tile([1, 0, 0, 0], 2),
           weight=rng.normal(size=rows), update=rng.random(rows),
           doc_kind=np.tile(["positive", "hard", "random", "hard"], 2),
           task=np.array(["t2t"] * rows), sft_score=rng.random(rows),
           cl_score=rng.normal(size=rows))
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump({"test": {"score": "sft"}}, f)


def _sweep(tmp_path):
  sweep = tmp_path / "sweep"
  for seed in (0, 1):
    _write_run(str(sweep / "arm" / f"seed{seed}"), seed)
  return sweep


def test_bad_files_are_named_and_the_rest_is_drawn(tmp_path):
  sweep = _sweep(tmp_path)
  shard = sweep / "arm" / "seed1" / "examples" / "2.npz"
  shard.write_bytes(shard.read_bytes()[:100])  # truncated: BadZipFile
  (sweep / "arm" / "seed0" / "results.json").write_text("{not json")
  (sweep / "sweep.json").write_text("\x00garbage")
  problems = {}
  paths = make_all.make_all(str(sweep), str(tmp_path / "figures"), problems)
  names = {os.path.basename(p) for p in paths}
  assert {"val_ndcg.png", "update_over_training.png", "weight_vs_score.png"} <= names
  assert set(problems) == {str(shard), str(sweep / "arm" / "seed0" / "results.json"),
                           str(sweep / "sweep.json")}
  assert "BadZipFile" in problems[str(shard)]
  assert "not valid JSON" in problems[str(sweep / "arm" / "seed0" / "results.json")]


def _cli(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "figures", "make_all.py"), *args],
                        capture_output=True, text=True, timeout=120)


def test_command_line_exit_status_and_one_line_per_problem(tmp_path):
  sweep = _sweep(tmp_path)
  shard = sweep / "arm" / "seed0" / "examples" / "2.npz"
  shard.write_bytes(b"PK\x03\x04 truncated")
  (tmp_path / "empty").mkdir()
  missing = tmp_path / "missing"
  done = _cli(str(sweep), str(tmp_path / "empty"), str(missing),
              "--out", str(tmp_path / "figures"))
  assert done.returncode == 1, done.stderr  # two of the three named sweeps drew nothing
  assert "Traceback" not in done.stderr
  errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
  assert errors == [f"error: {shard}: " + errors[0].split(": ", 2)[2],
                    f"error: {tmp_path / 'empty'}: no runs with logs (expected "
                    "<arm>/seed<k>/steps.jsonl)",
                    f"error: {missing}: no such directory"], done.stderr
  assert "val_ndcg.png" in done.stdout
  ok = _cli(str(sweep), "--out", str(tmp_path / "figures2"))
  assert ok.returncode == 0 and ok.stderr.count("error: ") == 1, ok.stderr
