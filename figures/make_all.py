"""Regenerates every figure a sweep's logs support (PNG + PDF), reading only the sweep directory.

  python figures/make_all.py runs/probe [runs/negatives ...] [--out DIR]

Without ``--out`` each sweep's figures go to ``<sweep>/figures/``.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ablation_curves  # noqa: E402
import field_objectives  # noqa: E402
import net_push  # noqa: E402
import list_size  # noqa: E402
import pairwise_by_attribute  # noqa: E402
import probe_heatmap  # noqa: E402
import update_by_difficulty  # noqa: E402
import update_over_training  # noqa: E402
import val_ndcg  # noqa: E402
import weight_vs_score  # noqa: E402

FIGURES = (probe_heatmap, weight_vs_score, update_over_training, update_by_difficulty, net_push,
           val_ndcg, ablation_curves, pairwise_by_attribute, list_size, field_objectives)


def make_all(sweep_dir: str, out_dir: str | None = None) -> list[str]:
  out_dir = out_dir or os.path.join(sweep_dir, "figures")
  paths = []
  for module in FIGURES:
    paths += module.make(sweep_dir, out_dir)
  return paths


def main(argv=None) -> list[str]:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("sweeps", nargs="+")
  parser.add_argument("--out", default=None, help="one folder for all figures (default: per sweep)")
  args = parser.parse_args(argv)
  paths = []
  for sweep in args.sweeps:
    out = os.path.join(args.out, os.path.basename(os.path.normpath(sweep))) if args.out else None
    made = make_all(sweep, out)
    print(f"{sweep}: {len(made) // 2} figure(s)")
    paths += made
  for path in paths:
    if path.endswith(".png"):
      print("  " + path)
  return paths


if __name__ == "__main__":
  main()
