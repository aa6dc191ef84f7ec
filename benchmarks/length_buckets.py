"""Step time with length buckets against fixed padding, on a length-skewed data set (not a test).

  python -m benchmarks.length_buckets [--batches 12] [--buckets 64,128,256,512] [--repeats 2]

Prompt lengths are drawn from a log-normal distribution (median ``--median`` tokens, clipped to
[16, max_length]): most prompts are short, a few long, as in web passages. Every batch (B groups
x n documents, left padded) is either padded to ``max_length`` (``length_buckets=()``, one
compiled shape) or to the smallest bucket that holds its longest prompt (``TrainConfig.
length_buckets``; the same rule as ``decomp.models.prompt.encode_groups(lengths=...)``, one
compiled shape per bucket). The step is the training engine's (``make_train_step``: url
surrogate with the SFT weight and direction, diagnostics) on a seeded random 10m Qwen2 reranker.
Both schemes run the same batches, alternately, ``--repeats`` times; prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from benchmarks import common as C  # noqa: E402


def skewed_lengths(rng, count: int, *, median: int, max_length: int) -> np.ndarray:
  lengths = np.exp(rng.normal(np.log(median), 0.7, count)).round().astype(int)
  return np.clip(lengths, 16, max_length)


def padded_batch(lengths: np.ndarray, length: int, vocab: int, rng) -> dict[str, np.ndarray]:
  """Left-padded ids and mask ``[B, n, length]`` for prompt ``lengths`` ``[B, n]``; the first
  document of each list is the positive."""
  b, n = lengths.shape
  ids = rng.integers(20, vocab, (b, n, length)).astype(np.int32)
  mask = (np.arange(length) >= length - lengths[..., None]).astype(np.int32)
  labels = np.zeros((b, n), np.int32)
  labels[:, 0] = 1
  return {'input_ids': ids * mask, 'attention_mask': mask, 'labels': labels,
          'where': np.ones((b, n), bool)}


def bucket_of(longest: int, buckets) -> int:
  return min(b for b in buckets if b >= longest)  # encode_groups(lengths=...)'s rule


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='10m')
  parser.add_argument('--batches', type=int, default=12)
  parser.add_argument('--groups', type=int, default=2)
  parser.add_argument('--list-size', type=int, default=4)
  parser.add_argument('--median', type=int, default=48)
  parser.add_argument('--buckets', default='64,128,256,512')
  parser.add_argument('--repeats', type=int, default=2)
  args = parser.parse_args(argv)
  buckets = sorted(int(b) for b in args.buckets.split(','))
  max_length = buckets[-1]
  rng = np.random.default_rng(0)
  vocab = C.CONFIGS[args.model]['vocab_size']
  lengths = [skewed_lengths(rng, args.groups * args.list_size, median=args.median,
                            max_length=max_length).reshape(args.groups, args.list_size)
             for _ in range(args.batches)]
  chosen = [bucket_of(int(x.max()), buckets) for x in lengths]
  ck = C.make_checkpoint(args.model)

  # One compiled step per shape; each keeps its own parameters (only the time is compared).
  steps, compile_s = {}, {}
  for length in sorted(set(chosen) | {max_length}):
    example = padded_batch(lengths[0], length, vocab, rng)
    step = C.make_jax_url_step(ck.path, example)
    steps[length], compile_s[length] = step, step.compile_s
  fixed = [padded_batch(x, max_length, vocab, rng) for x in lengths]
  bucketed = [padded_batch(x, t, vocab, rng) for x, t in zip(lengths, chosen)]

  def epoch(batches):
    start = time.perf_counter()
    for batch in batches:
      step = steps[batch['input_ids'].shape[-1]]
      step.batch = batch
      C.block(step.run())
    return time.perf_counter() - start

  epoch(fixed[:1])  # warm every shape once
  epoch([bucketed[chosen.index(t)] for t in sorted(set(chosen))])
  times = {'fixed': [], 'buckets': []}
  for _ in range(args.repeats):
    times['fixed'].append(epoch(fixed))
    times['buckets'].append(epoch(bucketed))
  fixed_s = statistics.median(times['fixed']) / args.batches
  bucket_s = statistics.median(times['buckets']) / args.batches
  real_tokens = sum(int(x.sum()) for x in lengths)
  cells = lambda t: args.batches * args.groups * args.list_size * t
  counts = {t: chosen.count(t) for t in sorted(set(chosen))}
  import jax
  print(f'jax {jax.__version__} ({jax.default_backend()}), {len(os.sched_getaffinity(0))} usable '
        f'core(s), load {os.getloadavg()}; model {args.model}, {args.batches} batches of '
        f'{args.groups} x {args.list_size} prompts, lengths log-normal (median {args.median}, '
        f'sigma 0.7, clipped to [16, {max_length}]): mean {np.mean(lengths):.0f}, max '
        f'{np.max(lengths)}; batches per bucket {counts}\n')
  print('| padding | shapes compiled | compile s (all shapes) | token slots / real tokens | '
        's per step | speed-up |')
  print('|---|---|---|---|---|---|')
  print(f'| fixed, T = {max_length} | 1 | {compile_s[max_length]:.1f} | '
        f'{cells(max_length) / real_tokens:.1f}x | {fixed_s:.3f} | 1.00x |')
  slots = sum(args.groups * args.list_size * t for t in chosen)
  print(f'| length_buckets = {tuple(buckets)} | {len(counts)} | '
        f'{sum(compile_s[t] for t in counts):.1f} | {slots / real_tokens:.1f}x | '
        f'{bucket_s:.3f} | {fixed_s / bucket_s:.2f}x |')
  ck.tmp.cleanup()
  return 0


if __name__ == '__main__':
  sys.exit(main())
