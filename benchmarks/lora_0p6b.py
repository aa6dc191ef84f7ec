"""The LoRA r16 reranker step at the Qwen3-0.6B shape on this CPU: decomp (remat none / block)
vs transformers with LoRA adapters (fp32 / bf16 autocast, gradient checkpointing), at 1k and 4k
tokens a step: step time and peak resident memory, each in its own process.

    python -m benchmarks.lora_0p6b            # every row (~25 min on 2 cores), prints a table
    python -m benchmarks.lora_0p6b --one decomp:4096:block:float32   # one row, JSON

Random weights of the real shape (benchmarks/shapes/qwen3-reranker-0.6b/config.json: hidden
1024, 28 layers, 16 heads / 8 KV heads, head_dim 128, intermediate 3072, vocabulary 151,669,
tied embeddings). 1k tokens = 1 list x 4 documents x 256 tokens, 4k = 2 lists x 4 x 512 (issue
27). LoRA rank 16, alpha 32 on q/k/v/o/gate/up/down: decomp's ``finetune=lora``, and peft's
``get_peft_model`` on transformers' Qwen3 (``pip install -e '.[bench]'``; ``make bench-lora-06b``
installs it), with transformers' gradient checkpointing (non-reentrant) for remat=block.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = os.path.join(ROOT, 'benchmarks', 'shapes', 'qwen3-reranker-0.6b')
TOKENS = {1024: (1, 4, 256), 4096: (2, 4, 512)}  # groups, list size, length
TARGETS = ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj')
ROWS = ('decomp:1024:none:float32', 'decomp:1024:block:float32', 'decomp:4096:block:float32',
        'decomp:4096:block:bfloat16', 'torch:1024:none:float32', 'torch:1024:none:bfloat16',
        'torch:4096:block:float32', 'torch:4096:block:bfloat16')
STEPS = 2  # timed, after one warm-up step


def _peak_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


def _batch(tokens: int):
  from benchmarks.common import make_batch
  b, n, t = TOKENS[tokens]
  return make_batch(b, n, t, vocab=151669)


def decomp_row(tokens: int, remat: str, dtype: str) -> dict:
  import dataclasses
  import jax
  from flax import nnx
  from decomp import plan as plan_lib
  from decomp.models.build import make_reranker
  from decomp.train import overrides, recipes
  from decomp.train import state as state_lib
  b, n, t = TOKENS[tokens]
  cfg = overrides.apply_overrides(recipes.get_config('playground'), [
      f'model={SHAPE}', 'finetune=lora', f'batch_size={b}', f'negatives={n - 1}',
      f'max_length={t}', f'remat={remat}', f'dtype={dtype}', 'num_devices=1'])
  start = time.perf_counter()
  step = plan_lib.compile_step(cfg)
  compile_s = time.perf_counter() - start
  plan = plan_lib.memory_plan(step)
  spec = dataclasses.replace(step.model.spec, checkpoint=None)  # random weights of the shape

  def init():
    _, params, frozen = nnx.split(make_reranker(spec, nnx.Rngs(0)), state_lib.trainable(cfg), ...)
    return params, frozen

  params, frozen = jax.jit(init, out_shardings=(step.model.params_shardings,
                                                step.model.frozen_shardings))()
  opt_state = jax.jit(step.tx.init)(params)
  batch = {k: jax.device_put(v) for k, v in _batch(tokens).items()}
  times = []
  for i in range(STEPS + 1):
    begin = time.perf_counter()
    params, opt_state, metrics = step.compiled(params, frozen, opt_state,
                                               jax.numpy.asarray(i, jax.numpy.int32), batch)
    float(metrics['scalars']['loss'])
    times.append(time.perf_counter() - begin)
  return {'compile_s': compile_s, 'step_s': min(times[1:]), 'planned_peak_gb': plan.peak / 1e9,
          'loss': float(metrics['scalars']['loss'])}


def _lora(model, rank=16, alpha=32.0):
  """peft's LoRA on every linear layer of the decoder (the base frozen, B zero, no dropout)."""
  from peft import LoraConfig, get_peft_model
  return get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                                          target_modules=list(TARGETS), bias='none'))


def torch_row(tokens: int, remat: str, dtype: str) -> dict:
  import torch
  from transformers import Qwen3Config, Qwen3ForCausalLM
  from benchmarks.common import YES_ID, NO_ID, torch_sft_loss
  with open(os.path.join(SHAPE, 'config.json')) as f:
    raw = json.load(f)
  torch.manual_seed(0)
  model = _lora(Qwen3ForCausalLM(Qwen3Config(**{k: v for k, v in raw.items()
                                                 if k != 'architectures'})))
  if remat == 'block':
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})
    model.enable_input_require_grads()
  model.train()
  batch = _batch(tokens)
  b, n, t = batch['input_ids'].shape
  ids = torch.from_numpy(batch['input_ids'].reshape(b * n, t).astype(np.int64))
  mask = torch.from_numpy(batch['attention_mask'].reshape(b * n, t).astype(np.int64))
  labels = torch.from_numpy(batch['labels'])
  opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
  times = []
  for _ in range(STEPS + 1):
    begin = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=dtype == 'bfloat16'):
      last = model(input_ids=ids, attention_mask=mask, use_cache=False,
                   logits_to_keep=1).logits[:, -1, :]
    loss = torch_sft_loss(last[:, YES_ID].float().reshape(b, n),
                          last[:, NO_ID].float().reshape(b, n), labels)
    loss.backward()
    opt.step()
    float(loss)
    times.append(time.perf_counter() - begin)
  return {'step_s': min(times[1:]), 'loss': float(loss)}


def run_one(row: str) -> dict:
  engine, tokens, remat, dtype = row.split(':')
  fn = decomp_row if engine == 'decomp' else torch_row
  out = fn(int(tokens), remat, dtype)
  return {'row': row, **out, 'peak_rss_gb': _peak_gb()}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument('--one', help='engine:tokens:remat:dtype, in this process (JSON out)')
  parser.add_argument('--rows', default=','.join(ROWS))
  parser.add_argument('--row-timeout', type=float, default=1500,
                      help='seconds a row may take (a slower one is reported as unfinished)')
  args = parser.parse_args(argv)
  if args.one:
    print(json.dumps(run_one(args.one)), flush=True)
    return 0
  print('| engine | tokens/step | remat / checkpointing | dtype | step s | peak RSS GB | note |')
  print('|---|---:|---|---|---:|---:|---|')
  for row in args.rows.split(','):
    engine, tokens, remat, dtype = row.split(':')
    try:
      proc = subprocess.run([sys.executable, '-m', 'benchmarks.lora_0p6b', '--one', row],
                            capture_output=True, text=True, cwd=ROOT, timeout=args.row_timeout)
    except subprocess.TimeoutExpired:
      print(f'| {engine} | {tokens} | {remat} | {dtype} | - | - | did not finish 3 steps within '
            f'{args.row_timeout:.0f} s |', flush=True)
      continue
    lines = [l for l in proc.stdout.splitlines() if l.startswith('{')]
    if proc.returncode or not lines:
      tail = ' '.join(proc.stderr.strip().splitlines()[-1:])[:120]
      print(f'| {engine} | {tokens} | {remat} | {dtype} | - | - | failed: {tail} |', flush=True)
      continue
    r = json.loads(lines[-1])
    note = (f"compile {r['compile_s']:.0f} s, planned peak {r['planned_peak_gb']:.1f} GB"
            if 'compile_s' in r else '')
    print(f"| {engine} | {tokens} | {remat} | {dtype} | {r['step_s']:.1f} | "
          f"{r['peak_rss_gb']:.1f} | {note} |", flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
