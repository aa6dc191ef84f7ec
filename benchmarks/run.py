"""decomp vs a transformers/PyTorch reference: throughput, memory, compile time, the cost of the
analysis, and scaling. Writes benchmarks/results.json and benchmarks/RESULTS.md.

  python -m benchmarks.run            # full (~6-7 minutes on 2 busy cores)
  python -m benchmarks.run --quick    # the 10M model only, fewer repeats (~2 minutes); writes
                                      # to a temporary directory unless --out is given
  python -m benchmarks.run --sections compare,overhead   # a subset

Sections:
  compare   torch_full (2 and 1 threads) / torch_keep1 (1 thread) / jax_full / jax_readout at
            several model and list sizes, alternating in one process (medians, examples/s,
            paired ratios, % of matmul peak).
  memory    peak resident memory of one step, each side in its own subprocess
            (benchmarks/memory.py), plus XLA's own buffer analysis.
  overhead  plain SFT step vs decomp's training step with the url surrogate, diagnostics and
            per-example logging written every step; the plain step plus the three global norms
            the engine logs (attribution); exact per-example gradient norms.
  breakdown forward / forward+backward / full update of each side (where the time goes).
  scaling   step time vs number of negatives (1..31) and vs sequence length; fitted exponents.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from benchmarks import common as C  # noqa: E402
from benchmarks import report  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def log(msg: str) -> None:
  print(f'[{time.strftime("%H:%M:%S")}] {msg}', flush=True)


def parity(ck, batch) -> dict:
  """Loss and gradient norm of both sides on the same batch before anything is timed."""
  t_loss, t_norm = C.torch_loss_and_grad_norm(ck.torch_model, batch)
  j_loss, j_norm = C.jax_loss_and_grad_norm(ck.path, batch, full_vocab=True)
  r_loss, r_norm = C.jax_loss_and_grad_norm(ck.path, batch, full_vocab=False)
  out = {'torch_loss': t_loss, 'jax_full_loss': j_loss, 'jax_readout_loss': r_loss,
         'torch_grad_norm': t_norm, 'jax_full_grad_norm': j_norm, 'jax_readout_grad_norm': r_norm}
  rel = max(abs(j_loss - t_loss) / abs(t_loss), abs(r_loss - t_loss) / abs(t_loss),
            abs(j_norm - t_norm) / t_norm, abs(r_norm - t_norm) / t_norm)
  out['max_rel_diff'] = rel
  if rel > 1e-3:
    raise AssertionError(f'decomp and torch disagree before timing: {out}')
  return out


def compare(name: str, groups: int, list_size: int, length: int, *, warmup: int, repeats: int,
            peak_gflops: float) -> dict:
  log(f'compare {name} B={groups} n={list_size} T={length}')
  ck = C.make_checkpoint(name)
  batch = C.make_batch(groups, list_size, length, C.CONFIGS[name]['vocab_size'])
  check = parity(ck, batch)
  jax_full = C.make_jax_plain_step(ck.path, batch, full_vocab=True)
  jax_readout = C.make_jax_plain_step(ck.path, batch, full_vocab=False)
  steps = {
      'torch_full': C.make_torch_step(ck.torch_model, batch, keep_last=False, threads=2),
      'torch_full_1t': C.make_torch_step(ck.torch_model, batch, keep_last=False, threads=1),
      'torch_keep1_1t': C.make_torch_step(ck.torch_model, batch, keep_last=True, threads=1),
      'jax_full': lambda: C.block(jax_full.run()),
      'jax_readout': lambda: C.block(jax_readout.run()),
  }
  timing = C.time_alternating(steps, warmup=warmup, repeats=repeats)
  sequences = groups * list_size
  flops = {'torch_full': C.step_flops(name, sequences, length, full_head=True),
           'torch_full_1t': C.step_flops(name, sequences, length, full_head=True),
           'torch_keep1_1t': C.step_flops(name, sequences, length, full_head=False),
           'jax_full': C.step_flops(name, sequences, length, full_head=True),
           'jax_readout': C.step_flops(name, sequences, length, full_head=False)}
  sides = {}
  for side, t in timing.items():
    sides[side] = {**t, 'examples_per_s': sequences / t['median_s'], 'gflop': flops[side] / 1e9,
                   'gflops': flops[side] / t['median_s'] / 1e9,
                   'peak_fraction': flops[side] / t['median_s'] / 1e9 / peak_gflops}
  for side, step in (('jax_full', jax_full), ('jax_readout', jax_readout)):
    sides[side].update(compile_s=step.compile_s, xla_memory_mb=step.memory,
                       xla_gflop=(step.flops or 0) / 1e9)
  med = {k: v['median_s'] for k, v in sides.items()}
  best_full = min(med['torch_full'], med['torch_full_1t'])
  best_keep1 = med['torch_keep1_1t']
  pair = lambda a, b: C.paired_ratio(timing, a, b)
  paired = {'full_vs_torch_full': pair('torch_full', 'jax_full'),
            'full_vs_torch_full_1t': pair('torch_full_1t', 'jax_full'),
            'readout_vs_torch_full': pair('torch_full', 'jax_readout'),
            'readout_vs_torch_full_1t': pair('torch_full_1t', 'jax_readout'),
            'readout_vs_torch_keep1_1t': pair('torch_keep1_1t', 'jax_readout')}
  ratios = {'full_vs_torch_full': med['torch_full'] / med['jax_full'],
            'full_vs_best_torch_full': best_full / med['jax_full'],
            'readout_vs_torch_full': med['torch_full'] / med['jax_readout'],
            'readout_vs_best_torch_full': best_full / med['jax_readout'],
            'readout_vs_best_torch_keep1': best_keep1 / med['jax_readout']}
  ck.tmp.cleanup()
  result = {'config': name, 'params': C.param_count(name), 'groups': groups,
            'list_size': list_size, 'length': length, 'sequences': sequences, 'parity': check,
            'sides': sides, 'ratios': ratios, 'paired_ratios': paired,
            'loadavg': list(os.getloadavg())}
  log('  ' + ', '.join(f'{k} {v:.3f}s' for k, v in med.items()) +
      f' | full x{ratios["full_vs_best_torch_full"]:.2f} readout '
      f'x{ratios["readout_vs_best_torch_full"]:.2f} (vs the faster torch thread setting)')
  return result


def memory(name: str, groups: int, list_size: int, length: int) -> dict:
  """Peak RSS of one step of each side, each in a fresh subprocess (benchmarks/memory.py)."""
  log(f'memory {name} B={groups} n={list_size} T={length}')
  ck = C.make_checkpoint(name)
  out = {}
  try:
    for side in ('torch_full', 'torch_keep1', 'jax_full', 'jax_readout'):
      cmd = [sys.executable, os.path.join(HERE, 'memory.py'), '--side', side, '--path', ck.path,
             '--groups', str(groups), '--list-size', str(list_size), '--length', str(length),
             '--config', name]
      proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
      if proc.returncode:
        raise RuntimeError(f'{" ".join(cmd)} failed:\n{proc.stderr[-3000:]}')
      out[side] = json.loads(proc.stdout.strip().splitlines()[-1])
      log(f'  {side}: training {out[side]["train_mb"]:.0f} MB, peak RSS '
          f'{out[side]["peak_rss_mb"]:.0f} MB')
  finally:
    ck.tmp.cleanup()
  return {'config': name, 'groups': groups, 'list_size': list_size, 'length': length,
          'sides': out}


def overhead(name: str, groups: int, list_size: int, length: int, *, warmup: int,
             repeats: int, consecutive: int = 3) -> dict:
  """Plain SFT step vs the url step with diagnostics + per-example logs, vs exact per-example
  gradient norms. Each side runs ``consecutive`` steps in a training-loop pattern (the host
  reads step k-1's metrics and writes its logs while step k runs), alternating sides."""
  import jax
  from decomp.train import logs as logs_lib

  log(f'overhead {name} B={groups} n={list_size} T={length}')
  ck = C.make_checkpoint(name)
  batch = C.make_batch(groups, list_size, length, C.CONFIGS[name]['vocab_size'])
  plain = C.make_jax_plain_step(ck.path, batch, full_vocab=False)
  plain_norms = C.make_jax_plain_step(ck.path, batch, full_vocab=False, global_norms=True)
  url = C.make_jax_url_step(ck.path, batch)
  # The training loop computes the update and parameter norms only on the steps it logs:
  # here steps.jsonl every 10th step (the per-example log and its scalars still every step).
  url_norms_10 = C.make_jax_url_step(ck.path, batch, norms_every=10)
  url_no_norms = C.make_jax_url_step_without_norms(ck.path, batch)
  norms = C.make_jax_url_step(ck.path, batch, example_grad_norms=True)
  workdir = tempfile.TemporaryDirectory(prefix='decomp-bench-logs-')
  example_log = logs_lib.ExampleLogger(workdir.name)
  step_log = logs_lib.JsonLinesLogger(os.path.join(workdir.name, 'steps.jsonl'))
  counter = [0]
  doc_ids = np.asarray([f'd{i}' for i in range(groups * list_size)])

  def write_logs(metrics):
    scalars, per_doc = jax.device_get((metrics['scalars'], metrics['per_doc']))
    counter[0] += 1
    step_log.log({'step': counter[0], **{k: float(v) for k, v in scalars.items()}})
    cols = {'step': np.full(doc_ids.size, counter[0]), 'doc_id': doc_ids,
            **{k: np.asarray(v, np.float32).reshape(-1) for k, v in per_doc.items()}}
    example_log.write(counter[0], cols)

  def loop(step, finish):
    def run():
      pending = None
      for _ in range(consecutive):
        metrics = step.run()
        if pending is not None:
          finish(pending)
        pending = metrics
      finish(pending)
    return run

  plain_finish = lambda m: float(m['loss'])  # a plain loop logs its loss
  steps = {'plain_sft': loop(plain, plain_finish),
           'plain_sft_norms': loop(plain_norms, plain_finish),
           'url_diag_logs': loop(url, write_logs),
           'url_diag_logs_norms_every_10': loop(url_norms_10, write_logs),
           'url_diag_logs_no_global_norms': loop(url_no_norms, write_logs),
           'url_grad_norms': loop(norms, write_logs)}
  timing = C.time_alternating(steps, warmup=warmup, repeats=repeats)
  for t in timing.values():
    t['median_s'] /= consecutive
    t['times_s'] = [x / consecutive for x in t['times_s']]
    t['first_s'] /= consecutive
  base = timing['plain_sft']['median_s']
  result = {'config': name, 'groups': groups, 'list_size': list_size, 'length': length,
            'sides': timing,
            # Rounds run the sides back to back: the median of per-round ratios cancels most of
            # the load that other processes put on the machine between rounds.
            'url_overhead_paired': C.paired_ratio(timing, 'url_diag_logs', 'plain_sft') - 1,
            'url_norms_every_10_overhead_paired':
                C.paired_ratio(timing, 'url_diag_logs_norms_every_10', 'plain_sft') - 1,
            # Norm steps fall in some rounds only: the ratio of summed times weighs them fully.
            'url_norms_every_10_overhead_total':
                sum(timing['url_diag_logs_norms_every_10']['times_s']) /
                sum(timing['plain_sft']['times_s']) - 1,
            'norms_overhead_paired': C.paired_ratio(timing, 'plain_sft_norms', 'plain_sft') - 1,
            'url_no_global_norms_overhead_paired':
                C.paired_ratio(timing, 'url_diag_logs_no_global_norms', 'plain_sft') - 1,
            'url_vs_plain_norms_paired':
                C.paired_ratio(timing, 'url_diag_logs', 'plain_sft_norms') - 1,
            'grad_norms_ratio_paired': C.paired_ratio(timing, 'url_grad_norms', 'plain_sft'),
            'compile_s': {'plain_sft': plain.compile_s, 'plain_sft_norms': plain_norms.compile_s,
                          'url_diag_logs': url.compile_s,
                          'url_diag_logs_norms_every_10': url_norms_10.compile_s,
                          'url_diag_logs_no_global_norms': url_no_norms.compile_s,
                          'url_grad_norms': norms.compile_s},
            'url_overhead': timing['url_diag_logs']['median_s'] / base - 1,
            'grad_norms_ratio': timing['url_grad_norms']['median_s'] / base,
            'loadavg': list(os.getloadavg())}
  step_log.close()
  workdir.cleanup()
  ck.tmp.cleanup()
  log(f'  plain {base:.3f}s, url+diag+logs {timing["url_diag_logs"]["median_s"]:.3f}s '
      f'({100 * result["url_overhead"]:+.1f}%, paired {100 * result["url_overhead_paired"]:+.1f}%'
      f'; norms every 10th step: paired '
      f'{100 * result["url_norms_every_10_overhead_paired"]:+.1f}%, total '
      f'{100 * result["url_norms_every_10_overhead_total"]:+.1f}%'
      f'; global norms alone {100 * result["norms_overhead_paired"]:+.1f}%; url + logs without '
      f'them {100 * result["url_no_global_norms_overhead_paired"]:+.1f}%), grad norms '
      f'x{result["grad_norms_ratio"]:.2f} (paired '
      f'x{result["grad_norms_ratio_paired"]:.2f})')
  return result


def breakdown(name: str, groups: int, list_size: int, length: int, *, repeats: int) -> dict:
  """Forward only, forward+backward, and the full update of torch_full and jax_full/readout."""
  import jax
  import torch
  from flax import nnx
  from decomp.losses import sft_loss
  from decomp.models import Reranker

  log(f'breakdown {name} B={groups} n={list_size} T={length}')
  ck = C.make_checkpoint(name)
  batch = C.make_batch(groups, list_size, length, C.CONFIGS[name]['vocab_size'])
  b, n, t = groups, list_size, length
  model = Reranker(C.load_decoder(ck.path), (C.YES_ID, C.NO_ID), rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  dbatch = jax.device_put({k: batch[k] for k in ('input_ids', 'attention_mask', 'labels')})

  def loss_fn(params, batch, full_vocab):
    m = nnx.merge(graphdef, params)
    ids = batch['input_ids'].reshape(b * n, t)
    mask = batch['attention_mask'].reshape(b * n, t)
    if full_vocab:
      last = m.decoder(ids, mask)[:, -1, :]
      yes, no = last[:, C.YES_ID], last[:, C.NO_ID]
    else:
      out = m.readout(ids, mask)
      yes, no = out.yes, out.no
    return sft_loss(yes.reshape(b, n), no.reshape(b, n), batch['labels'])

  steps = {}
  for full in (True, False):
    tag = 'jax_full' if full else 'jax_readout'
    fwd = jax.jit(lambda p, x, full=full: loss_fn(p, x, full))
    grad = jax.jit(lambda p, x, full=full: jax.value_and_grad(loss_fn)(p, x, full))
    steps[f'{tag}:forward'] = lambda f=fwd: C.block(f(params, dbatch))
    steps[f'{tag}:forward+backward'] = lambda g=grad: C.block(g(params, dbatch))
    upd = C.make_jax_plain_step(ck.path, batch, full_vocab=full)
    steps[f'{tag}:update'] = lambda u=upd: C.block(u.run())

  tm = ck.torch_model
  ids = torch.from_numpy(batch['input_ids'].reshape(b * n, t).astype(np.int64))
  mask = torch.from_numpy(batch['attention_mask'].reshape(b * n, t).astype(np.int64))
  labels = torch.from_numpy(batch['labels'])

  def torch_loss():
    last = tm(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, -1, :]
    return C.torch_sft_loss(last[:, C.YES_ID].reshape(b, n), last[:, C.NO_ID].reshape(b, n),
                            labels)

  def torch_forward():
    with torch.no_grad():
      return float(torch_loss())

  def torch_fwd_bwd():
    tm.zero_grad(set_to_none=True)
    loss = torch_loss()
    loss.backward()
    return float(loss.detach())

  steps['torch_full:forward'] = torch_forward
  steps['torch_full:forward+backward'] = torch_fwd_bwd
  steps['torch_full:update'] = C.make_torch_step(tm, batch, keep_last=False)
  timing = C.time_alternating(steps, warmup=1, repeats=repeats)
  ck.tmp.cleanup()
  out = {k: v['median_s'] for k, v in timing.items()}
  log('  ' + ', '.join(f'{k} {v:.3f}' for k, v in out.items()))
  return {'config': name, 'groups': groups, 'list_size': list_size, 'length': length,
          'median_s': out, 'loadavg': list(os.getloadavg())}


def _fit(xs, ys) -> dict:
  """Power-law exponent of ys ~ xs (log-log least squares), over all points and over the upper
  half of xs, and an affine fit ``t = a + b x`` with its R^2."""
  xs, ys = np.asarray(xs, float), np.asarray(ys, float)
  slope = np.polyfit(np.log(xs), np.log(ys), 1)[0]
  lin_b, lin_a = np.polyfit(xs, ys, 1)
  residual = ys - (lin_a + lin_b * xs)
  r2 = 1 - float(np.sum(residual ** 2) / np.sum((ys - ys.mean()) ** 2))
  out = {'exponent': float(slope), 'affine_fixed_s': float(lin_a),
         'affine_per_unit_s': float(lin_b), 'affine_r2': r2}
  half = xs >= np.median(xs)
  if half.sum() >= 2:
    out['exponent_upper_half'] = float(np.polyfit(np.log(xs[half]), np.log(ys[half]), 1)[0])
  return out


def scaling(name: str, *, negatives, lengths, list_size_for_length: int, warmup: int,
            repeats: int) -> dict:
  """Step time of decomp's training step (url + diagnostics) and of its gradient alone vs the
  number of negatives (one group, T=128) and vs sequence length (one group of
  ``list_size_for_length`` documents). All points of a sweep are compiled first and then timed
  in rounds (one call of every point per round), so a change of machine load between points
  does not bend the curve."""
  log(f'scaling {name}: negatives {list(negatives)}, lengths {list(lengths)}')
  ck = C.make_checkpoint(name)
  vocab = C.CONFIGS[name]['vocab_size']

  def sweep(points):
    steps = {}
    for key, (list_size, length) in points.items():
      batch = C.make_batch(1, list_size, length, vocab)
      step = C.make_jax_url_step(ck.path, batch)
      grad_only = C.make_jax_grad_only(ck.path, batch)
      steps[(key, 'step')] = lambda s=step: C.block(s.run())
      steps[(key, 'grad')] = lambda g=grad_only: C.block(g())
    timing = C.time_alternating(steps, warmup=warmup, repeats=repeats)
    return {key: (timing[(key, 'step')]['median_s'], timing[(key, 'grad')]['median_s'])
            for key in points}

  by_negatives = sweep({k: (k + 1, 128) for k in negatives})
  neg_rows = [{'negatives': k, 'list_size': k + 1, 'step_s': s, 'grad_s': g}
              for k, (s, g) in by_negatives.items()]
  for row in neg_rows:
    log(f'  negatives {row["negatives"]}: step {row["step_s"]:.3f}s, gradient '
        f'{row["grad_s"]:.3f}s')
  by_length = sweep({t: (list_size_for_length, t) for t in lengths})
  len_rows = [{'length': t, 'step_s': s, 'grad_s': g} for t, (s, g) in by_length.items()]
  for row in len_rows:
    log(f'  length {row["length"]}: step {row["step_s"]:.3f}s, gradient {row["grad_s"]:.3f}s')
  ck.tmp.cleanup()
  docs = [r['list_size'] for r in neg_rows]
  return {
      'config': name,
      'negatives': neg_rows,
      'negatives_fit_step': _fit(docs, [r['step_s'] for r in neg_rows]),
      'negatives_fit_grad': _fit(docs, [r['grad_s'] for r in neg_rows]),
      'fixed_s': float(np.median([r['step_s'] - r['grad_s'] for r in neg_rows])),
      'lengths': len_rows,
      'length_fit_step': _fit(lengths, [r['step_s'] for r in len_rows]),
      'length_fit_grad': _fit(lengths, [r['grad_s'] for r in len_rows]),
      'loadavg': list(os.getloadavg()),
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help='10M model only, fewer repeats')
  parser.add_argument('--out', default=None,
                      help='JSON results (default benchmarks/results.json; with --quick a '
                      'temporary file, so a quick run never replaces the full results)')
  parser.add_argument('--markdown', default=None, help='Markdown tables (default beside --out)')
  parser.add_argument('--sections', default='compare,memory,overhead,breakdown,scaling')
  args = parser.parse_args(argv)
  if args.out is None:
    args.out = (os.path.join(tempfile.mkdtemp(prefix='decomp-bench-'), 'results.json')
                if args.quick else os.path.join(HERE, 'results.json'))
  if args.markdown is None:
    args.markdown = os.path.join(os.path.dirname(args.out), 'RESULTS.md')

  import torch
  torch.set_num_threads(2)
  torch.set_num_interop_threads(1)
  sections = set(args.sections.split(','))
  quick = args.quick
  warmup, repeats = (1, 3) if quick else (1, 6)
  started = time.perf_counter()
  results = {'mode': 'quick' if quick else 'full', 'machine': C.machine_info()}
  log(f'machine: {results["machine"]}')
  results['matmul_peak'] = C.matmul_peak_gflops()
  peak = max(results['matmul_peak'].values())
  log(f'matmul peak (2048^2 fp32): {results["matmul_peak"]}')

  # The second list size regroups the same 16 sequences (8 documents per query): step cost
  # follows the number of sequences, which the scaling section varies.
  shapes = [('10m', 4, 4, 128)] if quick else [('10m', 4, 4, 128), ('10m', 2, 8, 128),
                                               ('31m', 4, 4, 128)]
  if 'compare' in sections:
    results['compare'] = [compare(*s, warmup=warmup, repeats=repeats, peak_gflops=peak)
                          for s in shapes]
  if 'memory' in sections:
    mem_shapes = shapes[:1] if quick else [shapes[0], shapes[2]]
    results['memory'] = [memory(*s) for s in mem_shapes]
  if 'overhead' in sections:
    results['overhead'] = [overhead('10m', 4, 4, 128, warmup=warmup, repeats=2 * repeats)]
  if 'breakdown' in sections:
    results['breakdown'] = [breakdown('10m', 4, 4, 128, repeats=repeats)]
  if 'scaling' in sections:
    negatives = (1, 3, 7, 15) if quick else (1, 3, 7, 15, 31)
    lengths = (32, 64, 128, 256) if quick else (32, 64, 128, 256, 512)
    results['scaling'] = scaling('10m', negatives=negatives, lengths=lengths,
                                 list_size_for_length=4, warmup=1, repeats=repeats)
  results['machine']['loadavg_end'] = [round(x, 2) for x in os.getloadavg()]
  results['total_s'] = time.perf_counter() - started
  with open(args.out, 'w') as f:
    json.dump(results, f, indent=1)
  text = report.markdown(results)
  with open(args.markdown, 'w') as f:
    f.write(text)
  print(text)
  log(f'done in {results["total_s"]:.0f}s; wrote {args.out} and {args.markdown}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
