"""MFU of decomp's reranker training step on whatever accelerator JAX sees (one command).

  python -m benchmarks.accelerator [--shape qwen2-0.5b] [--dtype bfloat16] [--groups 8]
      [--list-size 16] [--length 512] [--doc-chunk 0 4] [--peak-tflops 989] [--steps 10]

Builds a random Qwen2-0.5B-shaped reranker (hidden 896, 24 layers, 14 heads / 2 KV heads, MLP
4864, vocabulary 151,936) through ``decomp.models.build`` (the one construction path), jits the
engine's own update step (``decomp.train.step.make_train_step``: SFT surrogate, diagnostics,
per-document logs) with bf16 compute and fp32 master weights, and reports per configuration:
compile time, step time (median of ``--steps`` after a warm-up), XLA's FLOP count of the
compiled step, achieved TFLOP/s and MFU against ``--peak-tflops`` (default: H200's dense bf16,
989), plus the compiled step's temporary memory. ``--doc-chunk`` values > 0 run the exact
two-pass chunked step (``decomp.chunked``): one extra forward, one chunk's activations.

``--shape tiny`` is a 2-layer toy that runs in seconds on CPU (the test suite runs it so the
script cannot rot); the MFU of a CPU run means nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

SHAPES = {
    # Qwen2-0.5B's published shape.
    'qwen2-0.5b': dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24,
                       num_heads=14, num_kv_heads=2, head_dim=64),
    'tiny': dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
                 num_heads=4, num_kv_heads=2, head_dim=16),
}


def build_step(shape: str, *, dtype: str, groups: int, list_size: int, length: int,
               doc_chunk: int):
  """``(compiled step, args, flops, temp bytes, compile seconds)`` of one configuration."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from flax import nnx

  from decomp import OBJECTIVES
  from decomp.models.build import RerankerSpec, make_reranker
  from decomp.models.config import DecoderConfig
  from decomp.train import step as step_lib

  config = DecoderConfig(architecture='qwen2', attention_bias=True, tie_word_embeddings=True,
                         max_position_embeddings=max(length, 512), **SHAPES[shape])
  spec = RerankerSpec(decoder=config, label_ids=(9693 % config.vocab_size,
                                                 2152 % config.vocab_size),
                      dtype=dtype, param_dtype='float32')
  model = make_reranker(spec, nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  tx = optax.adamw(1e-5)
  inner = step_lib.make_train_step(graphdef, tx, lambda s: 1e-5, OBJECTIVES['sft'],
                                   doc_chunk=doc_chunk)

  def step(params, opt_state, batch):
    return inner(params, nnx.State({}), opt_state, 0, batch)

  rng = np.random.default_rng(0)
  batch = {
      'input_ids': rng.integers(0, config.vocab_size, (groups, list_size, length), np.int32),
      'attention_mask': np.ones((groups, list_size, length), np.int32),
      'labels': np.eye(list_size, dtype=np.int32)[np.zeros(groups, int)],
      'where': np.ones((groups, list_size), bool)}
  args = [params, tx.init(params), jax.device_put(batch)]
  t0 = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float((cost or {}).get('flops', 0.0))
  try:
    temp = compiled.memory_analysis().temp_size_in_bytes
  except Exception:  # not every backend reports it
    temp = None
  del jnp
  return compiled, args, flops, temp, compile_s


def measure(shape: str, *, dtype: str, groups: int, list_size: int, length: int,
            doc_chunk: int, steps: int, peak_tflops: float) -> dict:
  import jax
  compiled, args, flops, temp, compile_s = build_step(
      shape, dtype=dtype, groups=groups, list_size=list_size, length=length, doc_chunk=doc_chunk)
  params, opt_state, batch = args
  params, opt_state, metrics = compiled(params, opt_state, batch)  # warm-up
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    params, opt_state, metrics = compiled(params, opt_state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  step_s = sorted(times)[len(times) // 2]
  achieved = flops / step_s / 1e12 if flops else None
  return {'shape': shape, 'dtype': dtype, 'groups': groups, 'list_size': list_size,
          'length': length, 'doc_chunk': doc_chunk, 'device': str(jax.devices()[0].device_kind),
          'compile_s': round(compile_s, 2), 'step_s': step_s, 'tflops': achieved,
          'mfu': achieved / peak_tflops if achieved else None,
          'temp_gib': None if temp is None else temp / 2**30,
          'loss': float(metrics['scalars']['loss'])}


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--shape', default='qwen2-0.5b', choices=sorted(SHAPES))
  parser.add_argument('--dtype', default='bfloat16', choices=('bfloat16', 'float32'))
  parser.add_argument('--groups', type=int, default=8)
  parser.add_argument('--list-size', type=int, default=16)
  parser.add_argument('--length', type=int, default=512)
  parser.add_argument('--doc-chunk', type=int, nargs='+', default=[0, 4])
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--peak-tflops', type=float, default=989.0)
  parser.add_argument('--json', default=None, help='also write the rows to this file')
  args = parser.parse_args(argv)
  rows = [measure(args.shape, dtype=args.dtype, groups=args.groups, list_size=args.list_size,
                  length=args.length, doc_chunk=chunk, steps=args.steps,
                  peak_tflops=args.peak_tflops) for chunk in args.doc_chunk]
  print('| device | doc_chunk | step (s) | TFLOP/s | MFU | temp (GiB) | compile (s) |')
  print('|---|---|---|---|---|---|---|')
  fmt = lambda v, f: '-' if v is None else format(v, f)
  for r in rows:
    print(f"| {r['device']} | {r['doc_chunk']} | {r['step_s']:.4f} | {fmt(r['tflops'], '.1f')} | "
          f"{fmt(r['mfu'], '.1%')} | {fmt(r['temp_gib'], '.3f')} | {r['compile_s']} |")
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(rows, f, indent=2)
  return rows


if __name__ == '__main__':
  main()
