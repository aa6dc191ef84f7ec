"""Step time of the reranker with the last layer run at the answer position only (what
`Reranker.readout` does: `Decoder.hidden_states(at_index=...)`) against the full last layer
(every position through every layer, then the answer position indexed), a plain SFT update
(forward, backward, AdamW) on seeded random Qwen2 checkpoints.

  python -m benchmarks.last_layer [--models 10m,20m] [--shape 4,4,128] [--repeats 8]

Both steps are compiled first, then timed alternately (one call of each per round, so both see
the same machine load); prints medians and the median of per-round ratios as a markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from benchmarks import common as C  # noqa: E402


def make_step(path: str, batch, *, full_last_layer: bool) -> C.JaxStep:
  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx
  from decomp.losses import sft_loss
  from decomp.models import Reranker
  from decomp.models.reranker import _last_valid_index

  model = Reranker(C.load_decoder(path), (C.YES_ID, C.NO_ID), rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  tx = optax.adamw(C.LEARNING_RATE, weight_decay=0.0)
  opt_state = tx.init(params)

  def loss_fn(params, batch):
    m = nnx.merge(graphdef, params)
    b, n, t = batch['input_ids'].shape
    ids = batch['input_ids'].reshape(b * n, t)
    mask = batch['attention_mask'].reshape(b * n, t)
    if full_last_layer:  # the readout before the shortcut
      h = m.decoder.hidden_states(ids, mask)
      out = m.readout_from_hidden(
          jnp.take_along_axis(h, _last_valid_index(mask)[:, None, None], axis=1)[:, 0])
    else:
      out = m.readout(ids, mask)
    return sft_loss(out.yes.reshape(b, n), out.no.reshape(b, n), batch['labels'])

  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, {'loss': loss}

  dbatch = jax.device_put({k: batch[k] for k in ('input_ids', 'attention_mask', 'labels')})
  compiled, compile_s, memory, flops = C._compiled(step, (params, opt_state, dbatch))
  return C.JaxStep(compiled, [params, opt_state], dbatch, compile_s, memory, flops)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='10m,20m')
  parser.add_argument('--shape', default='4,4,128', help='groups, list size, tokens')
  parser.add_argument('--repeats', type=int, default=8)
  args = parser.parse_args(argv)
  groups, list_size, length = (int(x) for x in args.shape.split(','))
  import jax
  print(f'jax {jax.__version__} ({jax.default_backend()}), {len(os.sched_getaffinity(0))} usable '
        f'core(s), load {os.getloadavg()}; B x n x T = {groups} x {list_size} x {length}, fp32\n')
  print('| model | layers | full last layer s | answer position only s | time saved (paired) '
        '| XLA temp MB full / one position |')
  print('|---|---|---|---|---|---|')
  for name in args.models.split(','):
    ck = C.make_checkpoint(name)
    batch = C.make_batch(groups, list_size, length, C.CONFIGS[name]['vocab_size'])
    full = make_step(ck.path, batch, full_last_layer=True)
    one = make_step(ck.path, batch, full_last_layer=False)
    loss_full, loss_one = float(full.run()['loss']), float(one.run()['loss'])
    assert abs(loss_full - loss_one) <= 1e-5 * max(1.0, abs(loss_full)), (loss_full, loss_one)
    timing = C.time_alternating({'full': lambda: full.run(), 'one': lambda: one.run()},
                                warmup=1, repeats=args.repeats, sync=C.block)
    saved = 1 - C.paired_ratio(timing, 'one', 'full')
    print(f'| {name} | {C.CONFIGS[name]["num_hidden_layers"]} | '
          f'{timing["full"]["median_s"]:.3f} | {timing["one"]["median_s"]:.3f} | '
          f'{100 * saved:.1f}% | {full.memory.get("temp_mb", float("nan")):.0f} / '
          f'{one.memory.get("temp_mb", float("nan")):.0f} |', flush=True)
    ck.tmp.cleanup()
  return 0


if __name__ == '__main__':
  sys.exit(main())
