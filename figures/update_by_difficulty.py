"""Where each objective spends its updates: the per-example update magnitude by document kind
(positive, hard negative, random negative) and by task family, per objective.

  python figures/update_by_difficulty.py runs/probe [--out DIR]
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import plt  # noqa: E402

KINDS = ("positive", "hard", "random")


def make(sweep_dir: str, out_dir: str) -> list[str]:
  data = common.logged_arms(sweep_dir)
  if not data:
    return []
  tasks = sorted(set(np.concatenate([ex["task"] for _, ex, _ in data])))
  fig, (ax_kind, ax_task) = plt.subplots(1, 2, figsize=(12, 4.2),
                                         gridspec_kw={"width_ratios": [1, 1.6]})
  width = 0.8 / len(data)
  for index, (arm, ex, colour) in enumerate(data):
    offset = (index - (len(data) - 1) / 2) * width
    kind_values = [ex["update"][ex["doc_kind"] == k] for k in KINDS]
    positions = np.arange(len(KINDS)) + offset
    parts = ax_kind.boxplot([v if v.size else [np.nan] for v in kind_values], positions=positions,
                            widths=width * 0.9, patch_artist=True, showfliers=False)
    for box in parts["boxes"]:
      box.set_facecolor(colour)
      box.set_alpha(0.6)
    ax_kind.plot([], [], color=colour, lw=6, alpha=0.6, label=arm["label"])
    task_means = [np.mean(ex["update"][(ex["task"] == t) & (ex["label"] == 0)])
                  if np.any((ex["task"] == t) & (ex["label"] == 0)) else np.nan for t in tasks]
    ax_task.bar(np.arange(len(tasks)) + offset, task_means, width=width * 0.9, color=colour,
                alpha=0.8, label=arm["label"])
  ax_kind.set_xticks(np.arange(len(KINDS)), ["positive", "hard negative", "random negative"])
  ax_kind.set_ylabel("update |W| x ||D|| per document")
  ax_kind.set_title("by document kind (box: quartiles, whiskers 1.5 IQR)", fontsize=10)
  ax_kind.legend(fontsize=7)
  ax_task.set_xticks(np.arange(len(tasks)), tasks)
  ax_task.set_ylabel("mean update on negatives")
  ax_task.set_title("by task family (negatives)", fontsize=10)
  fig.tight_layout()
  return common.save(fig, out_dir, "update_by_difficulty")


if __name__ == "__main__":
  common.main(make, __doc__)
