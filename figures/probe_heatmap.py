"""The probing table as a heatmap: test NDCG@10 (x100) for every weight x direction pair, with
the 95% confidence half-width over seeds; the paper's Table 1 in our setting.

Reads only ``summary.json`` of a sweep whose arms set ``weight`` and ``direction``. Draws
``probe_heatmap`` (each run ranked by its own, the direction's, score) and, where the summary has
both scores, ``probe_heatmap_weight_score`` (each run ranked by its weight's score).

  python figures/probe_heatmap.py runs/probe [--out DIR]
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import plt  # noqa: E402


def grid_cells(summary, key: str = "overall", *, by_weight: bool = False) -> dict | None:
  """``{(weight, direction): stats}`` of the arms that set only W and D, or None when they do not
  form a probe table. ``by_weight``: each cell ranked by its weight's score (``score/sft`` for
  W_SFT, ``score/cl`` for W_CL) instead of the run's own primary score."""
  cells = {}
  for stats in summary["arms"].values():
    overrides = stats.get("overrides", {})
    # The grid holds the arms that set only W and D; arms that change something else too (a
    # random label head, a learning rate) are other experiments, not cells of this table.
    if set(overrides) != {"weight", "direction"}:
      continue
    cell_key = f"score/{overrides['weight']}" if by_weight else key
    if not stats.get(cell_key, {}).get("mean"):
      continue
    pair = (overrides["weight"], overrides["direction"])
    if pair in cells:  # two arms claim one cell: drawing either would hide the other
      return None
    cells[pair] = stats[cell_key]
  # A table only if some weight is crossed with two directions and some direction with two
  # weights (two pure objectives alone are a diagonal, not a probe).
  crossed = lambda axis: any(sum(pair[axis] == v for pair in cells) > 1
                             for v in {pair[axis] for pair in cells})
  return cells if crossed(0) and crossed(1) else None


def _draw(cells: dict, out_dir: str, name: str, title: str) -> list[str]:
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
  ax.set_title(f"{title} (mean ± 95% CI, {n} seeds)", fontsize=9)
  fig.colorbar(image, ax=ax, shrink=0.8)
  fig.tight_layout()
  return common.save(fig, out_dir, name)


def make(sweep_dir: str, out_dir: str, key: str = "overall") -> list[str]:
  path = os.path.join(sweep_dir, "summary.json")
  if not os.path.exists(path):
    return []
  summary = common.read_json(path)
  cells = grid_cells(summary, key)
  if cells is None:
    return []
  paths = _draw(cells, out_dir, "probe_heatmap",
                f"test NDCG@10 x100, ranked by the direction's score ({key})")
  # The same table with every run ranked by the score its weight reads (the paper's W x D
  # question asked of the weight's own objective); only W_SFT / W_CL have such a score.
  by_weight = grid_cells(summary, by_weight=True)
  if by_weight is not None:
    paths += _draw(by_weight, out_dir, "probe_heatmap_weight_score",
                   "test NDCG@10 x100, ranked by the weight's score")
  return paths


if __name__ == "__main__":
  common.main(make, __doc__)
