"""A/B of the decoder's performance changes against the formulation they replaced.

  python benchmarks/ab_decoder.py [--config 10m] [--repeats 6]

"before" re-creates the original layer code by patching it in while the step is traced (3-D
`x @ kernel` in Linear, a 3-D full-vocabulary head einsum, attention einsums on the token-major
``[B, T, kv, groups, hd]`` layout); "after" is decomp.models.decoder as it is. Both steps run
alternately in one process on the same weights and batch; prints medians, the paired speed-up
and XLA's temporary-buffer sizes.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def _before():
  """The original Linear, Decoder.__call__ and Attention.__call__ (semantics identical)."""
  import jax
  import jax.numpy as jnp
  from decomp.models import decoder as D

  def linear(self, x):
    y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y

  def logits(self, input_ids, attention_mask=None, *, inputs_embeds=None):
    h = self.hidden_states(input_ids, attention_mask, inputs_embeds=inputs_embeds)
    return jnp.einsum('btd,vd->btv', h, self._lm_head_matrix().astype(self.dtype))

  def attention(self, x, cos, sin, mask):
    b, t, _ = x.shape
    groups = self.num_heads // self.num_kv_heads
    rope = lambda z: z * cos[:, :, None, :] + D._rotate_half(z) * sin[:, :, None, :]
    q = rope(self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim))
    k = rope(self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim))
    v = self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
    q = q.reshape(b, t, self.num_kv_heads, groups, self.head_dim)
    scores = jnp.einsum('btkgh,bskh->bkgts', q, k, preferred_element_type=jnp.float32)
    scores = jnp.where(mask[:, None, None, :, :], scores * self.head_dim ** -0.5, D._MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
    out = jnp.einsum('bkgts,bskh->btkgh', probs, v)
    return self.o_proj(out.reshape(b, t, self.num_heads * self.head_dim))

  return {(D.Linear, '__call__'): linear, (D.Decoder, '__call__'): logits,
          (D.Attention, '__call__'): attention}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument('--config', default='10m')
  parser.add_argument('--repeats', type=int, default=6)
  args = parser.parse_args(argv)
  from benchmarks import common as C

  ck = C.make_checkpoint(args.config)
  batch = C.make_batch(4, 4, 128, C.CONFIGS[args.config]['vocab_size'])
  patches = _before()
  saved = {key: getattr(*key) for key in patches}
  for (cls, attr), fn in patches.items():
    setattr(cls, attr, fn)
  try:  # jit traces while patched; the compiled steps keep the old code
    before = {full: C.make_jax_plain_step(ck.path, batch, full_vocab=full)
              for full in (False, True)}
  finally:
    for (cls, attr), fn in saved.items():
      setattr(cls, attr, fn)
  after = {full: C.make_jax_plain_step(ck.path, batch, full_vocab=full) for full in (False, True)}
  steps = {}
  for full, tag in ((False, 'readout'), (True, 'full_vocab')):
    steps[f'before:{tag}'] = lambda s=before[full]: C.block(s.run())
    steps[f'after:{tag}'] = lambda s=after[full]: C.block(s.run())
  timing = C.time_alternating(steps, warmup=1, repeats=args.repeats)
  for full, tag in ((False, 'readout'), (True, 'full_vocab')):
    print(f'{args.config} {tag}: before {timing[f"before:{tag}"]["median_s"]:.3f}s, after '
          f'{timing[f"after:{tag}"]["median_s"]:.3f}s, speed-up '
          f'{C.paired_ratio(timing, f"before:{tag}", f"after:{tag}"):.2f}x; XLA temp buffers '
          f'{before[full].memory.get("temp_mb", 0):.0f} -> '
          f'{after[full].memory.get("temp_mb", 0):.0f} MB')
  print(f'load average {os.getloadavg()}')
  ck.tmp.cleanup()
  return 0


if __name__ == '__main__':
  sys.exit(main())
