"""The probing table as a heatmap: test NDCG@10 (x100) for every weight x direction pair, with
the 95% confidence half-width over seeds; the paper's Table 1 in our setting.

Reads only ``summary.json`` of a sweep whose arms set ``weight`` and ``direction``.

  python figures/probe_heatmap.py runs/probe [--out DIR]
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import plt  # noqa: E402


def make(sweep_dir: str, out_dir: str, key: str = "overall") -> list[str]:
  path = os.path.join(sweep_dir, "summary.json")
  if not os.path.exists(path):
    return []
  summary = common.read_json(path)
  cells = {}
  for stats in summary["arms"].values():
    overrides = stats.get("overrides", {})
    if "weight" in overrides and "direction" in overrides and stats.get(key, {}).get("mean"):
      pair = (overrides["weight"], overrides["direction"])
      if pair in cells:  # the arms vary something else too (e.g. a calibration sweep): no grid
        return []
      cells[pair] = stats[key]
  weights = sorted({w for w, _ in cells}, key=lambda w: (w != "sft", w))
  directions = sorted({d for _, d in cells}, key=lambda d: (d != "sft", d))
  if len(weights) < 2 or len(directions) < 2:
    return []
  grid = np.full((len(weights), len(directions)), np.nan)
  for (w, d), stat in cells.items():
    grid[weights.index(w), directions.index(d)] = stat["mean"]
  fig, ax = plt.subplots(figsize=(1.9 * len(directions) + 1.6, 1.5 * len(weights) + 1.2))
  image = ax.imshow(grid, cmap="viridis")
  for (w, d), stat in cells.items():
    ci = stat.get("ci95")
    text = f"{stat['mean']:.2f}" + (f"\n± {ci:.2f}" if ci is not None and ci == ci else "")
    ax.text(directions.index(d), weights.index(w), text, ha="center", va="center",
            color="white" if stat["mean"] < np.nanmean(grid) else "black", fontsize=10)
  ax.set_xticks(range(len(directions)), [f"D_{d.upper()}" for d in directions])
  ax.set_yticks(range(len(weights)), [f"W_{w.upper()}" for w in weights])
  ax.set_xlabel("direction")
  ax.set_ylabel("weight")
  n = max(stat["n"] for stat in cells.values())
  ax.set_title(f"test NDCG@10 x100 ({key}; mean ± 95% CI, {n} seeds)", fontsize=10)
  fig.colorbar(image, ax=ax, shrink=0.8)
  fig.tight_layout()
  return common.save(fig, out_dir, "probe_heatmap")


if __name__ == "__main__":
  common.main(make, __doc__)
