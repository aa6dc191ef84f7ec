"""Markdown tables of benchmarks/results.json (``python -m benchmarks.report [results.json]``)."""

from __future__ import annotations

import json
import os
import sys

SIDES = ('torch_full', 'torch_full_1t', 'torch_keep1_1t', 'jax_full', 'jax_readout')
MEMORY_SIDES = ('torch_full', 'torch_keep1', 'jax_full', 'jax_readout')
SIDE_NAMES = {
    'torch_full': 'PyTorch 2 threads, `logits[:, -1, :]` (full-vocab logits)',
    'torch_full_1t': 'PyTorch 1 thread, `logits[:, -1, :]`',
    'torch_keep1': 'PyTorch, `logits_to_keep=1`',
    'torch_keep1_1t': 'PyTorch 1 thread, `logits_to_keep=1`',
    'jax_full': 'decomp, full-vocab logits',
    'jax_readout': 'decomp reranker (label-token readout)',
}


def _m(x, digits=2):
  return '-' if x is None else f'{x:.{digits}f}'


def markdown(r: dict) -> str:
  m = r['machine']
  peak = r.get('matmul_peak', {})
  peak_best = max(peak.values()) if peak else None
  out = [
      '# decomp vs transformers/PyTorch: training-step benchmarks', '',
      f'Machine: {m["cpu"]}, {m["cores"]} cores (torch threads {m["torch_threads"]}), '
      f'jax {m["jax"]} ({m["jax_backend"]}), flax {m["flax"]}, torch {m["torch"]}, '
      f'transformers {m["transformers"]}; {m["date_utc"]}; mode `{r["mode"]}`; '
      f'load average at start {m["loadavg"]}, at end {m.get("loadavg_end")} '
      '(the machine is shared: both sides are timed alternately in one process, so they see '
      'the same load).', '',
      f'Measured fp32 matmul peak (2048^2): torch {_m(peak.get("torch_gflops"), 0)} GFLOP/s, '
      f'jax {_m(peak.get("jax_gflops"), 0)} GFLOP/s; "% peak" below is against the better of '
      f'the two ({_m(peak_best, 0)} GFLOP/s).', '',
      'Every step is a full update (forward, backward, AdamW) of a Qwen2 reranker with the SFT '
      'loss on the yes/no logits at the last position; both sides load the same '
      '`save_pretrained` weights, and their losses and gradient norms are checked to agree '
      '(max relative difference in the table) before timing. Medians over the timed steps.', '',
  ]
  if 'compare' in r:
    out += ['## Throughput', '',
            '| model (params) | B x n x T | side | s/step | examples/s | GFLOP/step | % peak | '
            'compile s | first step s |',
            '|---|---|---|---|---|---|---|---|---|']
    for c in r['compare']:
      shape = f'{c["groups"]} x {c["list_size"]} x {c["length"]}'
      for side in SIDES:
        s = c['sides'][side]
        out.append(
            f'| {c["config"]} ({c["params"]["total"] / 1e6:.1f}M) | {shape} | '
            f'{SIDE_NAMES[side]} | {s["median_s"]:.3f} | {s["examples_per_s"]:.1f} | '
            f'{s["gflop"]:.1f} | {100 * s["peak_fraction"]:.0f}% | '
            f'{_m(s.get("compile_s"))} | {s["first_s"]:.2f} |')
    out += ['', 'Throughput ratios, decomp / PyTorch (median over rounds of the per-round '
            'ratio; each PyTorch variant with 2 threads / 1 thread):', '',
            '| model | B x n x T | decomp full vs torch full | goal >= 1 vs the faster torch | '
            'decomp readout vs torch full | goal >= 2 vs the faster torch | decomp readout vs '
            'torch keep1 | parity (max rel diff) | load avg |',
            '|---|---|---|---|---|---|---|---|---|']
    for c in r['compare']:
      q = c['paired_ratios']
      full = min(q['full_vs_torch_full'], q['full_vs_torch_full_1t'])
      readout = min(q['readout_vs_torch_full'], q['readout_vs_torch_full_1t'])
      verdict = lambda x, goal: f'{x:.2f}x {"met" if x >= goal else "NOT met"}'
      out.append(f'| {c["config"]} | {c["groups"]} x {c["list_size"]} x {c["length"]} | '
                 f'{q["full_vs_torch_full"]:.2f}x / {q["full_vs_torch_full_1t"]:.2f}x | '
                 f'{verdict(full, 1.0)} | '
                 f'{q["readout_vs_torch_full"]:.2f}x / {q["readout_vs_torch_full_1t"]:.2f}x | '
                 f'{verdict(readout, 2.0)} | '
                 f'- / {q["readout_vs_torch_keep1_1t"]:.2f}x | '
                 f'{c["parity"]["max_rel_diff"]:.1e} | {c["loadavg"][0]:.1f} |')
    out += ['', 'Higher is better for decomp. "compile s" is XLA lower + compile; "first step" '
            'is the first call after it (torch has no compile step; its first step allocates the '
            'AdamW state). "% peak" uses the FLOP count of `benchmarks/common.py:step_flops` '
            '(matmuls only, forward + backward).', '']
  if 'memory' in r:
    out += ['## Memory', '',
            '| model | B x n x T | side | peak RSS MB | training MB (peak - libraries) | '
            'XLA temp buffers MB |', '|---|---|---|---|---|---|']
    for mm in r['memory']:
      for side in MEMORY_SIDES:
        s = mm['sides'][side]
        temp = s.get('xla_memory_mb', {}).get('temp_mb')
        out.append(f'| {mm["config"]} | {mm["groups"]} x {mm["list_size"]} x {mm["length"]} | '
                   f'{SIDE_NAMES[side]} | {s["peak_rss_mb"]:.0f} | {s["train_mb"]:.0f} | '
                   f'{_m(temp, 0)} |')
    out += ['', 'Each side in its own process; "training MB" is the high-water RSS during a step '
            'minus the RSS after importing the libraries (weights, gradients, optimizer state, '
            'activations and allocator caches; on the JAX side also memory the XLA compiler '
            'left with the allocator).', '']
  if 'overhead' in r:
    out += ['## Cost of the analysis', '',
            '| model | B x n x T | plain SFT step s | url + diagnostics + per-example logs s | '
            'overhead (goal <= 5%) | the same, norms every 10th step (paired / total) | '
            'plain + the 3 global norms alone | url + logs without the '
            '3 global norms | + exact per-example grad norms s | ratio to plain (goal <= 3) |',
            '|---|---|---|---|---|---|---|---|---|---|']
    for o in r['overhead']:
      s = o['sides']
      out.append(f'| {o["config"]} | {o["groups"]} x {o["list_size"]} x {o["length"]} | '
                 f'{s["plain_sft"]["median_s"]:.3f} | {s["url_diag_logs"]["median_s"]:.3f} | '
                 f'{100 * o["url_overhead_paired"]:+.1f}% | '
                 f'{100 * o["url_norms_every_10_overhead_paired"]:+.1f}% / '
                 f'{100 * o["url_norms_every_10_overhead_total"]:+.1f}% | '
                 f'{100 * o["norms_overhead_paired"]:+.1f}% | '
                 f'{100 * o["url_no_global_norms_overhead_paired"]:+.1f}% | '
                 f'{s["url_grad_norms"]["median_s"]:.3f} | {o["grad_norms_ratio_paired"]:.2f}x |')
    out += ['', 'Each side runs 3 consecutive steps in the training loop\'s pattern (the host '
            'fetches step k-1\'s metrics and writes steps.jsonl and the per-example .npz while '
            'step k runs), per-example logs every step (the default is every 10). Overhead and '
            'ratio are medians of per-round ratios (each round runs the sides back to back). '
            '"3 global norms": '
            'the plain step plus the gradient, update and parameter norms that '
            '`decomp.train.step` logs on every steps.jsonl line; "norms every 10th step": the '
            'training loop with `log_every=10`, which runs the step built without them '
            '(`make_train_step(global_norms=False)`) between log lines ("total": summed '
            'times, which weigh the rounds holding a norm step fully).', '']
  if 'breakdown' in r:
    out += ['## Where the time goes', '', '| model | B x n x T | part | s |', '|---|---|---|---|']
    for bd in r['breakdown']:
      for k, v in bd['median_s'].items():
        out.append(f'| {bd["config"]} | {bd["groups"]} x {bd["list_size"]} x {bd["length"]} | '
                   f'{k} | {v:.3f} |')
    out.append('')
  if 'scaling' in r:
    sc = r['scaling']
    out += [f'## Scaling ({sc["config"]}, decomp training step = url + diagnostics)', '',
            '| negatives | list size | step s | gradient only s |', '|---|---|---|---|']
    for row in sc['negatives']:
      out.append(f'| {row["negatives"]} | {row["list_size"]} | {row["step_s"]:.3f} | '
                 f'{row["grad_s"]:.3f} |')
    out += ['', '| T (4 documents) | step s | gradient only s |', '|---|---|---|']
    for row in sc['lengths']:
      out.append(f'| {row["length"]} | {row["step_s"]:.3f} | {row["grad_s"]:.3f} |')
    out += ['', f'Fixed part of a step (step - gradient, median over list sizes: AdamW, global '
            f'norms, dense embedding/LM-head gradient buffers): {sc["fixed_s"]:.3f} s.', '',
            '| fit | exponent (all points) | exponent (upper half) | affine fixed s | '
            'affine per unit ms | affine R^2 |', '|---|---|---|---|---|---|']
    for key, label in (('negatives_fit_step', 'step vs list size'),
                       ('negatives_fit_grad', 'gradient vs list size'),
                       ('length_fit_step', 'step vs T'), ('length_fit_grad', 'gradient vs T')):
      f = sc[key]
      out.append(f'| {label} | {f["exponent"]:.2f} | {_m(f.get("exponent_upper_half"))} | '
                 f'{f["affine_fixed_s"]:.3f} | {1e3 * f["affine_per_unit_s"]:.1f} | '
                 f'{f.get("affine_r2", float("nan")):.3f} |')
    out += ['', 'All points of a sweep are compiled first and timed in rounds (one call of each '
            'point per round).', '']
  # Hand-written notes, the 0.6B-shape sections (hand-written from rerank_06b.py and
  # lora_0p6b.py), then the soak test's section (written by benchmarks/soak.py).
  for name in ('NOTES.md', 'SCALE.md', 'SOAK.md'):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
    if os.path.exists(path):
      with open(path) as f:
        out += [f.read().rstrip(), '']
  return '\n'.join(out)


if __name__ == '__main__':
  path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
      os.path.dirname(os.path.abspath(__file__)), 'results.json')
  with open(path) as f:
    print(markdown(json.load(f)))
