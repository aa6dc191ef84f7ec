"""What a training run's evaluation costs per sequence, against a training step's sequence (issue
26: evaluation, a forward pass, should be at least 3x cheaper per sequence than a training step).

    python -m benchmarks.eval_cost [--steps 12] [--groups 128]    # ~5 minutes on 2 cores

A real run of the engine (``decomp.train.loop.train``): a text-only playground reranker (hidden
512, 8 layers, MLP 1536), every weight trained, lists of 8 documents, ``max_length=256``, 8
groups a step; a validation evaluation of ``--groups`` groups half-way and at the end (the first
one compiles; the second is timed; the count is the evaluation's own ``num_queries``). A step's
time is the median ``step_time_s`` of its log after the first two steps; per sequence = per
(group x document) prompt. Prints one table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument('--steps', type=int, default=12)
  parser.add_argument('--groups', type=int, default=128)
  args = parser.parse_args(argv)
  from decomp.train import evaluate as evaluate_lib
  from decomp.train import logs, overrides, recipes
  from decomp.train.loop import train
  list_size, batch = 8, 8
  cfg = overrides.apply_overrides(recipes.get_config('playground_quick'), [
      'vision=false', 'hidden_size=512', 'num_layers=8', 'num_heads=8', 'num_kv_heads=4',
      'intermediate_size=1536', 'finetune=full', f'negatives={list_size - 1}',
      f'batch_size={batch}', 'max_length=256', f'steps={args.steps}',
      f'eval_every={args.steps // 2}', f'eval_groups={args.groups}', 'eval_batch_size=16',
      f'eval_list_size={list_size}', 'final_eval=false', 'checkpoint_every=0',
      'example_log_every=0', 'quiet=true', 'num_devices=1',
      f'playground={{"tasks": ["t2t"], "num_eval_queries": {args.groups}}}'])
  timings = []
  original = evaluate_lib.Evaluator.run

  def timed_run(self, *a, **k):
    start = time.perf_counter()
    out = original(self, *a, **k)
    timings.append((time.perf_counter() - start, out['num_queries']))
    return out

  evaluate_lib.Evaluator.run = timed_run
  with tempfile.TemporaryDirectory() as tmp:
    train(cfg, os.path.join(tmp, 'run'))
    steps = [r['step_time_s'] for r in logs.read_steps(os.path.join(tmp, 'run'))][2:]
  step_s = statistics.median(steps)
  eval_s, groups = timings[-1]
  per_train = step_s / (batch * list_size)
  per_eval = eval_s / (groups * list_size)
  print(f'load average {os.getloadavg()[0]:.1f}; lists of {list_size}, max_length 256, '
        f'{batch} groups a step, {groups} validation groups')
  print('| | seconds | sequences | ms per sequence |')
  print('|---|---:|---:|---:|')
  print(f'| training step (median of {len(steps)}) | {step_s:.3f} | {batch * list_size} | '
        f'{1e3 * per_train:.2f} |')
  print(f'| evaluation (compiled; first: {timings[0][0]:.1f} s) | {eval_s:.2f} | '
        f'{groups * list_size} | {1e3 * per_eval:.2f} |')
  print(f'evaluation is {per_train / per_eval:.1f}x cheaper per sequence')
  return 0


if __name__ == '__main__':
  sys.exit(main())
