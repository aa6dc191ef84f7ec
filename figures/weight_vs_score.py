"""W as a function of the model's score, positives and negatives, per weight: analytic curves
overlaid with the logged per-example points.

SFT's weight depends on the document's own P(yes) = sigmoid(z_y - z_n): |W+| = 1 - P, |W-| = P.
CL's depends on the whole list through the document's softmax share q = exp(s) / sum exp(s) of
the yes-logits: |W+| = 1 - q, |W-| = q (divided by the temperature). Same curves, different
x-axes: the figure shows where the logged documents sit on them.

  python figures/weight_vs_score.py runs/probe [--out DIR]
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import plt  # noqa: E402


def make(sweep_dir: str, out_dir: str, max_points: int = 4000) -> list[str]:
  by_weight: dict[str, list] = {}
  for _, arm, workdir in common.iter_runs(sweep_dir):
    config = common.objective_fields(
        common.read_json_or_skip(os.path.join(workdir, "config.json"), {}))
    weight = config["weight"]
    if weight not in ("sft", "cl", "cl_rescaled"):
      continue
    ex = common.read_examples(workdir)
    if not ex:
      continue
    temperature = float(config["temperature"] or 1.0)
    x = ex["sft_score"] if weight == "sft" else common.list_softmax_share(ex, temperature)
    by_weight.setdefault(weight, []).append((x, np.abs(ex["weight"]), ex["label"], temperature))
  if not by_weight:
    return []
  names = [w for w in ("sft", "cl", "cl_rescaled") if w in by_weight]
  fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 3.8), squeeze=False)
  rng = np.random.default_rng(0)
  for ax, weight in zip(axes[0], names):
    x = np.concatenate([r[0] for r in by_weight[weight]])
    w = np.concatenate([r[1] for r in by_weight[weight]])
    label = np.concatenate([r[2] for r in by_weight[weight]])
    keep = rng.permutation(len(x))[:max_points]
    x, w, label = x[keep], w[keep], label[keep]
    for is_pos, colour, name in ((1, "#1b9e77", "positives"), (0, "#d95f02", "negatives")):
      sel = label == is_pos
      ax.scatter(x[sel], w[sel], s=5, alpha=0.35, color=colour, label=f"{name} (logged)",
                 rasterized=True)
    grid = np.linspace(0, 1, 101)
    temperature = by_weight[weight][0][3]
    scale = 1.0 / temperature if weight == "cl" else 1.0
    if weight != "cl_rescaled":
      ax.plot(grid, (1 - grid) * scale, color="#1b9e77", lw=2, label="|W+| = 1 - p")
      ax.plot(grid, grid * scale, color="#d95f02", lw=2, label="|W-| = p")
    ax.set_xlabel("P(yes) = sigmoid(z_y - z_n)" if weight == "sft"
                  else "softmax share of the list (yes-logits)")
    ax.set_ylabel("|W| (per document)")
    ax.set_title({"sft": "W_SFT: the document's own probability",
                  "cl": "W_CL: coupled through the list",
                  "cl_rescaled": "W_CL rescaled to SFT's total"}[weight], fontsize=10)
    ax.legend(fontsize=7, loc="upper center")
  fig.suptitle(f"Weight vs score ({os.path.basename(os.path.normpath(sweep_dir))})", fontsize=11)
  fig.tight_layout()
  return common.save(fig, out_dir, "weight_vs_score")


if __name__ == "__main__":
  common.main(make, __doc__)
