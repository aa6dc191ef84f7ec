"""Regenerates every figure and table the docs show, from the sweeps' logs alone.

For each sweep directory: rebuilds ``summary.json`` / ``summary.md`` from ``sweep.json`` and the
runs' ``results.json`` (``decomp.sweep.summarize_dir``), redraws its figures, and copies
them to ``<docs>/figures/<sweep>/*.png`` and the table to ``<docs>/<sweep>_summary.md``.

  python figures/publish.py [runs/probe runs/negatives ...] [--docs docs]

Without sweep arguments: every directory under ``runs/`` that holds a ``sweep.json`` (none, on a
fresh clone: then the committed tables stay as they are). ``make docs`` runs it, then
``figures/docs_numbers.py``, which checks every number the README and ``docs/*.md`` quote against
these tables.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
import make_all  # noqa: E402
from decomp import sweep as sweep_lib  # noqa: E402


def sweeps_under(root: str) -> list[str]:
  if not os.path.isdir(root):
    return []
  return sorted(os.path.join(root, d) for d in os.listdir(root)
                if os.path.exists(os.path.join(root, d, sweep_lib.SWEEP_FILE)))


def publish(sweep_dir: str, docs: str) -> list[str]:
  """Summary and figures of one sweep into ``docs``; returns the written paths."""
  name = os.path.basename(os.path.normpath(sweep_dir))
  sweep_lib.summarize_dir(sweep_dir)
  table = os.path.join(docs, f"{name}_summary.md")
  os.makedirs(docs, exist_ok=True)
  shutil.copyfile(os.path.join(sweep_dir, "summary.md"), table)
  out = os.path.join(docs, "figures", name)
  shutil.rmtree(out, ignore_errors=True)  # no stale figure of an earlier layout survives
  # PNG only, at a resolution that keeps the repository small.
  saved = common.FORMATS, common.PNG_DPI
  common.FORMATS, common.PNG_DPI = ("png",), 100
  try:
    figures = make_all.make_all(sweep_dir, out)
  finally:
    common.FORMATS, common.PNG_DPI = saved
  return [table, *figures]


def main(argv=None) -> list[str]:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("sweeps", nargs="*", help="sweep directories (default: all under runs/)")
  parser.add_argument("--docs", default="docs", help="output folder (default %(default)s)")
  args = parser.parse_args(argv)
  sweeps = args.sweeps or sweeps_under("runs")
  if not sweeps:
    print("no sweep under runs/ (`make demo` writes one): the committed tables in "
          f"{args.docs}/ stay as they are")
  paths = []
  for sweep_dir in sweeps:
    written = publish(sweep_dir, args.docs)
    print(f"{sweep_dir}: {len(written) - 1} figure(s), table {written[0]}")
    paths += written
  return paths


if __name__ == "__main__":
  main()
