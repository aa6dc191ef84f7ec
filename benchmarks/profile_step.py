"""Where one decomp training step spends its time, per XLA operation (jax.profiler trace).

  python benchmarks/profile_step.py [--config 10m] [--full-vocab] [--top 25] [--hlo FILE]

Builds the plain SFT update of benchmarks/common.py, runs it a few times under
``jax.profiler.trace`` and prints the operations (XLA thunks: ``ynn_fusion`` / ``dot`` are
matmuls, ``*_fusion`` are fused elementwise/copy loops) by total time per step, then the same
grouped by kind. ``--hlo`` writes the optimised HLO so a fusion's name can be looked up.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument('--config', default='10m')
  parser.add_argument('--full-vocab', action='store_true')
  parser.add_argument('--groups', type=int, default=4)
  parser.add_argument('--list-size', type=int, default=4)
  parser.add_argument('--length', type=int, default=128)
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--top', type=int, default=25)
  parser.add_argument('--hlo', default=None)
  args = parser.parse_args(argv)
  import jax
  from benchmarks import common as C

  ck = C.make_checkpoint(args.config)
  batch = C.make_batch(args.groups, args.list_size, args.length,
                       C.CONFIGS[args.config]['vocab_size'])
  step = C.make_jax_plain_step(ck.path, batch, full_vocab=args.full_vocab)
  for _ in range(2):
    C.block(step.run())
  t0 = time.perf_counter()
  C.block(step.run())
  print(f'step {time.perf_counter() - t0:.3f}s (compile {step.compile_s:.2f}s, XLA buffers '
        f'{step.memory})')
  trace_dir = tempfile.mkdtemp(prefix='decomp-trace-')
  jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
  for _ in range(args.steps):
    C.block(step.run())
  jax.profiler.stop_trace()
  if args.hlo:
    with open(args.hlo, 'w') as f:
      f.write(step.fn.as_text())
  path = sorted(glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'), recursive=True))[-1]
  with gzip.open(path) as f:
    events = json.load(f)['traceEvents']
  per_op, per_kind = collections.Counter(), collections.Counter()
  for e in events:
    name = e.get('name', '')
    if e.get('ph') != 'X' or any(s in name for s in ('Execute', '$', 'Pjit', 'Await')):
      continue
    per_op[name] += e.get('dur', 0)
    kind = ('matmul' if name.startswith(('ynn_fusion', 'dot')) else re.sub(r'\.\d+$', '', name))
    per_kind[kind] += e.get('dur', 0)
  total = sum(per_op.values())
  print(f'\nsum of operation times per step: {total / args.steps / 1e3:.1f} ms')
  for name, us in per_op.most_common(args.top):
    print(f'{us / args.steps / 1e3:9.2f} ms  {100 * us / total:5.1f}%  {name}')
  print('\nby kind:')
  for name, us in per_kind.most_common(12):
    print(f'{us / args.steps / 1e3:9.2f} ms  {100 * us / total:5.1f}%  {name}')
  ck.tmp.cleanup()
  return 0


if __name__ == '__main__':
  sys.exit(main())
