"""Peak resident memory of one training step of one side, in a fresh process.

  python benchmarks/memory.py --side jax_full --path CKPT --config 10m --groups 4 --list-size 4

Imports the side's libraries (only those) and notes the resident memory (``rss_libs_mb``), sets
everything up (weights, optimizer state; for JAX the step is compiled ahead of time), runs one
warm-up step, resets the kernel's peak-RSS counter (``/proc/self/clear_refs``), runs one more
step and prints one JSON line: ``peak_rss_mb`` (the high-water mark during that step),
``train_mb`` = peak - rss_libs (what training holds at its peak: weights, gradients, optimizer
state, activations, allocator caches; not the libraries' code) and ``step_mb`` = peak - RSS just
before the step (the step's transient memory on top of what stays resident).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def _status_mb(field: str) -> float:
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith(field + ':'):
        return int(line.split()[1]) / 1024
  raise RuntimeError(f'/proc/self/status has no {field}')


def main(argv=None) -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument('--side', required=True,
                      choices=['torch_full', 'torch_keep1', 'jax_full', 'jax_readout'])
  parser.add_argument('--path', required=True)
  parser.add_argument('--config', required=True)
  parser.add_argument('--groups', type=int, default=4)
  parser.add_argument('--list-size', type=int, default=4)
  parser.add_argument('--length', type=int, default=128)
  args = parser.parse_args(argv)
  from benchmarks import common as C
  if args.side.startswith('torch'):
    import torch  # noqa: F401
    import transformers  # noqa: F401
  else:
    import jax  # noqa: F401
    import decomp.models  # noqa: F401
  rss_libs = _status_mb('VmRSS')
  batch = C.make_batch(args.groups, args.list_size, args.length,
                       C.CONFIGS[args.config]['vocab_size'])
  extra = {}
  if args.side.startswith('torch'):
    import torch
    from transformers import Qwen2ForCausalLM
    torch.set_num_threads(2)
    model = Qwen2ForCausalLM.from_pretrained(args.path).train()
    step = C.make_torch_step(model, batch, keep_last=args.side == 'torch_keep1')
  else:
    jstep = C.make_jax_plain_step(args.path, batch, full_vocab=args.side == 'jax_full')
    step = lambda: C.block(jstep.run())
    extra = {'xla_memory_mb': jstep.memory}
  step()
  rss_before = _status_mb('VmRSS')
  with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # resets VmHWM to the current RSS
  step()
  peak = _status_mb('VmHWM')
  print(json.dumps({'side': args.side, 'rss_libs_mb': rss_libs, 'rss_before_mb': rss_before,
                    'peak_rss_mb': peak, 'train_mb': peak - rss_libs,
                    'step_mb': peak - rss_before, **extra}))
  return 0


if __name__ == '__main__':
  sys.exit(main())
