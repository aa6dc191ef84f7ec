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


def grid_cells(summary, key: str = "overall") -> dict | None:
  """``{(weight, direction): stats}`` of the arms that set only W and D, or None when they do not
  form a probe table."""
  cells = {}
  for stats in summary["arms"].values():
    overrides = stats.get("overrides", {})
    # The grid holds the arms that set only W and D; arms that change something else too (a
    # random label head, a learning rate) are other experiments, not cells of this table.
    if set(overrides) != {"weight", "direction"} or not stats.get(key, {}).get("mean"):
      continue
    pair = (overrides["weight"], overrides["direction"])
    if pair in cells:  # two arms claim one cell: drawing either would hide the other
      return None
    cells[pair] = stats[key]
  # A table only if some weight is crossed with two directions and some direction with two
  # weights (two pure objectives alone are a diagonal, not a probe).
  crossed = lambda axis: any(sum(pair[axis] == v for pair in cells) > 1
                             for v in {pair[axis] for pair in cells})
  return cells if crossed(0) and crossed(1) else None


def make(sweep_dir: str, out_dir: str, key: str = "overall") -> list[str]:
  path = os.path.join(sweep_dir, "summary.json")
  if not os.path.exists(path):
    return []
  cells = grid_cells(common.read_json(path), key)
  if cells is None:
    return []
  weights = sorted({w for w, _ in cells}, key=lambda w: (w != "sft", w))
  directions = sorted({d for _, d in cells}, key=lambda d: (d != "sft", d))
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
