"""Ablation curves: the test metric against a numeric knob the sweep varies (number of negatives,
temperature, tau, ...), one line per setting of the other knobs, with 95% CI error bars.

Reads only ``summary.json``; the knob is the one numeric override that differs between arms.

  python figures/ablation_curves.py runs/negatives [--out DIR]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import plt  # noqa: E402


def _numeric_knob(arms: dict) -> str | None:
  """The override that takes several numeric values across arms (arms without it are drawn as
  reference lines)."""
  keys = {k for stats in arms.values() for k in stats.get("overrides", {})}
  for key in sorted(keys):
    values = [stats["overrides"][key] for stats in arms.values() if key in stats["overrides"]]
    numeric = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numeric) == len(values) and len(set(numeric)) > 1:
      return key
  return None


def curves(summary: dict, key: str = "overall"):
  """``(knob, {series name: [(x, mean, ci95)]}, [(reference label, mean)])`` of a summary."""
  arms = summary["arms"]
  knob = _numeric_knob(arms)
  if knob is None:
    return None, {}, []
  # Overrides every arm shares (e.g. the evaluation list size) name no series.
  first = next(iter(arms.values()))["overrides"]
  shared = {k for k, v in first.items()
            if all(k in s["overrides"] and s["overrides"][k] == v for s in arms.values())}
  series: dict[str, list] = {}
  references = []
  for stats in arms.values():
    overrides = dict(stats["overrides"])
    if stats.get(key, {}).get("mean") is None:
      continue
    if knob not in overrides:
      references.append((stats["label"], stats[key]["mean"]))
      continue
    x = overrides.pop(knob)
    overrides = {k: v for k, v in overrides.items()
                 if not isinstance(v, dict) and k not in shared}
    name = ", ".join(f"{k}={v}" for k, v in sorted(overrides.items())) or "all"
    ci = stats[key].get("ci95")
    series.setdefault(name, []).append((x, stats[key]["mean"], ci if ci == ci and ci else 0.0))
  for points in series.values():
    points.sort()
  # A curve needs two values of the knob on one series; arms that each set it once alongside
  # other changes (a calibration's budgets) are separate experiments, not an ablation axis.
  if not any(len({x for x, _, _ in points}) > 1 for points in series.values()):
    return None, {}, []
  return knob, series, references


def make(sweep_dir: str, out_dir: str, key: str = "overall") -> list[str]:
  path = os.path.join(sweep_dir, "summary.json")
  if not os.path.exists(path):
    return []
  knob, series, references = curves(common.read_json(path), key)
  if knob is None:
    return []
  fig, ax = plt.subplots(figsize=(6.2, 4.0))
  for index, (name, points) in enumerate(sorted(series.items())):
    xs, ys, errs = zip(*points)
    ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, lw=1.6,
                color=common.colour(index, len(series)), label=name)
  for index, (label, value) in enumerate(references):
    ax.axhline(value, color="black", ls="--", lw=1, alpha=0.7)
    ax.annotate(label, (0.01, value), xycoords=("axes fraction", "data"), fontsize=7,
                va="bottom")
  if knob in ("negatives", "temperature"):
    ax.set_xscale("log", base=2 if knob == "negatives" else 10)
  ax.set_xlabel(knob)
  ax.set_ylabel(f"test NDCG@10 x100 ({key})")
  ax.set_title(f"{os.path.basename(os.path.normpath(sweep_dir))}: metric vs {knob} "
               "(mean ± 95% CI over seeds)", fontsize=10)
  ax.legend(fontsize=7)
  fig.tight_layout()
  return common.save(fig, out_dir, f"ablation_{knob}")


if __name__ == "__main__":
  common.main(make, __doc__)
