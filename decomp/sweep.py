"""The shared sweep runner: arms x seeds -> one workdir per run, resumable, summaries with CIs.

Every ``experiments/<name>.py`` describes its arms (a name and config overrides each) and calls
:func:`main`. Layout of a sweep directory::

  <sweep>/<arm>/seed<k>/      one decomp.train workdir per run (config.json, steps.jsonl, ...)
  <sweep>/sweep.json          the sweep's description (arms, seeds, base config, overrides)
  <sweep>/summary.json        mean, std, 95% CI over seeds per arm: overall, per task, per modality
  <sweep>/summary.md          the same as Markdown tables

A run whose ``results.json`` exists is complete and is not run again, so an interrupted sweep
continues where it stopped (an interrupted *run* resumes from its last checkpoint).

Before any run starts, every arm's config is built and validated (a bad ``--set`` is one
``error:`` line, exit 2). The run processes die with the sweep (each in its own process group,
with a parent-death signal on Linux, and stopped when the sweep exits or is interrupted). A
workdir still locked by a live run is waited for; a failed run is named with the ``error:`` line
of its ``train.log``.

(Over 400 lines: one runner, from arms and seeds through run processes to summaries; its
statistics and its process handling are read together when a sweep's numbers are questioned.)
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import fcntl
import json
import math
import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

METRIC = "ndcg@10"
SCORES = ("sft", "cl")  # the ranking scores every evaluation reports (decomp.train.evaluate)


@dataclasses.dataclass(frozen=True)
class Arm:
  """One configuration of a sweep: a name (a directory) and TrainConfig overrides.

  A dict value updates that dict field key by key (``{"playground": {"negatives": 15}}`` keeps the
  config's other playground settings, like ``--set playground.negatives=15``); it never replaces
  the whole default.
  """

  name: str
  overrides: Mapping[str, Any]
  label: str = ""  # how tables and figures name it; defaults to ``name``

  @property
  def title(self) -> str:
    return self.label or self.name


def run_dir(sweep_dir: str, arm: Arm, seed: int) -> str:
  return os.path.join(sweep_dir, arm.name, f"seed{seed}")


def _override_strings(overrides: Mapping[str, Any]) -> list[str]:
  out = []
  for key, value in overrides.items():
    if isinstance(value, dict) and value:  # one dotted override per key: merged, not replaced
      out += _override_strings({f"{key}.{k}": v for k, v in value.items()})
      continue
    if isinstance(value, (dict, list, tuple, bool)) or value is None:
      value = json.dumps(value)
    out.append(f"{key}={value}")
  return out


def _t_quantile_975(dof: int) -> float:
  """Two-sided 95% Student-t quantile (scipy when present, a table otherwise)."""
  try:
    from scipy import stats
    return float(stats.t.ppf(0.975, dof))
  except ImportError:  # pragma: no cover
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
             9: 2.262, 10: 2.228}
    return table.get(dof, 1.96)


def mean_ci(values: Sequence[float]) -> dict[str, Any]:
  """Mean, sample std and the 95% t confidence half-width of ``values`` (n >= 1)."""
  x = np.asarray([v for v in values if v is not None and not math.isnan(v)], float)
  n = len(x)
  if n == 0:
    return {"mean": None, "std": None, "ci95": None, "n": 0, "values": []}
  std = float(x.std(ddof=1)) if n > 1 else 0.0
  half = _t_quantile_975(n - 1) * std / math.sqrt(n) if n > 1 else float("nan")
  return {"mean": float(x.mean()), "std": std, "ci95": half, "n": n, "values": x.tolist()}


def seeds_for_ci(std: float | None, half_width: float = 1.0, *, limit: int = 10_000) -> int | None:
  """The fewest seeds whose 95% t-interval half-width is at most ``half_width``, if the spread
  stays ``std`` (a planning estimate: ``std`` is itself measured from few seeds)."""
  if std is None or math.isnan(std):
    return None
  n = 2
  while _t_quantile_975(n - 1) * std / math.sqrt(n) > half_width:
    n += 1
    if n > limit:
      return None
  return n


def test_metrics(results: Mapping[str, Any], metric: str = METRIC) -> dict[str, float]:
  """Flat ``{'overall': ..., 'task/<t>': ..., 'modality/<m>': ...}`` of one run's test metric, in
  points (x100) like the paper's tables, for the run's primary score (its own ranking score);
  plus ``score/<s>`` and ``score/<s>/macro`` with the run ranked by each score ``s``."""
  test = results.get("test") or {}
  primary = test.get(test.get("score", "sft"), {})
  out = {"overall": 100 * primary["queries"][metric],
         "macro": 100 * primary["tasks"][metric]}
  for task, values in sorted(primary.get("per_task", {}).items()):
    out[f"task/{task}"] = 100 * values[metric]
  for modality, values in sorted(primary.get("per_modality", {}).items()):
    out[f"modality/{modality}"] = 100 * values[metric]
  # The same run ranked by either score (the evaluator scores every run both ways), for
  # contrasts that rank an arm by another score than its own ("arm@sft", "arm@cl").
  for score in SCORES:
    if score in test:
      out[f"score/{score}"] = 100 * test[score]["queries"][metric]
      out[f"score/{score}/macro"] = 100 * test[score]["tasks"][metric]
  return out


def collect(sweep_dir: str, arms: Sequence[Arm], seeds: Sequence[int],
            metric: str = METRIC) -> dict[str, dict[int, dict[str, float]]]:
  """``{arm: {seed: test_metrics}}`` for every completed run."""
  table: dict[str, dict[int, dict[str, float]]] = {}
  for arm in arms:
    for seed in seeds:
      path = os.path.join(run_dir(sweep_dir, arm, seed), "results.json")
      if os.path.exists(path):
        with open(path) as f:
          table.setdefault(arm.name, {})[seed] = test_metrics(json.load(f), metric)
  return table


def contrast_coefficients(contrast: Sequence[Any]) -> tuple[str, dict[str, float]]:
  """``(name, a, b)`` or ``(name, {arm: coefficient})`` -> ``(name, {arm: coefficient})``.

  An arm written ``"arm@sft"`` or ``"arm@cl"`` enters with its runs ranked by that score instead
  of their own primary score."""
  if len(contrast) == 3:
    name, a, b = contrast
    coefficients = {a: 1.0, b: -1.0}
  elif len(contrast) == 2 and isinstance(contrast[1], Mapping) and contrast[1]:
    name, coefficients = contrast[0], {str(k): float(v) for k, v in contrast[1].items()}
  else:
    raise ValueError(f"a contrast is (name, arm_a, arm_b) or (name, {{arm: coefficient}}), "
                     f"got {contrast!r}")
  for term in coefficients:
    if "@" in term and term.split("@", 1)[1] not in SCORES:
      raise ValueError(f"contrast {name!r}: {term!r} ranks by an unknown score; known: {SCORES}")
  return name, coefficients


def _term_key(term: str, key: str) -> tuple[str, str]:
  """``("arm@cl", "overall") -> ("arm", "score/cl")``; plain arms keep their primary score."""
  if "@" not in term:
    return term, key
  arm, score = term.split("@", 1)
  return arm, f"score/{score}" + ("/macro" if key == "macro" else "")


def summarize(sweep_dir: str, arms: Sequence[Arm], seeds: Sequence[int], *,
              metric: str = METRIC, contrasts: Sequence[Sequence[Any]] = (),
              title: str = "") -> dict[str, Any]:
  """Writes ``summary.json`` and ``summary.md``; returns the summary.

  ``contrasts`` are ``(name, arm_a, arm_b)``: the paired (same seed) difference a - b with its
  CI, or ``(name, {arm: coefficient, ...})``: any linear combination, paired over the seeds all
  its arms share (e.g. a 2x2 design's main effects and interaction).
  """
  table = collect(sweep_dir, arms, seeds, metric)
  keys = sorted({k for runs in table.values() for m in runs.values() for k in m},
                key=lambda k: (k not in ("overall", "macro"), k))
  summary: dict[str, Any] = {"metric": f"test {metric} x 100", "seeds": list(seeds), "arms": {},
                             "contrasts": {}}
  for arm in arms:
    runs = table.get(arm.name, {})
    summary["arms"][arm.name] = {
        "label": arm.title, "overrides": dict(arm.overrides),
        **{k: mean_ci([runs[s].get(k) for s in sorted(runs)]) for k in keys}}
  for contrast in contrasts:
    name, coefficients = contrast_coefficients(contrast)
    runs = {term: table.get(_term_key(term, "overall")[0], {}) for term in coefficients}
    paired = sorted(set.intersection(*(set(r) for r in runs.values())))
    values = {}
    for k in ("overall", "macro"):
      keys_of = {term: _term_key(term, k)[1] for term in coefficients}
      values[k] = mean_ci([sum(c * runs[term][s][keys_of[term]] for term, c in coefficients.items())
                           for s in paired
                           if all(keys_of[term] in runs[term][s] for term in coefficients)])
    summary["contrasts"][name] = {"coefficients": coefficients, "seeds": paired, **values}
    overall = summary["contrasts"][name]["overall"]
    # How many seeds would resolve a 1-point difference in this contrast (the target).
    overall["seeds_for_ci1"] = seeds_for_ci(overall["std"]) if overall["n"] > 1 else None
  with open(os.path.join(sweep_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  with open(os.path.join(sweep_dir, "summary.md"), "w") as f:
    f.write(summary_markdown(summary, title=title))
  return summary


def _fmt(stat: Mapping[str, Any]) -> str:
  if not stat or stat.get("mean") is None:
    return "-"
  if stat["n"] < 2:
    return f"{stat['mean']:.2f}"
  return f"{stat['mean']:.2f} ± {stat['ci95']:.2f}"


def summary_markdown(summary: Mapping[str, Any], *, title: str = "") -> str:
  """Markdown tables: overall and per task / modality (mean ± 95% CI half-width over seeds)."""
  arms = summary["arms"]
  keys = []
  for stats in arms.values():
    keys += [k for k in stats if k not in ("label", "overrides") and k not in keys]
  lines = []
  if title:
    lines += [f"## {title}", ""]
  lines += [f"{summary['metric'].capitalize()}; mean ± 95% CI half-width over seeds {summary['seeds']}.",
            ""]
  main_keys = [k for k in ("overall", "macro") if k in keys]
  # MRB's order: single-modal, cross-modal, fused (then any other grouping).
  mrb = ("modality/single", "modality/cross", "modality/fused")
  modality_keys = sorted((k for k in keys if k.startswith("modality/")),
                         key=lambda k: (mrb.index(k) if k in mrb else len(mrb), k))
  task_keys = [k for k in keys if k.startswith("task/")]
  score_keys = [f"score/{score}" for score in SCORES if f"score/{score}" in keys]
  names = {k: f"ranked by {k.split('/')[1].upper()}'s score" for k in score_keys}
  for group in (main_keys + modality_keys, task_keys, score_keys):
    if not group:
      continue
    header = "| arm | " + " | ".join(names.get(k, k.split("/")[-1]) for k in group) + " | n |"
    lines += [header, "|" + "---|" * (len(group) + 2)]
    for stats in arms.values():
      n = max((stats[k]["n"] for k in group if k in stats), default=0)
      lines.append(f"| {stats['label']} | " + " | ".join(_fmt(stats.get(k)) for k in group)
                   + f" | {n} |")
    lines.append("")
  if summary.get("contrasts"):
    lines += ["| contrast (paired over seeds) | overall | macro over tasks | paired std | "
              "seeds for ± 1 |", "|---|---|---|---|---|"]
    for name, c in summary["contrasts"].items():
      overall = c["overall"]
      std = f"{overall['std']:.2f}" if overall.get("n", 0) > 1 else "-"
      need = overall.get("seeds_for_ci1")
      lines.append(f"| {name} | {_fmt(overall)} | {_fmt(c['macro'])} | {std} | "
                   f"{need if need is not None else '-'} |")
    lines.append("")
  return "\n".join(lines)


def _run_overrides(arm: Arm, seed: int, overrides: Sequence[str]) -> list[str]:
  return [*_override_strings({**arm.overrides, "seed": seed}), *overrides]


def _canonical(config) -> dict[str, Any]:
  # Imported only here: the runner itself needs no JAX.
  from decomp.train import config as config_lib
  from decomp.train import overrides as overrides_lib
  if isinstance(config, Mapping):
    config = overrides_lib.from_dict(config)
  return {k: v for k, v in config_lib.flat_dict(config).items() if k != "eval_log.quiet"}


def _config_key(config) -> str:
  """Configs compared with every default filled in (so runs older than a field still match)."""
  return json.dumps(_canonical(config), sort_keys=True)


def _run_config(arm: Arm, seed: int, config: str, overrides: Sequence[str]):
  from decomp.train import overrides as overrides_lib
  from decomp.train import recipes
  return overrides_lib.apply_overrides(recipes.get_config(config),
                                    _run_overrides(arm, seed, overrides))


def check_completed(sweep_dir: str, runs: Sequence[tuple[Arm, int]], *, config: str,
                    overrides: Sequence[str] = ()) -> None:
  """Raises if a completed run was trained with another config than its arm now asks for (an
  edited arm, another --set): its results would be summarised under the wrong label."""
  stale = []
  for arm, seed in runs:
    workdir = run_dir(sweep_dir, arm, seed)
    with open(os.path.join(workdir, "config.json")) as f:
      stored = _canonical(json.load(f))
    wanted = _canonical(_run_config(arm, seed, config, overrides))
    differ = sorted(k for k in wanted.keys() | stored.keys() if wanted.get(k) != stored.get(k))
    if differ:
      stale.append(f"{workdir} ({', '.join(differ)})")
  if stale:
    raise SystemExit("completed runs were trained with another config than their arm now sets; "
                     "delete them (or use another --out) to train them again:\n  "
                     + "\n  ".join(stale))


def _completed_runs(directory: str) -> Iterable[str]:
  """Workdirs with a results.json under ``directory`` (``<arm>/seed<k>`` or one level deeper)."""
  for root, dirs, files in os.walk(directory, followlinks=False):
    dirs[:] = sorted(d for d in dirs if d not in ("checkpoints", "examples", "figures")
                     and not d.startswith("."))
    if "results.json" in files and "config.json" in files:
      dirs[:] = []
      yield root


def link_completed(sweep_dir: str, todo: Sequence[tuple[Arm, int]], *, config: str,
                   overrides: Sequence[str], reuse: Sequence[str],
                   log: Callable[[str], None] = print) -> list[tuple[Arm, int]]:
  """Links runs of other sweeps whose config equals a pending run's; returns what is left to run.

  Sweeps share arms (the probe's SFT and CL runs are the reference arms of four other sweeps):
  a completed run elsewhere with the very same ``config.json`` (every field, the seed included)
  is the run this sweep would train, so it is linked (a relative symlink) instead of trained
  again.
  """
  available: dict[str, str] = {}
  for directory in reuse:
    for workdir in _completed_runs(directory):
      with open(os.path.join(workdir, "config.json")) as f:
        available.setdefault(_config_key(json.load(f)), workdir)
  left = []
  for arm, seed in todo:
    source = available.get(_config_key(_run_config(arm, seed, config, overrides)))
    target = run_dir(sweep_dir, arm, seed)
    if source is None or os.path.lexists(target):
      left.append((arm, seed))
      continue
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.symlink(os.path.relpath(os.path.abspath(source), os.path.dirname(os.path.abspath(target))),
               target)
    log(f"  {arm.name} seed {seed}: the same run as {source} (linked)")
  return left


SWEEP_FILE = "sweep.json"


def write_description(sweep_dir: str, arms: Sequence[Arm], seeds: Sequence[int], *, config: str,
                      overrides: Sequence[str] = (), contrasts: Sequence[Sequence[Any]] = (),
                      title: str = "") -> None:
  """``sweep.json``: everything :func:`summarize_dir` needs to rebuild the summary from logs."""
  os.makedirs(sweep_dir, exist_ok=True)
  description = {"title": title, "config": config, "overrides": list(overrides),
                 "seeds": list(seeds),
                 "arms": [{"name": a.name, "label": a.title, "overrides": dict(a.overrides)}
                          for a in arms],
                 "contrasts": [list(c) for c in contrasts]}
  path = os.path.join(sweep_dir, SWEEP_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump(description, f, indent=2)
  os.replace(path + ".tmp", path)


def summarize_dir(sweep_dir: str) -> dict[str, Any]:
  """Rebuilds ``summary.json`` / ``summary.md`` of a sweep from its ``sweep.json`` and run logs."""
  path = os.path.join(sweep_dir, SWEEP_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist (not a sweep directory?)")
  with open(path) as f:
    description = json.load(f)
  arms = [Arm(a["name"], a["overrides"], a.get("label", "")) for a in description["arms"]]
  return summarize(sweep_dir, arms, description["seeds"],
                   contrasts=[tuple(c) for c in description.get("contrasts", [])],
                   title=description.get("title", ""))


class SweepError(Exception):
  """A sweep that cannot start (``exit_code`` 2) or whose runs failed (1); each line of the
  message names one problem."""

  def __init__(self, message: str, exit_code: int):
    super().__init__(message)
    self.exit_code = exit_code


def validate_runs(arms: Sequence[Arm], seeds: Sequence[int], *, config: str,
                  overrides: Sequence[str] = ()) -> None:
  """Builds and validates every arm's config (``apply_overrides`` + ``validate``) before any run
  starts; raises :class:`SweepError` (exit code 2) naming what is wrong."""
  from decomp.train import config as config_lib
  problems: dict[str, list[str]] = {}
  for arm in arms:
    try:
      config_lib.validate(_run_config(arm, seeds[0] if seeds else 0, config, overrides))
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
      message = e.args[0] if isinstance(e, KeyError) and e.args else e
      problems.setdefault(" ".join(str(message).split()), []).append(arm.name)
  if not problems:
    return
  lines = [f"{message} ({'every arm' if len(names) == len(arms) else 'arms ' + ', '.join(names)})"
           for message, names in problems.items()]
  raise SweepError("invalid config, no run started: " + "\n".join(lines), 2)


# The module each run executes (``python -m TRAIN_MODULE --workdir ...``).
TRAIN_MODULE = "decomp.train"
# decomp.train.workdir.LOCK_FILE, repeated so the runner need not import the training stack.
RUN_LOCK_FILE = "run.lock"
PR_SET_PDEATHSIG = 1  # linux/prctl.h
STOP_GRACE_S = 10.0  # how long a run may take to exit on SIGTERM before it is killed


def _child_setup(parent: int, core: int | None) -> Callable[[], None]:
  """What a run process does between fork and exec: its own process group (so the sweep stops
  it and anything it started as one), SIGTERM when the sweep dies, even by SIGKILL (Linux), and
  its CPU core."""
  libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None

  def setup():
    os.setpgid(0, 0)
    if libc is not None:
      libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
      if os.getppid() != parent:  # the sweep died before the signal was armed
        os._exit(1)
    if core is not None:
      os.sched_setaffinity(0, {core})

  return setup


def _stop_runs(procs: Sequence[subprocess.Popen]) -> None:
  """SIGTERM to every live run's process group, SIGKILL to what outlives ``STOP_GRACE_S``."""
  live = [p for p in procs if p.poll() is None]
  for sig in (signal.SIGTERM, signal.SIGKILL):
    for proc in live:
      try:
        os.killpg(proc.pid, sig)
      except ProcessLookupError:
        pass
    deadline = time.time() + (STOP_GRACE_S if sig == signal.SIGTERM else 5.0)
    for proc in live:
      try:
        proc.wait(timeout=max(0.0, deadline - time.time()))
      except subprocess.TimeoutExpired:
        pass
    live = [p for p in live if p.poll() is None]
    if not live:
      return


def lock_holder(workdir: str) -> str | None:
  """Who holds ``workdir``'s run lock (its pid/host record), or None when no live process does:
  the lock is an ``flock`` the kernel frees when its holder dies, so a lock file left by a dead
  run (a stale lock) reads as free and the next run takes it over."""
  try:
    fd = os.open(os.path.join(workdir, RUN_LOCK_FILE), os.O_RDONLY)
  except FileNotFoundError:
    return None
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    record = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    os.close(fd)
    return record or "a run that is starting"
  except OSError:  # no locks on this file system: nothing to wait for
    os.close(fd)
    return None
  fcntl.flock(fd, fcntl.LOCK_UN)
  os.close(fd)
  return None


def _wait_for_lock(workdir: str, timeout: float, log: Callable[[str], None]) -> str | None:
  """Waits up to ``timeout`` seconds for a live run to release ``workdir``; returns the holder
  that still has it, or None."""
  holder = lock_holder(workdir)
  if holder is None:
    return None
  log(f"  {workdir} is locked by {holder}; waiting up to {timeout:.0f} s for it to end")
  deadline = time.time() + timeout
  while holder is not None and time.time() < deadline:
    time.sleep(0.2)
    holder = lock_holder(workdir)
  return holder


def failure_reason(log_path: str, offset: int, code: int) -> str:
  """Why a run failed, from what it appended to ``train.log`` after byte ``offset``: its last
  ``error:`` line, else its last line, else the exit status."""
  try:
    with open(log_path, "rb") as f:
      f.seek(offset)
      lines = [l.strip() for l in f.read().decode("utf-8", "replace").splitlines() if l.strip()]
  except OSError:
    lines = []
  errors = [l for l in lines if l.startswith("error:")]
  if errors:
    return errors[-1][len("error:"):].strip()
  if code < 0:
    return f"killed by {signal.Signals(-code).name}"
  return lines[-1] if lines else f"exit {code} with nothing in {log_path}"


def _raise_on_signals():
  """SIGTERM and SIGHUP end the sweep as Ctrl-C does (so its runs are stopped); returns the
  previous handlers."""
  def handler(signum, frame):
    raise SystemExit(128 + signum)
  if sys.platform == "win32" or not hasattr(signal, "SIGHUP"):
    return {}
  try:
    return {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
  except ValueError:  # not the main thread: the caller handles its own signals
    return {}


def run_sweep(sweep_dir: str, arms: Sequence[Arm], seeds: Sequence[int], *, config: str,
              overrides: Sequence[str] = (), jobs: int = 1, quiet: bool = True,
              reuse: Sequence[str] = (), log: Callable[[str], None] = print,
              lock_wait: float = 60.0) -> None:
  """Runs every (arm, seed) whose results.json is missing, ``jobs`` at a time.

  Each run is a ``python -m decomp.train`` process (a crash or a kill of one run loses nothing of
  the others; its checkpoints let it resume). With ``jobs > 1`` each process is pinned to its own
  CPU core: small models use one core better than two processes share two. ``reuse``: sweep
  directories whose completed runs of an identical config are linked, not trained again.

  Every arm's config is validated first. The runs end with the sweep (its exit, Ctrl-C, SIGTERM,
  SIGHUP, or its death by SIGKILL on Linux). A workdir locked by a live run (say, of a sweep
  killed a moment ago) is waited for up to ``lock_wait`` seconds.

  Raises:
    SweepError: the configs are invalid (nothing started), or runs failed (each named with the
      reason from its ``train.log``).
  """
  validate_runs(arms, seeds, config=config, overrides=overrides)
  os.makedirs(sweep_dir, exist_ok=True)
  if not os.path.exists(os.path.join(sweep_dir, SWEEP_FILE)):
    write_description(sweep_dir, arms, seeds, config=config, overrides=overrides)
  runs = [(arm, seed) for arm in arms for seed in seeds]
  complete = lambda run: os.path.exists(os.path.join(run_dir(sweep_dir, *run), "results.json"))
  check_completed(sweep_dir, [run for run in runs if complete(run)], config=config,
                  overrides=overrides)
  todo = [run for run in runs if not complete(run)]
  if reuse and todo:
    todo = link_completed(sweep_dir, todo, config=config, overrides=overrides, reuse=reuse,
                          log=log)
  done = len(arms) * len(seeds) - len(todo)
  if done:
    log(f"{done} run(s) already complete in {sweep_dir}; {len(todo)} to go")
  cores = os.cpu_count() or 1
  running: list[tuple[subprocess.Popen, Arm, int, float, int]] = []
  failures = []
  env = dict(os.environ)
  env.setdefault("DECOMP_COMPILATION_CACHE", os.path.join(sweep_dir, ".jax_cache"))

  def reap(block: bool):
    for item in list(running):
      proc, arm, seed, start, offset = item
      if proc.poll() is None and not block:
        continue
      code = proc.wait()
      running.remove(item)
      if code == 0:
        log(f"  {arm.name} seed {seed}: done in {time.time() - start:.0f} s")
      else:
        log_path = os.path.join(run_dir(sweep_dir, arm, seed), "train.log")
        reason = failure_reason(log_path, offset, code)
        log(f"  {arm.name} seed {seed}: FAILED (exit {code}) in {time.time() - start:.0f} s: "
            f"{reason}")
        failures.append(f"{arm.name} seed {seed} failed (exit {code}): {reason} (see {log_path})")
      if block:
        return

  previous = _raise_on_signals()
  try:
    for index, (arm, seed) in enumerate(todo):
      while len(running) >= jobs:
        reap(block=False)
        if len(running) >= jobs:
          time.sleep(0.2)
      workdir = run_dir(sweep_dir, arm, seed)
      os.makedirs(workdir, exist_ok=True)
      holder = _wait_for_lock(workdir, lock_wait, log)
      if holder is not None:
        log(f"  {arm.name} seed {seed}: NOT STARTED, its workdir is still locked by {holder}")
        failures.append(f"{arm.name} seed {seed} cannot resume: {workdir} is still locked by "
                        f"{holder} after {lock_wait:.0f} s (another sweep running it?)")
        continue
      cmd = [sys.executable, "-m", TRAIN_MODULE, "--workdir", workdir, "--config", config,
             "--set", *_run_overrides(arm, seed, overrides)]
      if quiet:
        cmd.append("--quiet")
      core = index % cores if jobs > 1 and hasattr(os, "sched_setaffinity") else None
      log(f"  {arm.name} seed {seed}: started ({index + 1}/{len(todo)})")
      with open(os.path.join(workdir, "train.log"), "ab") as out:
        offset = out.tell()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=_child_setup(os.getpid(), core))
      running.append((proc, arm, seed, time.time(), offset))
    while running:
      reap(block=True)
  finally:
    if running:  # interrupted (Ctrl-C, SIGTERM, an error here): no run outlives the sweep
      log(f"  stopping {len(running)} run(s); re-running the sweep resumes them")
      _stop_runs([item[0] for item in running])
    for sig, handler in previous.items():
      signal.signal(sig, handler)
  if failures:
    raise SweepError("\n".join(
        [f"{len(failures)} run(s) failed; completed runs are kept, and re-running the sweep "
         "resumes the others from their last checkpoint once the cause is fixed:", *failures]), 1)


def parse_args(description: str, default_out: str, argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default=default_out, help="sweep directory (default %(default)s)")
  parser.add_argument("--seeds", type=int, default=3, help="seeds per arm (default 3)")
  parser.add_argument("--quick", action="store_true",
                      help="the shrunk smoke-test version (about a minute)")
  parser.add_argument("--config", default=None,
                      help="base config: preset name or .py/.json file (default: playground, or "
                           "playground_quick with --quick)")
  parser.add_argument("--set", dest="overrides", nargs="+", action="append", default=[],
                      metavar="KEY=VALUE", help="overrides for every run of the sweep")
  parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                      help="runs at a time, each pinned to one core (default %(default)s)")
  parser.add_argument("--reuse", nargs="+", default=[], metavar="SWEEP_DIR",
                      help="link completed runs of these sweeps whose config is identical to a "
                           "pending run's (e.g. --reuse runs/probe) instead of training them")
  parser.add_argument("--summary-only", action="store_true",
                      help="only (re)write the summary from completed runs")
  args = parser.parse_args(argv)
  args.overrides = [o for group in args.overrides for o in group]
  if args.config is None:
    args.config = "playground_quick" if args.quick else "playground"
  return args


def main(description: str, name: str, arms: Iterable[Arm], *, argv=None,
         contrasts: Sequence[Sequence[Any]] = (), quick_overrides: Sequence[str] = (),
         title: str = "") -> dict[str, Any]:
  """Runs a sweep from the command line and prints its summary table."""
  args = parse_args(description, os.path.join("runs", name), argv)
  arms = list(arms)
  seeds = list(range(args.seeds))
  overrides = [*(quick_overrides if args.quick else ()), *args.overrides]
  write_description(args.out, arms, seeds, config=args.config, overrides=overrides,
                    contrasts=contrasts, title=title or name)
  if not args.summary_only:
    start = time.time()
    print(f"{name}: {len(arms)} arms x {len(seeds)} seeds -> {args.out}")
    try:
      run_sweep(args.out, arms, seeds, config=args.config, overrides=overrides, jobs=args.jobs,
                reuse=args.reuse)
    except SweepError as e:
      for line in str(e).splitlines():
        print(f"error: {line}", file=sys.stderr)
      raise SystemExit(e.exit_code) from None
    except KeyboardInterrupt:
      print(f"error: {name}: interrupted; re-running the sweep resumes it", file=sys.stderr)
      raise SystemExit(130) from None
    print(f"{name}: runs finished in {time.time() - start:.0f} s")
  summary = summarize(args.out, arms, seeds, contrasts=contrasts, title=title or name)
  print()
  print(summary_markdown(summary, title=title or name))
  print(f"summary: {os.path.join(args.out, 'summary.md')}")
  return summary
