"""Validation NDCG@10 over training steps per objective: mean over seeds with a min-max band.
Each run is scored with its own primary ranking score (see results.json 'score').

  python figures/val_ndcg.py runs/probe [--out DIR]
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import plt  # noqa: E402


def make(sweep_dir: str, out_dir: str, metric: str = "ndcg@10") -> list[str]:
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  drawn = False
  arms = common.arms(sweep_dir)
  for index, arm in enumerate(arms):
    curves = {}
    for workdir in arm["runs"]:
      for record in common.read_jsonl(os.path.join(workdir, "eval.jsonl")):
        if metric in record:
          curves.setdefault(workdir, {})[record["step"]] = 100 * record[metric]
    if not curves:
      continue
    steps = sorted(set.intersection(*(set(c) for c in curves.values())))
    if not steps:
      continue
    values = np.array([[c[s] for s in steps] for c in curves.values()])
    colour = common.colour(index, len(arms))
    ax.plot(steps, values.mean(0), color=colour, lw=1.8, marker="o", ms=3,
            label=f"{arm['label']} (n={len(values)})")
    if len(values) > 1:
      ax.fill_between(steps, values.min(0), values.max(0), color=colour, alpha=0.15)
    drawn = True
  if not drawn:
    plt.close(fig)
    return []
  ax.set_xlabel("training step")
  ax.set_ylabel(f"validation {metric} (x100)")
  ax.set_title("Validation ranking quality over training (mean over seeds, min-max band)",
               fontsize=10)
  ax.legend(fontsize=7)
  fig.tight_layout()
  return common.save(fig, out_dir, "val_ndcg")


if __name__ == "__main__":
  common.main(make, __doc__)
