"""Soak test (issue 28; a benchmark, not a CI test): nothing leaks over a long run, and a sweep
killed at random moments ends where an uninterrupted one does.

1. **Long run.** A ``steps``-step playground run (a tiny model) with evaluation, a checkpoint and
   a per-example log every ``every`` steps, its resident memory (``/proc/<pid>/statm``) and open
   files (``/proc/<pid>/fd``) sampled twice a second against the step it has logged. After the
   warm-up (the first 20% of the steps: compilation, the first evaluation and checkpoint) both
   must stay flat until the last step: resident memory within 5% (max - min over min), open
   files within 2.
2. **Killed sweep.** A sweep of ``runs`` tiny runs (``decomp.sweep.run_sweep``, 2 at a time) is
   run once uninterrupted, then again from scratch killed (SIGKILL, alternately to the sweep's
   process alone and to its whole process group) at ``kills`` random moments and restarted each
   time. After every kill: no run process may outlive the sweep for more than a few seconds (the
   parent-death signal stops them) and no workdir may stay locked. At the end the two summaries
   must be equal, and no ``run.lock`` and no process of either sweep may be left.

Writes ``benchmarks/soak.json``, ``benchmarks/soak_memory.png`` (the long run; the killed sweep
is a table, one row per kill) and the section "Soak test" of ``benchmarks/RESULTS.md`` (also
kept in ``benchmarks/SOAK.md``, which ``benchmarks/report.py`` appends when it rewrites
RESULTS.md).

Run: ``make bench-soak`` (under the machine-wide lock; about 25 minutes on a loaded 2-core
machine) or ``python -m benchmarks.soak --steps 500 --runs 8 --kills 2`` for a short check.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# A tiny text-only model: the soak measures the loop, its logs and checkpoints, not the model.
TINY = ['vision=false', 'num_layers=1', 'quiet=true']
WARMUP_FRACTION = 0.2
RSS_TOLERANCE = 0.05
FD_TOLERANCE = 2
KILL_AFTER_S = (5.0, 45.0)  # when each kill lands after its sweep (re)started


def _env() -> dict:
  return dict(os.environ, PYTHONPATH=ROOT, XLA_PYTHON_CLIENT_PREALLOCATE='false',
              TF_CPP_MIN_LOG_LEVEL='3')


def _last_logged_step(path: str) -> int | None:
  """The step of the last complete line of a steps.jsonl (reads only its tail)."""
  try:
    with open(path, 'rb') as f:
      f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
      lines = f.read().split(b'\n')[:-1]  # the last piece is empty or a torn line
  except OSError:
    return None
  for line in reversed(lines):
    try:
      return int(json.loads(line)['step'])
    except (ValueError, KeyError):
      continue
  return None


def _rss_and_fds(pid: int) -> tuple[int, int] | None:
  try:
    with open(f'/proc/{pid}/statm') as f:
      rss = int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
    return rss, len(os.listdir(f'/proc/{pid}/fd'))
  except (OSError, IndexError, ValueError):  # the process just ended
    return None


def long_run(workdir: str, steps: int, every: int) -> dict:
  """Trains ``steps`` steps in a child process, sampling its memory and open files."""
  cmd = [sys.executable, '-m', 'decomp.train', '--workdir', workdir, '--config',
         'playground_quick', '--set', *TINY, f'steps={steps}', f'eval_every={every}',
         f'checkpoint_every={every}', f'example_log_every={every}', 'log_every=10',
         'keep_checkpoints=2']
  start = time.time()
  samples = []  # (seconds, step, rss bytes, open fds)
  steps_file = os.path.join(workdir, 'steps.jsonl')
  with open(os.path.join(os.path.dirname(workdir), 'long_run.log'), 'wb') as log:
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)
    while proc.poll() is None:
      sample = _rss_and_fds(proc.pid)
      step = _last_logged_step(steps_file)
      if sample and sample[0] > 0 and step is not None:  # 0: a zombie, just ended
        samples.append((round(time.time() - start, 2), step, *sample))
      time.sleep(0.5)
  if proc.returncode != 0:
    raise SystemExit(f'soak: the long run failed (exit {proc.returncode}); see {log.name}')
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  return {'steps': steps, 'every': every, 'wall_s': round(time.time() - start, 1),
          'date_utc': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(start)),
          'samples': samples, 'checkpoints': sorted(os.listdir(os.path.join(workdir, 'checkpoints'))),
          'test_ndcg@10': results['test']['sft']['queries']['ndcg@10']
                          if 'sft' in results.get('test', {}) else None}


def analyse(run: dict) -> dict:
  """Flatness after the warm-up (compilation, the first evaluations and checkpoints) and before
  the final step (the final evaluation, the test, the process's exit), in ten blocks of steps.

  Resident memory: (max - min) / min over every sample. Open files: Orbax's save threads open
  the files of a checkpoint while it is written (peaks of ~20 more), so what must stay flat is
  the count between saves: the median of each block.
  """
  steps, every, samples = run['steps'], run['every'], run['samples']
  warmup = max(int(WARMUP_FRACTION * steps), 2 * every + 1)
  warm = [s for s in samples if warmup <= s[1] < steps]
  rss = [s[2] for s in warm]
  width = (steps - warmup) / 10
  blocks = [[s for s in warm if warmup + i * width <= s[1] < warmup + (i + 1) * width]
            for i in range(10)]
  median = lambda values: sorted(values)[len(values) // 2]
  rss_blocks = [median([s[2] for s in b]) / 2**20 for b in blocks if b]
  fd_blocks = [median([s[3] for s in b]) for b in blocks if b]
  growth = (max(rss) - min(rss)) / min(rss)
  return {**run, 'warmup_steps': warmup,
          'rss_mib_after_warmup': [min(rss) / 2**20, max(rss) / 2**20], 'rss_growth': growth,
          'rss_block_medians_mib': [round(v, 1) for v in rss_blocks],
          'fds_after_warmup': [min(s[3] for s in warm), max(s[3] for s in warm)],
          'fd_block_medians': fd_blocks,
          'flat': growth <= RSS_TOLERANCE and max(fd_blocks) - min(fd_blocks) <= FD_TOLERANCE}


# --- the killed sweep ----------------------------------------------------------------------------

def _sweep_arms(runs: int):
  from decomp.sweep import Arm
  arms = max(1, runs // 2)
  return [Arm(f'lr{i:02d}', {'learning_rate': round(1e-3 + 2e-4 * i, 6)}) for i in range(arms)]


SWEEP_OVERRIDES = [*TINY, 'steps=6', 'checkpoint_every=2', 'eval_every=0', 'example_log_every=0',
                   'test_groups=16']


def sweep_child(out: str, runs: int) -> None:
  """What the sweep process runs: the sweep, then its summary."""
  from decomp import sweep
  arms, seeds = _sweep_arms(runs), [0, 1]
  sweep.run_sweep(out, arms, seeds, config='playground_quick', overrides=SWEEP_OVERRIDES,
                  jobs=2, log=lambda line: print(line, flush=True))
  sweep.summarize(out, arms, seeds)


def _start_sweep(out: str, runs: int, log) -> subprocess.Popen:
  cmd = [sys.executable, '-m', 'benchmarks.soak', '--sweep-child', out, '--runs', str(runs)]
  # Its own session: a process group to kill, apart from this script's.
  return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT,
                          start_new_session=True)


def _processes_of(directory: str) -> list[int]:
  """Live processes whose command line names ``directory`` (the sweep and its runs)."""
  pids = []
  for pid in os.listdir('/proc'):
    if not pid.isdigit() or int(pid) == os.getpid():
      continue
    try:
      with open(f'/proc/{pid}/cmdline', 'rb') as f:
        if directory.encode() in f.read():
          with open(f'/proc/{pid}/stat') as s:
            if s.read().rsplit(')', 1)[1].split()[0] != 'Z':
              pids.append(int(pid))
    except OSError:
      continue
  return pids


def _run_dirs(out: str) -> list[str]:
  return sorted(os.path.join(out, arm, seed) for arm in os.listdir(out)
                if os.path.isdir(os.path.join(out, arm)) and not arm.startswith('.')
                for seed in os.listdir(os.path.join(out, arm)) if seed.startswith('seed'))


def _locks(out: str) -> tuple[int, int]:
  """(run.lock files, of them held by a live process) under a sweep directory."""
  from decomp.sweep import RUN_LOCK_FILE, lock_holder
  files = [d for d in _run_dirs(out) if os.path.exists(os.path.join(d, RUN_LOCK_FILE))]
  return len(files), sum(lock_holder(d) is not None for d in files)


def _complete(out: str) -> int:
  return sum(os.path.exists(os.path.join(d, 'results.json')) for d in _run_dirs(out))


def killed_sweep(base: str, runs: int, kills: int, seed: int) -> dict:
  """The uninterrupted sweep, then the same sweep killed ``kills`` times and restarted."""
  rng = random.Random(seed)
  reference, killed = os.path.join(base, 'sweep_reference'), os.path.join(base, 'sweep_killed')
  with open(os.path.join(base, 'sweep.log'), 'ab') as log:
    start = time.time()
    proc = _start_sweep(reference, runs, log)
    if proc.wait() != 0:
      raise SystemExit(f'soak: the reference sweep failed (exit {proc.returncode}); see {log.name}')
    reference_s = time.time() - start
    trials = []
    start = time.time()
    for trial in range(kills):
      mode = ('sweep process', 'process group')[trial % 2]
      proc = _start_sweep(killed, runs, log)
      # A random moment of the restarted sweep: its start, a run's start-up, compilation,
      # training, saving or evaluation (a tiny run takes 10-30 s; each restart resumes).
      delay = rng.uniform(*KILL_AFTER_S)
      time.sleep(delay)
      before = _complete(killed)
      runs_live = len([p for p in _processes_of(killed) if p != proc.pid])
      if proc.poll() is not None:  # too few runs for the delay: report it, kill no more
        trials.append({'trial': trial + 1, 'kill': 'none: the sweep had finished',
                       'after_s': round(delay, 1), 'runs_complete': before, 'runs_live': 0,
                       'orphans_gone_after_s': 0, 'orphans_left': 0,
                       'lock_files': _locks(killed)[0], 'locks_held': _locks(killed)[1]})
        break
      (os.kill if trial % 2 == 0 else os.killpg)(proc.pid, signal.SIGKILL)
      proc.wait()
      killed_at = time.time()
      left = _processes_of(killed)
      while left and time.time() - killed_at < 30:
        time.sleep(0.1)
        left = _processes_of(killed)
      files, held = _locks(killed)
      trials.append({'trial': trial + 1, 'kill': mode, 'after_s': round(delay, 1),
                     'runs_complete': before, 'runs_live': runs_live,
                     'orphans_gone_after_s': round(time.time() - killed_at, 1),
                     'orphans_left': len(left), 'lock_files': files, 'locks_held': held})
    proc = _start_sweep(killed, runs, log)
    code = proc.wait()
    killed_s = time.time() - start
  with open(os.path.join(reference, 'summary.json')) as f:
    want = json.load(f)
  summary_path = os.path.join(killed, 'summary.json')
  got = json.load(open(summary_path)) if os.path.exists(summary_path) else None
  return {'runs': len(_run_dirs(reference)), 'kills': kills, 'reference_s': round(reference_s, 1),
          'killed_total_s': round(killed_s, 1), 'final_exit': code, 'trials': trials,
          'summary_equal': got == want, 'runs_complete': _complete(killed),
          'lock_files_left': _locks(killed)[0] + _locks(reference)[0],
          'processes_left': len(_processes_of(base))}


# --- report ------------------------------------------------------------------------------------

def plot(result: dict, directory: str) -> list[str]:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  paths = []
  run = result['long_run']
  t, step, rss, fds = zip(*run['samples'])
  fig, (a, b) = plt.subplots(2, 1, figsize=(6, 4.2), sharex=True)
  a.plot(step, [r / 2**20 for r in rss], lw=1)
  a.axvline(run['warmup_steps'], color='grey', ls=':', lw=1)
  a.set_ylabel('resident MiB')
  a.set_title(f'{run["steps"]}-step run, eval + checkpoint every {run["every"]} steps', fontsize=9)
  b.plot(step, fds, lw=1, color='C1')
  b.axvline(run['warmup_steps'], color='grey', ls=':', lw=1)
  b.set_ylabel('open files')
  b.set_xlabel('step (dotted: end of warm-up)')
  fig.tight_layout()
  paths.append(os.path.join(directory, 'soak_memory.png'))
  fig.savefig(paths[-1], dpi=80)
  plt.close(fig)
  return paths


def section(result: dict) -> str:
  run, sweep = result['long_run'], result['sweep']
  lo, hi = run['rss_mib_after_warmup']
  lines = [
      '## Soak test', '',
      f'`make bench-soak` (`benchmarks/soak.py`), {result["date_utc"]}, {result["machine"]}; '
      f'load average at start {result["loadavg"]}. Figure: `benchmarks/soak_memory.png`; raw '
      'samples: `benchmarks/soak.json`.', '',
      f'**Long run** ({run.get("date_utc", result["date_utc"])}). {run["steps"]} steps of a tiny playground model (`playground_quick`, '
      f'{", ".join(TINY[:2])}), evaluation, checkpoint and per-example log every {run["every"]} '
      f'steps, {run["wall_s"]:.0f} s (beside {"an earlier run of " if run.get("reused") else ""}the sweeps below). After the warm-up ({run["warmup_steps"]} steps) resident '
      f'memory stayed within {lo:.0f}-{hi:.0f} MiB ({100 * run["rss_growth"]:.1f}% of the '
      f'minimum; limit {100 * RSS_TOLERANCE:.0f}%; medians of ten blocks of steps '
      f'{" ".join(f"{v:.0f}" for v in run["rss_block_medians_mib"])} MiB), and open files '
      f'between checkpoint saves at {"/".join(str(v) for v in sorted(set(run["fd_block_medians"])))} '
      f'(block medians; up to {run["fds_after_warmup"][1]} while Orbax writes a checkpoint): '
      f'**{"flat" if run["flat"] else "NOT flat"}**. Checkpoints kept at the end: '
      f'{", ".join(run["checkpoints"])}. The block medians still creep up by '
      f'{1000 * (run["rss_block_medians_mib"][-1] - run["rss_block_medians_mib"][0]) / (0.9 * (run["steps"] - run["warmup_steps"])):.1f} '
      'MiB per 1,000 steps (not investigated: allocator growth or a slow leak; harmless at '
      'this length, worth a look for runs of 100k steps).', '',
      '![memory and open files vs step](soak_memory.png)', '',
      f'**Killed sweep.** {sweep["runs"]} runs (6 steps each, 2 at a time); uninterrupted '
      f'{sweep["reference_s"]:.0f} s. The same sweep from scratch, SIGKILLed at random moments '
      f'({KILL_AFTER_S[0]:.0f}-{KILL_AFTER_S[1]:.0f} s after each start) and '
      f'restarted {sweep["kills"]} times, took {sweep["killed_total_s"]:.0f} s in all; final exit '
      f'{sweep["final_exit"]}, {sweep["runs_complete"]}/{sweep["runs"]} runs complete, summary '
      f'**{"equal to" if sweep["summary_equal"] else "DIFFERENT from"}** the uninterrupted '
      f'sweep\'s; left at the end: {sweep["lock_files_left"]} `run.lock` files, '
      f'{sweep["processes_left"]} processes.', '',
      '| kill | SIGKILL to | after s | runs complete | runs live | run processes gone after s | '
      'left | run.lock files | held |', '|---|---|---|---|---|---|---|---|---|']
  for t in sweep['trials']:
    lines.append(f'| {t["trial"]} | {t["kill"]} | {t["after_s"]} | {t["runs_complete"]} | '
                 f'{t["runs_live"]} | {t["orphans_gone_after_s"]} | {t["orphans_left"]} | {t["lock_files"]} | '
                 f'{t["locks_held"]} |')
  lines += ['', 'A lock file a killed run leaves behind is free (an `flock` dies with its '
            'holder): the restarted sweep takes it over, and a finished run removes it.', '']
  return '\n'.join(lines)


def write_section(text: str) -> None:
  """``benchmarks/SOAK.md``, and the same text as RESULTS.md's section "Soak test" (replaced
  where it stands, the sections after it kept; appended when there is none)."""
  with open(os.path.join(HERE, 'SOAK.md'), 'w') as f:
    f.write(text)
  path = os.path.join(HERE, 'RESULTS.md')
  with open(path) as f:
    results = f.read()
  head, _, rest = results.partition('## Soak test')
  tail = rest[rest.index('\n## ') + 1:] if '\n## ' in rest else ''
  with open(path, 'w') as f:
    f.write(head.rstrip() + '\n\n' + text.rstrip() + '\n' + ('\n' + tail if tail else ''))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=5000)
  parser.add_argument('--every', type=int, default=100)
  parser.add_argument('--runs', type=int, default=40)
  parser.add_argument('--kills', type=int, default=5)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--skip-long-run', action='store_true')
  parser.add_argument('--reuse-long-run', metavar='SOAK_JSON',
                      help="take the long run's samples from an earlier soak.json (only the "
                           'sweeps run)')
  parser.add_argument('--no-write', action='store_true',
                      help='print the section only (benchmarks/ is left alone)')
  parser.add_argument('--sweep-child', metavar='DIR', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.sweep_child:
    sweep_child(args.sweep_child, args.runs)
    return 0
  import platform
  base = tempfile.mkdtemp(prefix='decomp-soak-')
  # One compilation cache for every run of both sweeps: the same executables, so the same numbers.
  os.environ['DECOMP_COMPILATION_CACHE'] = os.path.join(base, 'jax_cache')
  result = {'date_utc': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
            'machine': f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores',
            'loadavg': [round(x, 2) for x in os.getloadavg()]}
  # The long run goes on beside the sweeps (its memory and files do not depend on the load; the
  # soak's wall time would double one after the other).
  long_result: dict = {}

  def run_long():
    try:
      long_result['value'] = long_run(os.path.join(base, 'long_run'), args.steps, args.every)
    except BaseException as e:  # reported by the main thread
      long_result['error'] = e

  runner = threading.Thread(target=run_long, daemon=True)
  if args.reuse_long_run:
    with open(args.reuse_long_run) as f:
      long_result['value'] = dict(json.load(f)['long_run'], reused=True)
  try:
    if not (args.skip_long_run or args.reuse_long_run):
      print(f'soak: long run, {args.steps} steps (beside the sweeps)', flush=True)
      runner.start()
    print(f'soak: sweep of {args.runs} runs, killed {args.kills} times', flush=True)
    result['sweep'] = killed_sweep(base, args.runs, args.kills, args.seed)
    s = result['sweep']
    print(f'  summary equal: {s["summary_equal"]}; locks left {s["lock_files_left"]}, processes '
          f'left {s["processes_left"]}', flush=True)
    if not args.skip_long_run:
      if runner.is_alive() or not args.reuse_long_run:
        runner.join()
      if 'error' in long_result:
        raise long_result['error']
      result['long_run'] = r = analyse(long_result['value'])
      print(f'  long run: {r["wall_s"]} s; rss growth {100 * r["rss_growth"]:.2f}%, fds '
            f'{r["fds_after_warmup"]}, flat={r["flat"]}', flush=True)
  finally:
    print(f'soak: work directory {base}', flush=True)
  if args.no_write or args.skip_long_run:
    if 'long_run' in result:
      result['long_run'] = {k: v for k, v in result['long_run'].items() if k != 'samples'}
    print(json.dumps(result, indent=1))
    return 0
  with open(os.path.join(HERE, 'soak.json'), 'w') as f:
    json.dump(result, f, indent=1)
  plot(result, HERE)
  text = section(result)
  write_section(text)
  print(text)
  shutil.rmtree(base, ignore_errors=True)
  ok = result['long_run']['flat'] and result['sweep']['summary_equal'] and not (
      result['sweep']['lock_files_left'] or result['sweep']['processes_left'])
  return 0 if ok else 1


if __name__ == '__main__':
  sys.exit(main())
