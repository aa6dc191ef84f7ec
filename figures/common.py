"""Reading sweep directories for figures: numpy and json only (no jax, no model code).

A sweep directory holds ``sweep.json`` (arms and seeds), ``summary.json`` and one workdir per run
at ``<arm>/seed<k>/`` with ``config.json``, ``steps.jsonl``, ``eval.jsonl``,
``examples/<step>.npz`` and ``results.json`` (see ``decomp/train/logs.py`` for the columns).
"""

from __future__ import annotations

import glob
import json
import os
import zipfile
import zlib
from typing import Any, Iterator

import numpy as np

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# One colour per (weight, direction) family, used by every figure.
PALETTE = ["#1b6ca8", "#7fb2d9", "#f1a340", "#d95f02", "#6a3d9a", "#33a02c", "#e31a1c", "#999999",
           "#b15928", "#a6cee3"]


def colour(index: int, count: int) -> str:
  """Colour of the ``index``-th of ``count`` series: the palette above for up to ten, tab20 for
  up to twenty (a calibration sweep's 16 arms), cycling beyond."""
  if count <= len(PALETTE):
    return PALETTE[index]
  return matplotlib.colors.to_hex(plt.get_cmap("tab20")(index % 20))


class UnreadableFile(Exception):
  """A sweep file the figures cannot read; ``str()`` is ``'<path>: <what is wrong>'``."""

  def __init__(self, path: str, problem: str):
    super().__init__(f"{path}: {problem}")
    self.path = path
    self.problem = problem


# Files the readers passed over so that a figure could still be drawn from the rest
# ({path: problem}); make_all.py reports each once.
SKIPPED: dict[str, str] = {}


def skip(error: UnreadableFile) -> None:
  SKIPPED.setdefault(error.path, error.problem)


def read_json(path: str) -> Any:
  """The JSON in ``path``; raises :class:`UnreadableFile` naming it when it is missing, not text
  or not JSON."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise UnreadableFile(path, f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
                         ) from None
  except UnicodeDecodeError as e:
    raise UnreadableFile(path, f"not UTF-8 text (byte {e.start})") from None
  except OSError as e:
    raise UnreadableFile(path, e.strerror or str(e)) from None


def read_json_or_skip(path: str, default: Any = None) -> Any:
  """:func:`read_json`, or ``default`` when the file is absent or unreadable (recorded in
  :data:`SKIPPED`)."""
  if not os.path.exists(path):
    return default
  try:
    return read_json(path)
  except UnreadableFile as e:
    skip(e)
    return default


def read_jsonl(path: str) -> list[dict]:
  """JSON lines; a torn last line (a killed writer) is skipped."""
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return out


def read_examples(workdir: str) -> dict[str, np.ndarray]:
  """All per-example shards of a run, concatenated column by column; a shard that cannot be read
  (truncated, not an npz, columns of unequal length) is left out and recorded in
  :data:`SKIPPED`."""
  shards = sorted(glob.glob(os.path.join(workdir, "examples", "*.npz")))
  columns: dict[str, list[np.ndarray]] = {}
  for path in shards:
    try:
      with np.load(path, allow_pickle=False) as data:
        shard = {key: data[key] for key in data.files}
      if len({len(v) for v in shard.values()}) > 1:
        raise ValueError("its columns have different lengths")
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, KeyError) as e:
      skip(UnreadableFile(path, f"unreadable examples shard ({type(e).__name__}: {e}); "
                          "left out"))
      continue
    for key, value in shard.items():
      columns.setdefault(key, []).append(value)
  return {k: np.concatenate(v) for k, v in columns.items()}


def arms(sweep_dir: str) -> list[dict]:
  """``[{'name', 'label', 'overrides', 'runs': [workdir, ...]}]`` in the sweep's order.

  A single run's workdir (``python -m decomp.train --workdir W``) is a sweep of one arm, named
  after its objective, with one run.
  """
  if os.path.exists(os.path.join(sweep_dir, "steps.jsonl")):
    config = read_json_or_skip(os.path.join(sweep_dir, "config.json"), {})
    name = objective_fields(config)["objective"] or os.path.basename(os.path.normpath(sweep_dir))
    return [{"name": name, "label": name, "overrides": {}, "runs": [sweep_dir]}]
  if not os.path.isdir(sweep_dir):
    raise UnreadableFile(sweep_dir, "no such directory" if not os.path.exists(sweep_dir)
                         else "not a directory")
  path = os.path.join(sweep_dir, "sweep.json")
  description = read_json_or_skip(path, {})
  described = description.get("arms") if isinstance(description, dict) else None
  if not described:  # a directory of arms without (a readable) description: alphabetically
    described = [{"name": d, "label": d, "overrides": {}} for d in sorted(os.listdir(sweep_dir))
                 if os.path.isdir(os.path.join(sweep_dir, d))]
  # Arms added beside the sweep's own (e.g. a user's hybrid trained into the same folder).
  named = {a["name"] for a in described}
  described = described + [{"name": d, "label": d, "overrides": {}}
                           for d in sorted(os.listdir(sweep_dir))
                           if d not in named and os.path.isdir(os.path.join(sweep_dir, d))]
  out = []
  for arm in described:
    runs = sorted(d for d in glob.glob(os.path.join(sweep_dir, arm["name"], "seed*"))
                  if os.path.exists(os.path.join(d, "steps.jsonl")))
    if runs:
      out.append({**arm, "runs": runs})
  if not out:
    raise UnreadableFile(sweep_dir, "no runs with logs (expected <arm>/seed<k>/steps.jsonl)")
  return out


def run_config(workdir: str) -> dict:
  return read_json(os.path.join(workdir, "config.json"))


def objective_fields(config) -> dict:
  """``objective``, ``weight``, ``direction`` and ``temperature`` of a run's ``config.json``: a
  config with sections (``{"objective": {"name", "weight", ...}}``) or a flat one of an earlier
  version (``{"objective": "sft", "weight": "cl", ...}``). Missing fields are None (temperature
  1.0)."""
  config = config if isinstance(config, dict) else {}
  section = config.get("objective")
  if isinstance(section, dict):
    return {"objective": section.get("name"), "weight": section.get("weight"),
            "direction": section.get("direction"),
            "temperature": section.get("temperature", 1.0)}
  return {"objective": section, "weight": config.get("weight"),
          "direction": config.get("direction"), "temperature": config.get("temperature", 1.0)}


def list_softmax_share(examples: dict[str, np.ndarray], temperature: float = 1.0) -> np.ndarray:
  """Each document's share of its list's softmax over CL scores (yes-logit / temperature).

  For the CL weight this is the natural "probability": W_CL = -(1 - share) for a single positive
  and W_CL = share for a negative, the same form as SFT's with P(yes) replaced by the share.
  """
  keys = np.char.add(examples["step"].astype(str), np.char.add("/", examples["query_id"]))
  _, group = np.unique(keys, return_inverse=True)
  scores = examples["cl_score"].astype(np.float64) / temperature
  peak = np.full(group.max() + 1, -np.inf)
  np.maximum.at(peak, group, scores)
  exp = np.exp(scores - peak[group])
  total = np.zeros(group.max() + 1)
  np.add.at(total, group, exp)
  return exp / total[group]


def quantile_band(steps: np.ndarray, values: np.ndarray,
                  q=(0.1, 0.5, 0.9)) -> tuple[np.ndarray, np.ndarray]:
  """Per distinct step, the given quantiles of ``values``: (unique steps [S], quantiles [S, Q])."""
  unique = np.unique(steps)
  return unique, np.stack([np.quantile(values[steps == s], q) for s in unique])


FORMATS = ("png", "pdf")  # what save() writes (publish.py keeps PNG only for the docs)
PNG_DPI = 150  # publish.py uses less for the committed docs


def save(fig, out_dir: str, name: str) -> list[str]:
  """Writes ``<name>.png`` and ``<name>.pdf`` (``FORMATS``); returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for ext in FORMATS:
    path = os.path.join(out_dir, f"{name}.{ext}")
    fig.savefig(path, dpi=PNG_DPI if ext == "png" else None, bbox_inches="tight")
    paths.append(path)
  plt.close(fig)
  return paths


def pooled_examples(arm: dict) -> dict[str, np.ndarray]:
  """The per-example logs of all of an arm's runs, concatenated ({} when none logged any), with
  a ``run`` column (the run's index in the arm) so lists of different seeds stay apart."""
  pooled = []
  for index, workdir in enumerate(arm["runs"]):
    examples = read_examples(workdir)
    if examples:
      examples["run"] = np.full(len(examples["step"]), index, np.int32)
      pooled.append(examples)
  if not pooled:
    return {}
  return {k: np.concatenate([p[k] for p in pooled]) for k in pooled[0]}


def logged_arms(sweep_dir: str) -> list[tuple[dict, dict[str, np.ndarray], str]]:
  """``(arm, pooled examples, colour)`` for every arm whose runs logged per-example rows; the
  colour follows the arm's place in the sweep, so an arm has one colour in every figure."""
  out = []
  every = arms(sweep_dir)
  for index, arm in enumerate(every):
    examples = pooled_examples(arm)
    if examples:
      out.append((arm, examples, colour(index, len(every))))
  return out


def list_sums(examples: dict[str, np.ndarray], values: np.ndarray) -> tuple[np.ndarray, ...]:
  """Per logged training list (run, step, query): ``(step [L], sum of values [L], row -> list
  index [N])``."""
  keys = np.stack([examples["run"].astype(np.int64), examples["step"].astype(np.int64)], 1)
  _, query = np.unique(examples["query_id"], return_inverse=True)
  keys = np.concatenate([keys, query.reshape(-1, 1)], 1)
  unique, inverse = np.unique(keys, axis=0, return_inverse=True)
  inverse = inverse.reshape(-1)
  return unique[:, 1], np.bincount(inverse, weights=values, minlength=len(unique)), inverse


def main(make, doc: str) -> None:
  """The command line every figure script shares: ``SWEEP [--out DIR]``."""
  import argparse
  parser = argparse.ArgumentParser(description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("sweep", help="sweep directory (arms of seed workdirs)")
  parser.add_argument("--out", default=None, help="output folder (default: <sweep>/figures)")
  args = parser.parse_args()
  print("\n".join(make(args.sweep, args.out or os.path.join(args.sweep, "figures"))))


def iter_runs(sweep_dir: str) -> Iterator[tuple[int, dict, str]]:
  """``(arm index, arm, workdir)`` for every run of a sweep."""
  for index, arm in enumerate(arms(sweep_dir)):
    for workdir in arm["runs"]:
      yield index, arm, workdir
