"""Does XLA's CPU backend run bfloat16 matmuls faster than float32 on this CPU, and with which
flags? Against torch's (oneDNN) bf16 matmul. The shape is the 0.6B model's MLP up-projection
at 4k tokens a step: [4096, 1024] x [1024, 3072].

    python -m benchmarks.bf16_cpu     # ~1 min: one process per XLA flag setting, a table

Prints the CPU's bf16-related flags (avx512_bf16, amx_bf16, avx_vnni, avx512f) first: without
them no library can run bf16 arithmetic natively; bf16 then only halves the bytes moved.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

M, K, N = 4096, 1024, 3072
SETTINGS = {'default': '', 'onednn': '--xla_cpu_use_onednn=true',
            'xnnpack': '--xla_cpu_use_xnnpack=true'}


def _best(fn, repeats=2) -> float:
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def jax_rates() -> dict[str, float]:
  import jax
  import jax.numpy as jnp
  a32 = jax.random.normal(jax.random.key(0), (M, K), jnp.float32)
  b32 = jax.random.normal(jax.random.key(1), (K, N), jnp.float32)
  a16, b16 = a32.astype(jnp.bfloat16), b32.astype(jnp.bfloat16)
  flops = 2 * M * K * N
  out = {}
  for name, (a, b, kw) in {'f32': (a32, b32, {}), 'bf16': (a16, b16, {}),
                           'bf16->f32': (a16, b16, {'preferred_element_type': jnp.float32})
                           }.items():
    f = jax.jit(lambda a, b, kw=kw: jnp.dot(a, b, **kw))
    out[name] = flops / _best(lambda: f(a, b).block_until_ready()) / 1e9
  return out


def torch_rates() -> dict[str, float]:
  import torch
  a = torch.randn(M, K)
  b = torch.randn(K, N)
  flops = 2 * M * K * N
  out = {'f32': flops / _best(lambda: a @ b) / 1e9}
  a16, b16 = a.bfloat16(), b.bfloat16()
  out['bf16'] = flops / _best(lambda: a16 @ b16) / 1e9
  return out


def cpu_flags() -> list[str]:
  wanted = ('avx512_bf16', 'amx_bf16', 'amx_tile', 'avx_vnni', 'avx512f', 'avx2', 'fma')
  with open('/proc/cpuinfo') as f:
    flags = next((line.split(':', 1)[1].split() for line in f if line.startswith('flags')), [])
  return [w for w in wanted if w in flags]


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if argv and argv[0] == '--one':
    rates = torch_rates() if argv[1] == 'torch' else jax_rates()
    print(json.dumps(rates))
    return 0
  print(f'CPU flags present: {cpu_flags()}')
  print('| library, setting | f32 GFLOP/s | bf16 GFLOP/s | bf16 in, f32 out GFLOP/s |')
  print('|---|---:|---:|---:|')
  for name, flags in [*SETTINGS.items(), ('torch', None)]:
    env = dict(os.environ)
    if flags is not None:
      env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' ' + flags).strip()
    proc = subprocess.run([sys.executable, '-m', 'benchmarks.bf16_cpu', '--one',
                           'torch' if flags is None else 'jax'], capture_output=True, text=True,
                          env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if proc.returncode:
      print(f'| {name} | failed: {proc.stderr.strip().splitlines()[-1][:100]} | | |')
      continue
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    label = f'jax, XLA_FLAGS={flags!r}' if flags is not None else 'torch (oneDNN)'
    print(f"| {label} | {r['f32']:.0f} | {r['bf16']:.0f} | {r.get('bf16->f32', float('nan')):.0f} |",
          flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
