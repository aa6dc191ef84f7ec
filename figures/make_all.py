"""Regenerates every figure a sweep's logs support (PNG + PDF), reading only the sweep directory.

  python figures/make_all.py runs/probe [runs/negatives ...] [--out DIR]

Without ``--out`` each sweep's figures go to ``<sweep>/figures/``.

A file that cannot be read (a truncated ``examples/*.npz``, a ``results.json`` that is not JSON)
is named on one ``error:`` line and left out; every figure the other files support is still
drawn. The exit status is 1 when a sweep named on the command line gave no figure at all (a
missing or empty directory, nothing readable), else 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ablation_curves  # noqa: E402
import common  # noqa: E402
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


def make_all(sweep_dir: str, out_dir: str | None = None,
             problems: dict[str, str] | None = None) -> list[str]:
  """Draws every figure the sweep's files support; returns their paths.

  ``problems`` (``{path: what is wrong}``) receives the files that could not be read and the
  figures that failed because of them; without it the first such problem raises
  :class:`common.UnreadableFile`.
  """
  out_dir = out_dir or os.path.join(sweep_dir, "figures")
  found: dict[str, str] = {}
  paths = []
  common.SKIPPED.clear()
  for module in FIGURES:
    try:
      paths += module.make(sweep_dir, out_dir)
    except common.UnreadableFile as e:
      found.setdefault(e.path, e.problem)
    except Exception as e:  # malformed contents (a summary without 'arms', ...): name the figure
      if problems is None:
        raise
      where = traceback.extract_tb(e.__traceback__)[-1]
      found.setdefault(f"{sweep_dir} ({module.__name__})",
                       f"figure not drawn: {type(e).__name__}: {e} "
                       f"({os.path.basename(where.filename)}:{where.lineno})")
  found = {**common.SKIPPED, **found}
  common.SKIPPED.clear()
  if problems is None and found:
    raise common.UnreadableFile(*next(iter(found.items())))
  if problems is not None:
    for path, problem in found.items():
      problems.setdefault(path, problem)
  return paths


def main(argv=None) -> list[str]:
  """Draws the figures of the sweeps in ``argv``; returns their paths."""
  return _run(argv)[0]


def cli(argv=None) -> int:
  """The command line's exit status: 1 when a named sweep gave no figure."""
  return 1 if _run(argv)[1] else 0


def _run(argv) -> tuple[list[str], list[str]]:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("sweeps", nargs="+")
  parser.add_argument("--out", default=None, help="one folder for all figures (default: per sweep)")
  args = parser.parse_args(argv)
  paths = []
  empty = []
  for sweep in args.sweeps:
    out = os.path.join(args.out, os.path.basename(os.path.normpath(sweep))) if args.out else None
    problems: dict[str, str] = {}
    made = make_all(sweep, out, problems)
    for path, problem in problems.items():
      print(f"error: {path}: {problem}", file=sys.stderr)
    print(f"{sweep}: {sum(p.endswith('.png') for p in made)} figure(s)")
    if not made:
      empty.append(sweep)
      if not problems:
        print(f"error: {sweep}: no figure drawn (nothing in it that a figure reads)",
              file=sys.stderr)
    paths += made
  for path in paths:
    if path.endswith(".png"):
      print("  " + path)
  return paths, empty


if __name__ == "__main__":
  sys.exit(cli())
