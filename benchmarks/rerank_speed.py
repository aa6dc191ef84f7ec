"""Rerank throughput: decomp's jitted scorer vs a transformers/torch scoring loop (documents/s).

  python benchmarks/rerank_speed.py [--config 10m] [--batch 32] [--length 128] [--repeats 8]

Same random Qwen2 weights on both sides (``benchmarks.common.make_checkpoint``), same token
batches (no padding), alternating in one process. Recipe on both sides: Qwen3-Reranker's, the
last position's logits and a softmax over the (no, yes) pair. torch: ``model(ids, mask,
logits_to_keep=1)`` under ``torch.inference_mode``; decomp: the jitted ``Reranker.readout``
(label-token rows only) that ``decomp.rerank``'s scorers call. The probabilities are compared
before timing. Not a test: prints one table.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument('--config', default='10m')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--length', type=int, default=128)
  parser.add_argument('--repeats', type=int, default=8)
  args = parser.parse_args(argv)
  import jax
  import numpy as np
  import torch
  from flax import nnx

  from benchmarks import common as C
  from decomp.models.reranker import Reranker

  ck = C.make_checkpoint(args.config)
  vocab = C.CONFIGS[args.config]['vocab_size']
  batch = C.make_batch(args.batch, 1, args.length, vocab)
  ids, mask = batch['input_ids'][:, 0], batch['attention_mask'][:, 0]

  model = ck.torch_model.eval()
  t_ids, t_mask = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(mask.astype(np.int64))

  def torch_scores():
    with torch.inference_mode():
      logits = model(input_ids=t_ids, attention_mask=t_mask, logits_to_keep=1).logits[:, -1]
      return torch.softmax(logits[:, [C.NO_ID, C.YES_ID]], dim=-1)[:, 1].numpy()

  reranker = Reranker(C.load_decoder(ck.path), (C.YES_ID, C.NO_ID), rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(reranker)

  @jax.jit
  def jax_scores(state, ids, mask):
    out = nnx.merge(graphdef, state).readout(ids, mask)
    return jax.nn.sigmoid(out.yes - out.no)  # = softmax over (no, yes), the yes column

  j_ids, j_mask = jax.device_put(ids), jax.device_put(mask)
  want = torch_scores()
  got = np.asarray(jax_scores(state, j_ids, j_mask))
  err = float(np.max(np.abs(got - want)))
  print(f'parity: max |P_decomp(yes) - P_torch(yes)| = {err:.2e}')
  if err > 1e-4:
    print('parity check failed', file=sys.stderr)
    return 1
  timing = C.time_alternating(
      {'torch': torch_scores, 'decomp': lambda: C.block(jax_scores(state, j_ids, j_mask))},
      warmup=2, repeats=args.repeats)
  n = args.batch
  print(f'{args.config}, {n} documents x {args.length} tokens per batch, '
        f'{torch.get_num_threads()} torch threads')
  for name, t in timing.items():
    print(f'  {name:<7} {n / t["median_s"]:8.1f} docs/s  (median {t["median_s"] * 1e3:.1f} ms)')
  print(f'  speed-up decomp/torch (paired median): '
        f'{1 / C.paired_ratio(timing, "decomp", "torch"):.2f}x')
  return 0


if __name__ == '__main__':
  sys.exit(main())
