"""Per-example |W| and update magnitude |W| * ||grad_h f_D|| over training, per objective:
median and 10-90% band over all logged documents (all seeds pooled), positives and negatives.

The paper's observation to check: W_CL stays below W_SFT throughout training.

  python figures/update_over_training.py runs/probe [--out DIR]
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import plt  # noqa: E402


FLOOR = 1e-4


def make(sweep_dir: str, out_dir: str) -> list[str]:
  logged = common.logged_arms(sweep_dir)
  if not logged:
    return []
  fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
  drawn = False
  for arm, ex, colour in logged:
    for row, (column, ylabel) in enumerate((("weight", "|W|"), ("update", "|W| x ||D||"))):
      # Log axes: a zero weight (e.g. tau-masked, learned documents) is drawn at the floor.
      values = np.maximum(np.abs(ex[column]), FLOOR)
      for col, is_pos in enumerate((1, 0)):
        sel = ex["label"] == is_pos
        if not sel.any():
          continue
        steps, q = common.quantile_band(ex["step"][sel], values[sel])
        ax = axes[row, col]
        ax.plot(steps, q[:, 1], color=colour, lw=1.8, label=arm["label"])
        ax.fill_between(steps, q[:, 0], q[:, 2], color=colour, alpha=0.15)
        ax.set_ylabel(ylabel)
        ax.set_title(("positives" if is_pos else "negatives") + f": {ylabel}", fontsize=10)
        drawn = True
  if not drawn:
    plt.close(fig)
    return []
  for ax in axes[1]:
    ax.set_xlabel("training step")
  for ax in axes.flat:
    ax.set_yscale("log")
  axes[0, 0].legend(fontsize=7)
  fig.suptitle("Per-example weight and update over training (median, 10-90% band; zeros drawn "
               f"at {FLOOR:g})", fontsize=11)
  fig.tight_layout()
  return common.save(fig, out_dir, "update_over_training")


if __name__ == "__main__":
  common.main(make, __doc__)
