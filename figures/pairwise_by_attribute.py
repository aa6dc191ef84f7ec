"""What each run has learned to tell apart: pairwise accuracy (positive above negative) by what
the negative gets wrong — one attribute (shape, colour, ...), several, or a random scene.

Two figures from the playground runs' ``results.json`` (test) and ``eval.jsonl`` (validation),
each read with the run's own primary score:

* ``pairwise_by_attribute``: final test accuracy per category, a bar per arm (mean over seeds)
  with one dot per seed;
* ``pairwise_over_training``: validation accuracy per category over the steps, one line per
  run: where seeds diverge, this shows which distinction one run had found and another had not.

Runs without the ``pairwise`` record (JSONL data, or runs logged before it existed) are skipped.

  python figures/pairwise_by_attribute.py runs/probe [--out DIR]
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import plt  # noqa: E402

# decomp.data.playground.analysis.CATEGORIES, repeated so figures need no jax import.
CATEGORIES = ("shape", "colour", "size", "position", "count", "texture", "2+ attributes", "random")


def _pairwise(record: dict) -> dict[str, dict] | None:
  """The record's pairwise block for its own primary score."""
  return record.get("pairwise", {}).get(record.get("score", "sft")) or None


def _accuracies(record: dict) -> dict[str, float] | None:
  pairs = _pairwise(record)
  return {c: r["accuracy"] for c, r in pairs.items()} if pairs else None


def _test(workdir: str) -> dict[str, dict] | None:
  """A run's test pairwise block (``{category: {'accuracy', 'pairs'}}``), or None."""
  path = os.path.join(workdir, "results.json")
  results = common.read_json_or_skip(path, {})
  return _pairwise(results.get("test", {})) if results else None


def _curve(workdir: str) -> dict[int, dict[str, float]]:
  out = {}
  for record in common.read_jsonl(os.path.join(workdir, "eval.jsonl")):
    accuracies = _accuracies(record)
    if accuracies is not None and record.get("split", "val") == "val":
      out[int(record["step"])] = accuracies
  return out


def make(sweep_dir: str, out_dir: str) -> list[str]:
  arms = common.arms(sweep_dir)
  tests = [(index, arm, [t for t in map(_test, arm["runs"]) if t]) for index, arm in
           enumerate(arms)]
  tests = [t for t in tests if t[2]]
  if not tests:
    return []
  finals = [(index, arm, [{c: r["accuracy"] for c, r in t.items()} for t in runs])
            for index, arm, runs in tests]
  # Every run of a sweep shares the test set, so any run's pair counts label the axis.
  counts = {c: r["pairs"] for c, r in tests[0][2][0].items()}
  categories = [c for c in CATEGORIES if any(c in run for _, _, runs in finals for run in runs)]
  paths = []

  fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(categories) * max(1, len(finals) / 3)), 4.2))
  width = 0.8 / len(finals)
  x = np.arange(len(categories))
  for slot, (index, arm, runs) in enumerate(finals):
    colour = common.colour(index, len(arms))
    offset = x - 0.4 + width * (slot + 0.5)
    values = np.array([[run.get(c, np.nan) for c in categories] for run in runs])
    ax.bar(offset, np.nanmean(values, 0), width, color=colour, alpha=0.75,
           label=f"{arm['label']} (n={len(runs)})")
    for row in values:
      ax.plot(offset, row, ".", color="black", ms=3)
  ax.axhline(0.5, color="grey", lw=0.8, ls="--")
  ax.set_xticks(x, [f"{c}\n({counts[c]} pairs)" if c in counts else c for c in categories],
                fontsize=7)
  ax.set_ylim(0.3, 1.02)
  ax.set_ylabel("test pairwise accuracy (positive above negative)")
  ax.set_title("What the runs tell apart, by what the negative gets wrong (dots: seeds; "
               "dashed: chance)", fontsize=9)
  ax.legend(fontsize=7, ncol=min(4, len(finals)), loc="upper center", bbox_to_anchor=(0.5, -0.13))
  fig.tight_layout()
  paths += common.save(fig, out_dir, "pairwise_by_attribute")

  curves = [(index, arm, workdir, _curve(workdir)) for index, arm, _ in finals
            for workdir in arm["runs"]]
  curves = [c for c in curves if len(c[3]) > 1]
  if curves:
    # Validation lists may lack a category the test has (no shape-only negatives, say).
    categories = [c for c in categories if any(c in point for *_, curve in curves
                                               for point in curve.values())]
    cols = 4
    rows = -(-len(categories) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.4 * rows), sharex=True,
                             sharey=True, squeeze=False)
    styles = ("-", "--", ":", "-.")
    for index, arm, workdir, curve in curves:
      steps = sorted(curve)
      seed = arm["runs"].index(workdir)
      for ax, category in zip(axes.flat, categories):
        label = f"{arm['label']}, {os.path.basename(workdir)}" if ax is axes.flat[0] else None
        ax.plot(steps, [curve[s].get(category, np.nan) for s in steps], styles[seed % 4],
                color=common.colour(index, len(arms)), lw=1.2, label=label)
    for ax, category in zip(axes.flat, categories):
      ax.set_title(category, fontsize=9)
      ax.axhline(0.5, color="grey", lw=0.6, ls="--")
    for ax in axes.flat[len(categories):]:
      ax.axis("off")
    for ax in axes[-1]:
      ax.set_xlabel("training step", fontsize=8)
    for ax in axes[:, 0]:
      ax.set_ylabel("val pairwise acc.", fontsize=8)
    fig.legend(*axes.flat[0].get_legend_handles_labels(), fontsize=6, loc="lower center",
               ncol=min(4, len(curves)), bbox_to_anchor=(0.5, -0.02 - 0.025 * (len(curves) // 4)))
    fig.suptitle("Validation pairwise accuracy by what the negative gets wrong, one line per run",
                 fontsize=10)
    fig.tight_layout()
    paths += common.save(fig, out_dir, "pairwise_over_training")
  return paths


if __name__ == "__main__":
  common.main(make, __doc__)
