"""The field's objectives: W against each document's score, every weight side by side, and the
shape of each weight read from the logs.

For a sweep whose arms set ``weight`` (``experiments/field_objectives.py``), from the runs'
per-example logs (``examples/*.npz``, the signed W each document got at its logged step):

- ``field_objectives_w_vs_score.png``: one panel per weight (its D_CL arm, the field's own
  pairing; SFT's arm for W_SFT), W against the score the weight reads (z_y; SFT: z_y - z_n), the
  positive, hard-mined and random negatives in three colours;
- ``field_objectives_shape.png``: per arm, test NDCG@10 against the share of the negatives' |W|
  on the list's top-scored negative, and against the total |W| per list (mean ± 95% CI over
  seeds); beside it the total |W| per list at uniform scores against the list size, computed by
  the weights themselves (``decomp.weights``; MarginMSE at a teacher that agrees with the scores,
  i.e. W = 0, is left out);
- ``field_objectives_shape.json`` / ``.md``: the plotted numbers per arm, and the Spearman rank
  correlation over arms between NDCG and each shape statistic.

  python figures/field_objectives.py runs/field_objectives_head [--out DIR]
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import plt  # noqa: E402

FIELD = ("listnet", "listmle", "ranknet", "lambdaloss", "margin_mse", "hard_infonce")
PANELS = ("sft", "cl", *FIELD)
STATS = ("w_pos", "w_total", "hard_share", "top_share")
STAT_TITLES = {"w_pos": "positive's |W| per list", "w_total": "total |W| per list",
               "hard_share": "share of |W| on hard-mined negatives",
               "top_share": "share of the negatives' |W| on the top-scored negative"}
KINDS = (("positive", "tab:green"), ("hard", "tab:red"), ("random", "tab:blue"))


def _score(ex: dict[str, np.ndarray], by: str) -> np.ndarray:
  """The score a weight (or an arm's ranking) reads: z_y, or z_y - z_n = logit P(yes)."""
  if by == "cl":
    return ex["cl_score"].astype(np.float64)
  p = np.clip(ex["sft_score"].astype(np.float64), 1e-7, 1 - 1e-7)
  return np.log(p) - np.log1p(-p)


def run_shape(workdir: str, rank_by: str) -> dict[str, float] | None:
  """Mean over the run's logged lists of |W+|, sum |W|, the share of sum |W| on hard-mined
  negatives and the share of the negatives' sum |W| on the top-scored negative (by
  ``rank_by``'s score); None without per-example logs."""
  ex = common.read_examples(workdir)
  if not ex or "weight" not in ex:
    return None
  keys = np.char.add(ex["step"].astype(str), np.char.add("/", ex["query_id"].astype(str)))
  _, group = np.unique(keys, return_inverse=True)
  count = group.max() + 1
  w = np.abs(ex["weight"].astype(np.float64))
  pos = ex["label"] > 0
  hard = ex["doc_kind"].astype(str) == "hard"
  score = np.where(pos, -np.inf, _score(ex, rank_by))
  top_score = np.full(count, -np.inf)
  np.maximum.at(top_score, group, score)
  top = ~pos & (score == top_score[group])
  total = np.bincount(group, w, count)
  negatives = np.bincount(group, w * ~pos, count)
  share = lambda part, whole: np.divide(part, whole, out=np.zeros_like(whole), where=whole > 0)
  return {"w_pos": float(np.bincount(group, w * pos, count).mean()),
          "w_total": float(total.mean()),
          "hard_share": float(share(np.bincount(group, w * hard, count), total).mean()),
          "top_share": float(share(np.bincount(group, w * top, count), negatives).mean())}


def _mean_ci(values) -> tuple[float | None, float]:
  values = np.asarray(values, np.float64)
  if not len(values):
    return None, 0.0
  if len(values) == 1:
    return float(values[0]), 0.0
  t = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31, 10: 2.26}
  return float(values.mean()), float(t.get(len(values), 2.0) * values.std(ddof=1)
                                     / np.sqrt(len(values)))


def _spearman(x, y) -> float | None:
  x, y = np.asarray(x, float), np.asarray(y, float)
  if len(x) < 3:
    return None
  rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
  return float(np.corrcoef(rx, ry)[0, 1])


def collect(sweep_dir: str) -> dict[str, dict]:
  """``{arm: {'label', 'weight', 'direction', 'ndcg': (mean, ci), stat: (mean, ci)}}`` for the
  arms that name a weight and logged per-example rows."""
  summary_path = os.path.join(sweep_dir, "summary.json")
  summary = common.read_json(summary_path)["arms"] if os.path.exists(summary_path) else {}
  out = {}
  for arm in common.arms(sweep_dir):
    weight, direction = arm["overrides"].get("weight"), arm["overrides"].get("direction", "sft")
    if weight not in PANELS:
      continue
    per_run = [r for r in (run_shape(w, direction) for w in arm["runs"]) if r is not None]
    if not per_run:
      continue
    entry = {"label": arm.get("label") or arm["name"], "weight": weight, "direction": direction,
             "seeds": len(per_run)}
    for stat in STATS:
      entry[stat] = _mean_ci([r[stat] for r in per_run])
    overall = summary.get(arm["name"], {}).get("overall", {})
    entry["ndcg"] = (overall.get("mean"), overall.get("ci95") or 0.0)
    out[arm["name"]] = entry
  return out


def correlations(data: dict[str, dict]) -> dict[str, dict[str, float | None]]:
  """Spearman correlation over arms of NDCG with each shape statistic, per direction."""
  out = {}
  for direction in ("sft", "cl"):
    arms = [a for a in data.values() if a["direction"] == direction and a["ndcg"][0] is not None]
    out[direction] = {stat: _spearman([a[stat][0] for a in arms], [a["ndcg"][0] for a in arms])
                      for stat in STATS}
    out[direction]["arms"] = len(arms)
  return out


UNIFORM_SIZES = (2, 4, 8, 16, 32, 64)


def uniform_totals(sizes=UNIFORM_SIZES) -> dict[str, list[float]]:
  """Total |W| of one list (1 positive, k negatives) at uniform scores (all z = 0), by weight,
  computed by ``decomp.weights`` itself; {} when decomp is not importable."""
  try:
    import jax.numpy as jnp
    from decomp import Readout, weights
  except ImportError:  # pragma: no cover
    return {}
  # All sizes in one padded batch (masking equals slicing for every weight: tests/test_properties).
  width = max(sizes)
  where = jnp.arange(width)[None, :] < jnp.asarray(sizes)[:, None]
  labels = jnp.zeros(where.shape, jnp.int32).at[:, 0].set(1)
  readout = Readout(yes=jnp.zeros(where.shape), no=jnp.zeros(where.shape))
  return {name: jnp.sum(jnp.abs(weights.WEIGHTS[name](readout, labels, where=where)), -1).tolist()
          for name in PANELS if name != "margin_mse"}


def _w_vs_score(sweep_dir: str, out_dir: str, max_points: int) -> list[str]:
  arms = {}
  for arm in common.arms(sweep_dir):
    weight, direction = arm["overrides"].get("weight"), arm["overrides"].get("direction", "sft")
    # Each weight's own pairing: SFT with D_SFT, every other weight with D_CL (the score it reads).
    if weight in PANELS and direction == ("sft" if weight == "sft" else "cl"):
      arms[weight] = arm
  names = [w for w in PANELS if w in arms]
  if not names:
    return []
  cols = 4
  rows = -(-len(names) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
  rng = np.random.default_rng(0)
  for ax, name in zip(axes.flat, names):
    ex = common.pooled_examples(arms[name])
    if not ex:
      continue
    late = ex["step"] > np.median(ex["step"])  # the second half of training
    x = _score(ex, "sft" if name == "sft" else "cl")[late]
    w = ex["weight"].astype(np.float64)[late]
    kind = np.where(ex["label"][late] > 0, "positive", ex["doc_kind"].astype(str)[late])
    pick = rng.permutation(len(x))[:max_points]
    for label, colour in KINDS:
      sel = pick[kind[pick] == label]
      ax.scatter(x[sel], w[sel], s=3, alpha=0.35, color=colour, label=label, rasterized=True)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_title(f"{arms[name].get('label') or name}", fontsize=9)
    ax.set_xlabel("z_y - z_n" if name == "sft" else "z_y (the score it reads)", fontsize=8)
    ax.set_ylabel("W (signed)", fontsize=8)
  for ax in list(axes.flat)[len(names):]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=7, markerscale=3)
  fig.suptitle(f"{os.path.basename(os.path.normpath(sweep_dir))}: W against the document's score "
               "(logged, second half of training)", fontsize=11)
  fig.tight_layout()
  return common.save(fig, out_dir, "field_objectives_w_vs_score")


def _shape_figure(sweep_dir: str, data: dict, uniform: dict, out_dir: str) -> list[str]:
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  markers = {"sft": "o", "cl": "s"}
  names = list(data)
  for index, name in enumerate(names):
    arm = data[name]
    if arm["ndcg"][0] is None:
      continue
    colour = common.colour(index, len(names))
    for ax, stat in zip(axes[:2], ("top_share", "w_total")):
      ax.errorbar(arm[stat][0], arm["ndcg"][0], xerr=arm[stat][1], yerr=arm["ndcg"][1],
                  marker=markers[arm["direction"]], color=colour, capsize=2, ls="none",
                  label=arm["label"])
  for ax, stat in zip(axes[:2], ("top_share", "w_total")):
    ax.set_xlabel(STAT_TITLES[stat], fontsize=9)
    ax.set_ylabel("test NDCG@10 x100", fontsize=9)
  axes[0].set_title("o: along D_SFT (by P(yes)), s: along D_CL (by z_y)", fontsize=9)
  axes[1].legend(fontsize=6, ncol=2)
  sizes = list(UNIFORM_SIZES)
  for index, (name, totals) in enumerate(uniform.items()):
    axes[2].plot(sizes, totals, marker=".", label=name, color=common.colour(index, len(uniform)))
  axes[2].set_xscale("log", base=2)
  axes[2].set_yscale("log", base=2)
  axes[2].set_xlabel("documents per list (1 positive)", fontsize=9)
  axes[2].set_title("total |W| per list at uniform scores (computed)", fontsize=9)
  axes[2].legend(fontsize=7)
  fig.suptitle(f"{os.path.basename(os.path.normpath(sweep_dir))}: weight shape against ranking "
               "(mean ± 95% CI over seeds)", fontsize=11)
  fig.tight_layout()
  return common.save(fig, out_dir, "field_objectives_shape")


def shape_markdown(data: dict, corr: dict) -> str:
  lines = ["| arm | NDCG@10 x100 | " + " | ".join(STAT_TITLES[s] for s in STATS) + " | seeds |",
           "|---" * (len(STATS) + 3) + "|"]
  fmt = lambda m: "-" if m[0] is None else f"{m[0]:.3f}"
  for arm in data.values():
    ndcg = "-" if arm["ndcg"][0] is None else f"{arm['ndcg'][0]:.2f}"
    lines.append(f"| {arm['label']} | {ndcg} | " + " | ".join(fmt(arm[s]) for s in STATS)
                 + f" | {arm['seeds']} |")
  lines += ["", "Spearman rank correlation over arms, NDCG against each statistic:", "",
            "| direction | arms | " + " | ".join(STATS) + " |", "|---" * (len(STATS) + 2) + "|"]
  for direction, row in corr.items():
    cells = ["-" if row[s] is None else f"{row[s]:+.2f}" for s in STATS]
    lines.append(f"| D_{direction.upper()} | {row['arms']} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def make(sweep_dir: str, out_dir: str, max_points: int = 3000) -> list[str]:
  try:
    data = collect(sweep_dir)
  except FileNotFoundError:
    return []
  if not any(a["weight"] in FIELD for a in data.values()):
    return []
  paths = _w_vs_score(sweep_dir, out_dir, max_points)
  corr = correlations(data)
  uniform = uniform_totals()
  paths += _shape_figure(sweep_dir, data, uniform, out_dir)
  with open(os.path.join(out_dir, "field_objectives_shape.json"), "w") as f:
    json.dump({"arms": data, "spearman": corr, "uniform_totals": uniform}, f, indent=1)
  with open(os.path.join(out_dir, "field_objectives_shape.md"), "w") as f:
    f.write(shape_markdown(data, corr))
  return paths


if __name__ == "__main__":
  common.main(make, __doc__)
