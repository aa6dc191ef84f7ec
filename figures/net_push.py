"""Ranking push vs calibration push: per training list, how much of the objective's weight moves
every document the same way.

For a list, the signed weights W_i (W < 0 raises a document's score, W > 0 lowers it) split into
a net part, sum_i W_i, and a balanced part. Along a shared direction (D_SFT's M_y - M_n is the
same vector for every document at the head) the net part shifts all scores of the list together:
it changes how often the model says "yes", not the order. The *imbalance*

    |sum_i W_i| / sum_i |W_i|   in [0, 1]

is the share of the push spent on that shift. InfoNCE's weights sum to zero over every list
(softmax share minus label), so CL's imbalance is 0 by construction: all of its push ranks.
SFT's is sum over negatives of p minus sum over positives of (1 - p): from an uncalibrated start
(p = 0.5 everywhere, 1 positive and k negatives) it is (k - 1) / (k + 1), 60% of the push for
k = 4 goes to "say no to everything" until the model has learned the class prior.

Draws the median and 10-90% band of the imbalance over training per arm, and the signed net
weight (its sign says whether the list is pushed towards "yes" or "no").

  python figures/net_push.py runs/probe [--out DIR]
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import plt  # noqa: E402


def list_imbalance(examples: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(step [L], net weight sum_i W_i [L], imbalance |net| / sum_i |W_i| [L])`` per list."""
  weight = examples["weight"].astype(np.float64)
  steps, net, _ = common.list_sums(examples, weight)
  _, total, _ = common.list_sums(examples, np.abs(weight))
  imbalance = np.divide(np.abs(net), total, out=np.zeros_like(net), where=total > 0)
  return steps, net, imbalance


def make(sweep_dir: str, out_dir: str) -> list[str]:
  logged = common.logged_arms(sweep_dir)
  if not logged:
    return []
  fig, (ax_share, ax_net) = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
  for arm, ex, colour in logged:
    steps, net, imbalance = list_imbalance(ex)
    for ax, values in ((ax_share, imbalance), (ax_net, net)):
      unique, q = common.quantile_band(steps, values)
      ax.plot(unique, q[:, 1], color=colour, lw=1.8, label=arm["label"])
      ax.fill_between(unique, q[:, 0], q[:, 2], color=colour, alpha=0.15)
  ax_share.set_ylim(-0.02, 1.02)
  ax_share.set_ylabel("|sum W| / sum |W| per list")
  ax_share.set_title("share of the push that moves the whole list alike", fontsize=10)
  ax_net.axhline(0.0, color="black", lw=0.8)
  ax_net.set_ylabel("sum W per list (> 0: towards 'no')")
  ax_net.set_title("net weight per list", fontsize=10)
  for ax in (ax_share, ax_net):
    ax.set_xlabel("training step")
  ax_share.legend(fontsize=7)
  fig.suptitle("Ranking vs calibration push per training list (median, 10-90% band)", fontsize=11)
  fig.tight_layout()
  return common.save(fig, out_dir, "net_push")


if __name__ == "__main__":
  common.main(make, __doc__)
