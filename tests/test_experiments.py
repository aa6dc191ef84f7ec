"""The sweep runner's statistics and the end-to-end path of the main job: sweep -> summary ->
figures, on a tiny real sweep (two arms, two seeds, a few steps of the quick config)."""

from decomp.train import overrides as overrides_lib
from decomp.train import recipes
import json
import os
import sys

import numpy as np
import pytest
from scipy import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))  # the experiment scripts themselves
sys.path.insert(0, os.path.join(ROOT, "figures"))

from decomp import sweep  # noqa: E402


def test_seeds_for_ci():
  assert sweep.seeds_for_ci(0.0) == 2
  assert sweep.seeds_for_ci(None) is None
  assert sweep.seeds_for_ci(1.0) == 7  # t(6) * 1 / sqrt(7) = 0.925; t(5) / sqrt(6) = 1.05
  assert sweep.seeds_for_ci(2.0, half_width=2.0) == 7


def test_mean_ci_matches_student_t():
  values = [58.1, 57.2, 59.3, 58.8]
  out = sweep.mean_ci(values)
  low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values),
                               scale=stats.sem(values))
  assert out["mean"] == pytest.approx(np.mean(values))
  assert out["std"] == pytest.approx(np.std(values, ddof=1))
  assert out["ci95"] == pytest.approx((high - low) / 2)
  single = sweep.mean_ci([3.0])
  assert single["n"] == 1 and single["std"] == 0.0
  assert sweep.mean_ci([])["mean"] is None


def _fake_results(workdir, overall, per_task):
  os.makedirs(workdir, exist_ok=True)
  block = {"queries": {"ndcg@10": overall}, "tasks": {"ndcg@10": np.mean(list(per_task.values()))},
           "per_task": {t: {"ndcg@10": v, "num_queries": 5} for t, v in per_task.items()},
           "per_modality": {"single": {"ndcg@10": overall, "num_queries": 10}}}
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump({"test": {"score": "sft", "sft": block}}, f)


def test_summary_contrasts_are_paired_over_seeds(tmp_path):
  arms = [sweep.Arm("a", {"weight": "sft"}), sweep.Arm("b", {"weight": "cl"})]
  a = [0.60, 0.70, 0.65]
  b = [0.58, 0.69, 0.62]
  for seed in range(3):
    _fake_results(sweep.run_dir(str(tmp_path), arms[0], seed), a[seed], {"t2t": a[seed]})
    _fake_results(sweep.run_dir(str(tmp_path), arms[1], seed), b[seed], {"t2t": b[seed]})
  summary = sweep.summarize(str(tmp_path), arms, range(3), contrasts=[
      ("a - b", "a", "b"), ("mean of a and b", {"a": 0.5, "b": 0.5})])
  mean = summary["contrasts"]["mean of a and b"]["overall"]
  assert mean["values"] == pytest.approx(list(50 * (np.array(a) + np.array(b))))
  with pytest.raises(ValueError, match="a contrast is"):
    sweep.contrast_coefficients(("only a name", {}))
  diff = 100 * (np.array(a) - np.array(b))
  contrast = summary["contrasts"]["a - b"]["overall"]
  assert contrast["mean"] == pytest.approx(diff.mean())
  assert contrast["ci95"] == pytest.approx(stats.t.ppf(0.975, 2) * stats.sem(diff))
  # Paired CI is far tighter than the unpaired spread of either arm.
  assert contrast["ci95"] < summary["arms"]["a"]["overall"]["ci95"]
  # Seeds for a +-1-point interval: the smallest n with t(n-1) * std / sqrt(n) <= 1.
  need = contrast["seeds_for_ci1"]
  std = np.std(diff, ddof=1)
  assert stats.t.ppf(0.975, need - 1) * std / np.sqrt(need) <= 1.0
  assert stats.t.ppf(0.975, need - 2) * std / np.sqrt(need - 1) > 1.0
  text = (tmp_path / "summary.md").read_text()
  assert "| a - b |" in text and "t2t" in text and f"| {need} |" in text


def test_contrast_terms_can_rank_an_arm_by_the_other_score(tmp_path):
  """``arm@cl`` enters a contrast with the arm's runs ranked by the CL score, not their own."""
  arms = [sweep.Arm("a", {}), sweep.Arm("b", {})]
  own = {"a": [0.60, 0.70, 0.65], "b": [0.50, 0.52, 0.51]}
  other = {"a": [0.40, 0.45, 0.42], "b": [0.55, 0.56, 0.58]}
  for arm in arms:
    for seed in range(3):
      workdir = sweep.run_dir(str(tmp_path), arm, seed)
      _fake_results(workdir, own[arm.name][seed], {"t2t": own[arm.name][seed]})
      with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
      value = other[arm.name][seed]
      results["test"]["cl"] = {"queries": {"ndcg@10": value}, "tasks": {"ndcg@10": value}}
      with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f)
  summary = sweep.summarize(str(tmp_path), arms, range(3), contrasts=[
      ("a - b", "a", "b"), ("a - b by CL", "a@cl", "b@cl"), ("a own - b by CL", {"a": 1, "b@cl": -1})])
  expect = lambda x, y: pytest.approx(list(100 * (np.array(x) - np.array(y))))
  assert summary["contrasts"]["a - b"]["overall"]["values"] == expect(own["a"], own["b"])
  assert summary["contrasts"]["a - b by CL"]["overall"]["values"] == expect(other["a"], other["b"])
  assert summary["contrasts"]["a own - b by CL"]["macro"]["values"] == expect(own["a"], other["b"])
  assert summary["arms"]["b"]["score/cl"]["mean"] == pytest.approx(100 * np.mean(other["b"]))
  assert "ranked by CL's score" in (tmp_path / "summary.md").read_text()
  with pytest.raises(ValueError, match="unknown score"):
    sweep.contrast_coefficients(("bad", "a@logprob", "b"))


def test_tiny_sweep_end_to_end(tmp_path):
  """Runs the real probe script (two arms only via --set) and regenerates its figures."""
  import make_all
  import probe_weight_direction as probe

  out = tmp_path / "probe"
  argv = ["--quick", "--seeds", "2", "--out", str(out), "--jobs", "2", "--set", "steps=4",
          "eval_every=2", "example_log_every=2", "checkpoint_every=2", "test_groups=12",
          "eval_groups=12"]
  original = probe.ARMS
  try:
    probe.ARMS = original[::3]  # W_SFT x D_SFT and W_CL x D_CL
    summary = probe.main(argv)
    for arm in ("w_sft-d_sft", "w_cl-d_cl"):
      assert summary["arms"][arm]["overall"]["n"] == 2
      with open(out / arm / "seed1" / "results.json") as f:
        results = json.load(f)
      assert results["test"]["score"] == ("sft" if arm == "w_sft-d_sft" else "cl")
    # Resumable: a second call runs nothing and gives the same summary.
    stamps = {p: os.path.getmtime(p) for p in out.glob("*/seed*/results.json")}
    again = probe.main(argv)
  finally:
    probe.ARMS = original
  assert again["arms"] == summary["arms"]
  assert stamps == {p: os.path.getmtime(p) for p in out.glob("*/seed*/results.json")}
  paths = make_all.main([str(out)])
  names = {os.path.basename(p) for p in paths}
  for name in ("weight_vs_score.png", "update_over_training.png", "update_by_difficulty.png",
               "net_push.png", "val_ndcg.png", "pairwise_by_attribute.png",
               "pairwise_over_training.png"):
    assert name in names
  assert "probe_heatmap.png" not in names  # two pure objectives are a diagonal, not a table
  # The logs obey InfoNCE's algebra: CL's weights sum to zero over every logged list; SFT's
  # do not (its net push shifts the whole list).
  import common
  import net_push
  by_name = {arm["name"]: arm for arm in common.arms(str(out))}
  _, cl_net, cl_imbalance = net_push.list_imbalance(common.pooled_examples(by_name["w_cl-d_cl"]))
  assert len(cl_net) == 2 * 2 * 8  # 2 seeds x 2 logged steps x 8 lists
  assert np.abs(cl_imbalance).max() < 1e-5
  _, _, sft_imbalance = net_push.list_imbalance(common.pooled_examples(by_name["w_sft-d_sft"]))
  assert sft_imbalance.max() > 0.01
  for path in paths:
    assert os.path.getsize(path) > 5000
  # The docs are rebuilt from the logs alone: summary from sweep.json + results, PNG figures.
  import publish
  os.remove(out / "summary.json")
  written = publish.main([str(out), "--docs", str(tmp_path / "docs")])
  assert json.loads((out / "summary.json").read_text())["arms"] == json.loads(
      json.dumps(summary["arms"]))
  assert (tmp_path / "docs" / "probe_summary.md").read_text() == (out / "summary.md").read_text()
  assert json.loads((out / "summary.json").read_text())["contrasts"] == json.loads(
      json.dumps(summary["contrasts"]))
  pngs = sorted(os.listdir(tmp_path / "docs" / "figures" / "probe"))
  assert "val_ndcg.png" in pngs and all(p.endswith(".png") for p in pngs)
  assert len(written) == 1 + len(pngs)


def test_reuse_links_only_runs_of_the_identical_config(tmp_path):
  from decomp.train import config as config_lib

  def fake_run(workdir, arm, seed, extra=()):
    cfg = overrides_lib.apply_overrides(recipes.get_config("playground_quick"),
                                     [*sweep._run_overrides(arm, seed, []), *extra])
    os.makedirs(workdir)
    stored = config_lib.to_dict(cfg)
    del stored["readout"]["label_pooling"]  # written before the field existed: its default applies
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump(stored, f)
    _fake_results(workdir, 0.5, {"t2t": 0.5})

  sft, cl = sweep.Arm("sft", {"weight": "sft"}), sweep.Arm("cl", {"weight": "cl"})
  other = tmp_path / "other"
  fake_run(str(other / "w_sft" / "seed0"), sft, 0)  # same run under another arm name
  fake_run(str(other / "w_sft" / "seed1"), sft, 1, ["learning_rate=0.5"])  # not the same run
  fake_run(str(other / "w_cl" / "seed0"), cl, 0)
  here = tmp_path / "here"
  todo = [(sft, 0), (sft, 1), (cl, 0), (cl, 1)]
  logged = []
  left = sweep.link_completed(str(here), todo, config="playground_quick", overrides=[],
                              reuse=[str(other)], log=logged.append)
  assert left == [(sft, 1), (cl, 1)]
  assert len(logged) == 2
  for arm, source in ((sft, "w_sft"), (cl, "w_cl")):
    target = sweep.run_dir(str(here), arm, 0)
    assert os.path.islink(target) and not os.path.isabs(os.readlink(target))
    assert os.path.samefile(target, other / source / "seed0")
  # A sweep-wide override is part of the config: nothing matches any more.
  assert sweep.link_completed(str(tmp_path / "third"), todo, config="playground_quick",
                              overrides=["steps=3"], reuse=[str(other)],
                              log=logged.append) == todo


def test_arm_dict_overrides_merge_and_stale_runs_are_refused(tmp_path):
  """A dict in an arm updates that field key by key (the negatives sweep once replaced the
  default playground, and with it the task list, by {"negatives": 15}); a completed run whose
  config.json no longer matches its arm is refused, not summarised under the arm's label."""
  from decomp.train import config as config_lib

  arm = sweep.Arm("neg15", {"negatives": 15, "playground": {"negatives": 15}})
  cfg = sweep._run_config(arm, 0, "playground", [])
  default = recipes.get_config("playground").data.playground
  assert cfg.data.playground == {**default, "negatives": 15}
  assert cfg.data.playground["tasks"] == ["t2t"]

  stale = overrides_lib.apply_overrides(recipes.get_config("playground"), [
      "negatives=15", 'playground={"negatives": 15}', "seed=0"])
  workdir = sweep.run_dir(str(tmp_path), arm, 0)
  os.makedirs(workdir)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config_lib.to_dict(stale), f)
  _fake_results(workdir, 0.5, {"t2t": 0.5})
  with pytest.raises(SystemExit, match=r"neg15/seed0 \(data.playground\)"):
    sweep.check_completed(str(tmp_path), [(arm, 0)], config="playground")
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config_lib.to_dict(cfg), f)
  sweep.check_completed(str(tmp_path), [(arm, 0)], config="playground")


def test_ablation_curves_from_a_real_summary(tmp_path):
  """Negatives-like sweep: a numeric knob across two objectives, a shared override, a reference."""
  import ablation_curves

  arms, truth = [], {}
  for objective, offset in (("sft", 0.0), ("cl", -0.05)):
    for k in (1, 3, 7):
      arms.append(sweep.Arm(f"{objective}-neg{k}", {"weight": objective, "negatives": k,
                                                     "eval_list_size": 8}))
      truth[(objective, k)] = [0.5 + offset + 0.02 * k + 0.01 * s for s in range(3)]
  arms.append(sweep.Arm("reference", {"weight": "sft", "eval_list_size": 8}, "SFT reference"))
  for seed in range(3):
    for arm in arms[:-1]:
      objective, k = arm.overrides["weight"], arm.overrides["negatives"]
      value = truth[(objective, k)][seed]
      _fake_results(sweep.run_dir(str(tmp_path), arm, seed), value, {"t2t": value})
    _fake_results(sweep.run_dir(str(tmp_path), arms[-1], seed), 0.61, {"t2t": 0.61})
  summary = sweep.summarize(str(tmp_path), arms, range(3))
  knob, series, references = ablation_curves.curves(summary)
  assert knob == "negatives"
  assert sorted(series) == ["weight=cl", "weight=sft"]  # eval_list_size is shared: no name
  for objective in ("sft", "cl"):
    xs, means, cis = zip(*series[f"weight={objective}"])
    assert xs == (1, 3, 7)
    np.testing.assert_allclose(means, [100 * np.mean(truth[(objective, k)]) for k in xs])
    assert all(c > 0 for c in cis)
  assert references == [("SFT reference", pytest.approx(61.0))]
  paths = ablation_curves.make(str(tmp_path), str(tmp_path / "figures"))
  assert [os.path.basename(p) for p in paths] == ["ablation_negatives.png",
                                                  "ablation_negatives.pdf"]
  assert os.path.getsize(paths[0]) > 5000
  # Budgets that each set the knob once, alongside other changes, draw no curve.
  budgets = {"arms": {
      "a": {"label": "a", "overrides": {"steps": 400, "lr": 1}, "overall": {"mean": 60.0}},
      "b": {"label": "b", "overrides": {"steps": 600, "model": "random"}, "overall": {"mean": 70.0}},
      "c": {"label": "c", "overrides": {"lr": 2}, "overall": {"mean": 65.0}}}}
  assert ablation_curves.curves(budgets) == (None, {}, [])


def test_probe_heatmap_only_for_one_arm_per_pair(tmp_path):
  """The grid holds only the arms that set nothing but W and D: a sweep of pure objectives under
  other knobs gets no heatmap, and a probe with extra arms (another label head) keeps its grid."""
  import common
  import probe_heatmap

  arms = [sweep.Arm(f"{v}-{o}", {"learning_rate": lr, "weight": o, "direction": o})
          for v, lr in (("fast", 1e-3), ("slow", 3e-4)) for o in ("sft", "cl")]
  for seed in range(2):
    for arm in arms:
      _fake_results(sweep.run_dir(str(tmp_path), arm, seed), 0.6, {"t2t": 0.6})
  sweep.summarize(str(tmp_path), arms, range(2))
  assert probe_heatmap.make(str(tmp_path), str(tmp_path / "figures")) == []
  probe = [sweep.Arm(f"{w}-{d}", {"weight": w, "direction": d})
           for w in ("sft", "cl") for d in ("sft", "cl")]
  extra = [sweep.Arm(f"{o}-rand", {"weight": o, "direction": o, "label_head": "random"})
           for o in ("sft", "cl")]
  for seed in range(2):
    for arm in probe + extra:
      value = 0.4 if arm in extra else 0.6
      _fake_results(sweep.run_dir(str(tmp_path / "p"), arm, seed), value, {"t2t": value})
  sweep.summarize(str(tmp_path / "p"), probe + extra, range(2))
  paths = probe_heatmap.make(str(tmp_path / "p"), str(tmp_path / "figures"))
  assert len(paths) == 2
  cells = probe_heatmap.grid_cells(common.read_json(str(tmp_path / "p" / "summary.json")))
  assert {pair: round(stat["mean"], 6) for pair, stat in cells.items()} == {
      (w, d): 60.0 for w in ("sft", "cl") for d in ("sft", "cl")}
  # With both scores logged, a second grid ranks each run by its weight's score.
  for seed in range(2):
    for arm in probe:
      workdir = sweep.run_dir(str(tmp_path / "p"), arm, seed)
      with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
      cl = 0.5 if arm.overrides["weight"] == "cl" else 0.3
      results["test"]["cl"] = {"queries": {"ndcg@10": cl}, "tasks": {"ndcg@10": cl}}
      with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f)
  summary = sweep.summarize(str(tmp_path / "p"), probe, range(2))
  by_weight = probe_heatmap.grid_cells(summary, by_weight=True)
  assert {pair: round(stat["mean"], 6) for pair, stat in by_weight.items()} == {
      ("sft", "sft"): 60.0, ("sft", "cl"): 60.0, ("cl", "sft"): 50.0, ("cl", "cl"): 50.0}
  names = {os.path.basename(p) for p in probe_heatmap.make(str(tmp_path / "p"),
                                                            str(tmp_path / "figures3"))}
  assert names == {f"{n}.{e}" for n in ("probe_heatmap", "probe_heatmap_weight_score")
                   for e in ("png", "pdf")}
  # Two pure objectives alone (a calibration variant's default arms) are no probe.
  diagonal = [arm for arm in probe if arm.overrides["weight"] == arm.overrides["direction"]]
  sweep.summarize(str(tmp_path / "p"), diagonal, range(2))
  assert probe_heatmap.make(str(tmp_path / "p"), str(tmp_path / "figures2")) == []


def test_field_objectives_shape_is_read_from_the_logged_weights(tmp_path, monkeypatch):
  """One logged list per step: the positive, a hard negative the model scores highest, a random
  one. The shape statistics are the weights' shares, and the sweep's figures are drawn."""
  import importlib.util

  import field_objectives  # figures/ comes first on the path: the figure module
  # The sweep's module of the same name, for its arm list.
  spec = importlib.util.spec_from_file_location(
      "field_objectives_sweep", os.path.join(ROOT, "experiments", "field_objectives.py"))
  experiment = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(experiment)
  arms = experiment.arms()
  for arm in arms[:3]:  # sft, cl and one field weight
    for seed in range(2):
      workdir = sweep.run_dir(str(tmp_path), arm, seed)
      _fake_results(workdir, 0.5 + 0.01 * seed, {"t2t": 0.5})
      os.makedirs(os.path.join(workdir, "examples"))
      with open(os.path.join(workdir, "steps.jsonl"), "w") as f:
        f.write('{"step": 1}\n')
      np.savez(os.path.join(workdir, "examples", "00000010.npz"),
               step=np.array([10, 10, 10, 20, 20, 20]), query_id=np.array(["q"] * 6),
               label=np.array([1, 0, 0, 2, 0, 0]),
               doc_kind=np.array(["positive", "hard", "random"] * 2),
               cl_score=np.array([1.0, 3.0, -2.0, 1.0, -1.0, 0.5], np.float32),
               sft_score=np.array([0.5, 0.9, 0.1, 0.5, 0.2, 0.6], np.float32),
               weight=np.array([-0.5, 0.3, 0.2, -1.0, 0.25, 0.75], np.float32))
  sweep.write_description(str(tmp_path), arms[:3], [0, 1], config="playground", overrides=[])
  sweep.summarize(str(tmp_path), arms[:3], [0, 1])
  shape = field_objectives.run_shape(sweep.run_dir(str(tmp_path), arms[1], 0), "cl")
  # Step 10: the hard negative is also the top-scored one (z_y 3.0): 0.3 of 1.0, 0.3 of 0.5.
  # Step 20: the random negative is top-scored (0.5 > -1.0): hard 0.25 of 2.0, top 0.75 of 1.0.
  assert shape == pytest.approx({"w_pos": 0.75, "w_total": 1.5, "hard_share": (0.3 + 0.125) / 2,
                                 "top_share": (0.6 + 0.75) / 2})
  # Ranked by P(yes) the top-scored negative of step 10 is still the hard one (0.9).
  assert field_objectives.run_shape(sweep.run_dir(str(tmp_path), arms[1], 0), "sft")[
      "top_share"] == pytest.approx((0.6 + 0.75) / 2)
  # The uniform-score panel calls decomp.weights (tens of seconds of jax dispatch): a stand-in.
  monkeypatch.setattr(field_objectives, "uniform_totals",
                      lambda: {"sft": [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]})
  paths = field_objectives.make(str(tmp_path), str(tmp_path / "figures"))
  names = sorted(os.path.basename(p) for p in paths)
  assert names == ["field_objectives_shape.pdf", "field_objectives_shape.png",
                   "field_objectives_w_vs_score.pdf", "field_objectives_w_vs_score.png"]
  table = (tmp_path / "figures" / "field_objectives_shape.md").read_text()
  assert "| SFT | 50.50 | 0.750 | 1.500 |" in table
