"""The list-size mechanism: test NDCG@10 and the logged weights against the list size.

For a sweep whose arms vary ``negatives`` (``experiments/list_size.py``, or the full fine-tuning
``experiments/negatives.py``): one line per objective (the arm name before ``-neg<k>``), mean ±
95% CI over seeds, of

- test NDCG@10 x 100 (``summary.json``);
- the positive's |W| per list, the total |W| per list and the share of that total on hard
  negatives, averaged over every logged list of a run (``examples/*.npz``), then over seeds.

Dashed: the values at uniform scores, where W_CL = -(k/(k+1)) for the positive and 1/(k+1) for
each negative (|W+| = k/(k+1), total 2k/(k+1), hard share n_hard/(2k)); SFT takes exactly these
at its base-rate equilibrium P(yes) = 1/(k+1) (where sum_i W_i = 0), and (k+1)/2 in total at
P(yes) = 1/2 (dotted). Also writes ``list_size_weights.json`` (the plotted numbers).

  python figures/list_size.py runs/list_size [--out DIR]
"""

from __future__ import annotations

import json
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import plt  # noqa: E402

ARM = re.compile(r"^(?P<series>.+)-neg(?P<k>\d+)$")
STATS = ("w_pos", "w_total", "hard_share")


def run_weights(workdir: str) -> dict[str, float] | None:
  """Mean over the run's logged lists of |W+|, sum |W| and the share of sum |W| on hard
  negatives (None without per-example logs)."""
  ex = common.read_examples(workdir)
  if not ex or "weight" not in ex:
    return None
  keys = np.char.add(ex["step"].astype(str), np.char.add("/", ex["query_id"].astype(str)))
  _, group = np.unique(keys, return_inverse=True)
  w = np.abs(ex["weight"].astype(np.float64))
  pos = ex["label"] > 0
  hard = ex["doc_kind"].astype(str) == "hard"
  count = group.max() + 1
  total = np.bincount(group, w, count)
  w_pos = np.bincount(group, w * pos, count)
  w_hard = np.bincount(group, w * hard, count)
  share = np.divide(w_hard, total, out=np.zeros_like(total), where=total > 0)
  return {"w_pos": float(w_pos.mean()), "w_total": float(total.mean()),
          "hard_share": float(share.mean())}


def collect(sweep_dir: str) -> dict[str, dict[int, dict]]:
  """``{series: {k: {'ndcg': (mean, ci), stat: (mean, ci), ...}}}``."""
  summary_path = os.path.join(sweep_dir, "summary.json")
  summary = common.read_json_or_skip(summary_path, {}).get("arms", {})
  out: dict[str, dict[int, dict]] = {}
  for arm in common.arms(sweep_dir):
    match = ARM.match(arm["name"])
    if not match:
      continue
    series, k = match["series"], int(match["k"])
    per_run = [r for r in (run_weights(w) for w in arm["runs"]) if r is not None]
    entry = {}
    for stat in STATS:
      values = np.asarray([r[stat] for r in per_run])
      entry[stat] = _mean_ci(values)
    overall = summary.get(arm["name"], {}).get("overall", {})
    entry["ndcg"] = (overall.get("mean"), overall.get("ci95") or 0.0)
    entry["seeds"] = len(per_run)
    out.setdefault(series, {})[k] = entry
  return out


def _mean_ci(values: np.ndarray) -> tuple[float | None, float]:
  if not len(values):
    return None, 0.0
  if len(values) == 1:
    return float(values[0]), 0.0
  t = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31, 10: 2.26}
  half = t.get(len(values), 2.0) * values.std(ddof=1) / np.sqrt(len(values))
  return float(values.mean()), float(half)


def make(sweep_dir: str, out_dir: str) -> list[str]:
  try:
    data = collect(sweep_dir)
  except common.UnreadableFile:  # no runs: the other figures name the problem
    return []
  data = {s: v for s, v in data.items() if len(v) > 1}
  if not data:
    return []
  ks = np.asarray(sorted({k for v in data.values() for k in v}), np.float64)
  fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
  panels = (("ndcg", "test NDCG@10 x100"), ("w_pos", "positive's |W| per list"),
            ("w_total", "total |W| per list"), ("hard_share", "share of |W| on hard negatives"))
  for index, (series, points) in enumerate(sorted(data.items())):
    kk = sorted(points)
    for ax, (stat, _) in zip(axes, panels):
      xs = [k + 1 for k in kk if points[k][stat][0] is not None]
      ys = [points[k][stat][0] for k in kk if points[k][stat][0] is not None]
      es = [points[k][stat][1] for k in kk if points[k][stat][0] is not None]
      if xs:
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, lw=1.5, label=series,
                    color=common.colour(index, len(data)))
  uniform = {"w_pos": ks / (ks + 1), "w_total": 2 * ks / (ks + 1), "hard_share": 0.25 + 0 * ks}
  for ax, (stat, title) in zip(axes, panels):
    if stat in uniform:
      ax.plot(ks + 1, uniform[stat], "k--", lw=1,
              label="uniform scores (= SFT at P(yes)=1/(k+1))")
    if stat == "w_total":
      ax.plot(ks + 1, (ks + 1) / 2, "k:", lw=1, label="SFT at P(yes)=1/2")
      ax.set_yscale("log", base=2)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("documents per training list (k + 1)")
    ax.set_title(title, fontsize=10)
  axes[0].legend(fontsize=7)
  axes[2].legend(fontsize=7)
  fig.suptitle(f"{os.path.basename(os.path.normpath(sweep_dir))}: list size "
               "(mean ± 95% CI over seeds)", fontsize=11)
  fig.tight_layout()
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "list_size_weights.json"), "w") as f:
    json.dump({s: {str(k): v for k, v in p.items()} for s, p in data.items()}, f, indent=1)
  return common.save(fig, out_dir, "list_size")


if __name__ == "__main__":
  common.main(make, __doc__)
