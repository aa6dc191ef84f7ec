"""A hybrid objective from a user's own module (not inside decomp/) runs end to end: as a sweep
arm (CIs, a row in summary.md), logging its own loss as `loss`, without the
vocabulary log-normaliser it does not declare, and its workdir's config.json re-launches it."""

from decomp.train import overrides as overrides_lib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from decomp import sweep  # noqa: E402

USER_MODULE = """
import decomp

def triple_sft_loss(readout, labels, *, where=None):
  # A loss of its own, easy to recognise in the logs: three times SFT's.
  return 3.0 * decomp.sft_loss(readout.yes, readout.no, labels, where=where)

def focal_weight(readout, labels, *, where=None):
  w = decomp.weights.sft(readout, labels, where=where)
  return w * (2 * abs(w)) ** 2

focal = decomp.Objective(weight=decomp.Weight(focal_weight, loss=triple_sft_loss),
                         direction="cl", name="focal_cl")
"""

QUICK = ["steps=4", "eval_every=2", "example_log_every=2", "checkpoint_every=2",
         "test_groups=12", "eval_groups=12", "playground.tasks=['t2t']", "vision=false"]


def test_registered_hybrid_runs_as_a_sweep_arm(tmp_path, monkeypatch):
  package = tmp_path / "user_code"
  package.mkdir()
  (package / "my_hybrids.py").write_text(textwrap.dedent(USER_MODULE))
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      [str(package), ROOT, os.environ.get("PYTHONPATH", "")]))
  monkeypatch.syspath_prepend(str(package))
  # One arm (two seeds run side by side): the built-in arms' rows are the probe test's.
  arms = [sweep.Arm("focal", {"objective": "my_hybrids:focal"}, "focal W x D_CL")]
  out = tmp_path / "sweep"
  summary = sweep.main("user objective", "user", arms, title="user objective", argv=[
      "--config", "playground_quick", "--seeds", "2", "--out", str(out), "--jobs", "2",
      "--set", *QUICK])

  # A row with a confidence interval in summary.md.
  assert summary["arms"]["focal"]["overall"]["n"] == 2
  assert np.isfinite(summary["arms"]["focal"]["overall"]["ci95"])
  assert "| focal W x D_CL | " in (out / "summary.md").read_text()

  run = out / "focal" / "seed1"
  config = json.loads((run / "config.json").read_text())
  assert config["objective"]["name"] == "my_hybrids:focal"
  results = json.loads((run / "results.json").read_text())
  assert results["test"]["score"] == "cl"  # ranked by its direction's score
  # Its own loss is logged as `loss`: three times the (always logged) SFT loss.
  steps = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
  assert len(steps) == 4
  for record in steps:
    np.testing.assert_allclose(record["loss"], 3 * record["sft_loss"], rtol=1e-6)

  # It reads no vocabulary log-normaliser (none declared), so the engine builds none.
  from decomp.train import config as config_lib
  assert config_lib.make_objective(overrides_lib.from_file(str(run / "config.json"))).needs == set()

  # The workdir's config.json re-launches the same run in a fresh process, once the user says
  # that the code it names (not from an installed package) may run (docs/trust.md).
  again = tmp_path / "again"
  command = [sys.executable, "-m", "decomp.train", "--workdir", str(again), "--config",
             str(run / "config.json"), "--quiet"]
  refused = subprocess.run(command, env=dict(os.environ), capture_output=True, text=True)
  assert refused.returncode == 2 and "--allow-code" in refused.stderr
  assert "objective=my_hybrids:focal" in refused.stderr and not again.exists()
  subprocess.run(command + ["--allow-code"], check=True, env=dict(os.environ))
  rerun = json.loads((again / "results.json").read_text())
  assert rerun["final"]["loss"] == results["final"]["loss"]
  assert rerun["test"]["ndcg@10"] == results["test"]["ndcg@10"]
