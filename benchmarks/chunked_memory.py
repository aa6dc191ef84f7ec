"""Memory and time of the chunked two-pass gradient against list size (not a test).

  python -m benchmarks.chunked_memory [--model decoder|toy] [--sizes 2,4,8,16,32,64]
                                      [--doc-chunk 4] [--repeats 7] [--no-rss]

For each list size ``n`` it compiles the update with ``doc_chunk=0`` (one pass: every
document's activations at once) and with ``doc_chunk=min(c, n)`` (:mod:`decomp.chunked`), reads
XLA's temporary buffers from the compiled program (``memory_analysis().temp_size_in_bytes``:
activations and other intermediates, not the arguments or outputs), measures the peak resident
memory of a process that runs only that step (``--no-rss`` skips it: one subprocess per point),
and times the two alternately (median of ``--repeats`` calls after a warm-up, so both see the
same machine load). Prints markdown tables: the points, the largest list each step fits in a
fixed temp-memory budget (the one-pass step's at 16 documents), and the issue's goals.

Models (InfoNCE's weight and direction, so the whole list is coupled):
- ``decoder`` (default): the training engine's update step (``make_train_step(doc_chunk=...)``:
  surrogate, diagnostics, AdamW with clipping) on a small random 2-layer Qwen2 reranker, one
  query per step, ``--tokens`` tokens per document;
- ``toy``: ``chunked_value_and_grad`` alone on a per-token MLP mean-pooled to ``h`` and read by
  two label rows (per-document activations ``T x width`` dwarf the parameters).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from decomp.chunked import chunked_value_and_grad  # noqa: E402
from decomp.readout import Readout  # noqa: E402


def init_params(features: int, width: int, dim: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  normal = lambda shape, scale: jnp.asarray(scale * rng.standard_normal(shape), jnp.float32)
  return {"w1": normal((features, width), features ** -0.5), "b1": normal((width,), 0.1),
          "w2": normal((width, dim), width ** -0.5), "label_rows": normal((2, dim), 1.0)}


def readout_fn(params, docs):
  """``docs['x']`` ``[B, c, T, F]`` -> Readout ``[B, c]``; every document on its own."""
  act = jnp.tanh(docs["x"] @ params["w1"] + params["b1"])
  hidden = jnp.mean(jnp.tanh(act @ params["w2"]), axis=-2)
  logits = hidden @ params["label_rows"].T
  return Readout(yes=logits[..., 0], no=logits[..., 1], hidden=hidden)


def batch(groups: int, n: int, tokens: int, features: int, seed: int = 1):
  rng = np.random.default_rng(seed)
  docs = {"x": jnp.asarray(rng.standard_normal((groups, n, tokens, features)), jnp.float32)}
  labels = np.zeros((groups, n), np.int32)
  labels[:, 0] = 1
  return docs, jnp.asarray(labels)


def toy_step(n: int, doc_chunk: int, args):
  """``(compiled, call arguments)`` of the toy model's chunked gradient."""
  params = init_params(args.features, args.width, args.dim)
  docs, labels = batch(args.groups, n, args.tokens, args.features)
  step = jax.jit(functools.partial(chunked_value_and_grad, readout_fn, weight="cl",
                                   direction="cl", doc_chunk=doc_chunk))
  return step.lower(params, docs, labels).compile(), (params, docs, labels)


def decoder_step(n: int, doc_chunk: int, args):
  """``(compiled, call arguments)`` of the engine's update step on a small random reranker."""
  from flax import nnx
  from decomp.models import Reranker
  from decomp.models.config import DecoderConfig
  from decomp.models.decoder import Decoder
  from decomp.objectives import OBJECTIVES
  from decomp.train import step as step_lib

  config = DecoderConfig(architecture="qwen2", vocab_size=2048, hidden_size=args.width,
                         intermediate_size=4 * args.width, num_layers=2, num_heads=4,
                         num_kv_heads=2, head_dim=args.width // 4, attention_bias=True)
  model = Reranker(Decoder(config, rngs=nnx.Rngs(0)), (9, 10), rngs=nnx.Rngs(1))
  graphdef, params, frozen = nnx.split(model, nnx.Param, ...)
  tx, schedule = step_lib.make_optimizer(peak=1e-4, steps=100, warmup_steps=0, end_factor=1.0,
                                         weight_decay=0.0, b1=0.9, b2=0.999, clip_norm=1.0)
  step = step_lib.make_train_step(graphdef, tx, schedule, OBJECTIVES["cl"],
                                  doc_chunk=doc_chunk)
  rng = np.random.default_rng(1)
  ids = rng.integers(20, 2048, (args.groups, n, args.tokens)).astype(np.int32)
  labels = np.zeros((args.groups, n), np.int32)
  labels[:, 0] = 1
  data = {"input_ids": jnp.asarray(ids), "attention_mask": jnp.ones(ids.shape, jnp.int32),
          "labels": jnp.asarray(labels), "where": jnp.ones((args.groups, n), bool)}
  call_args = (params, frozen, tx.init(params), jnp.int32(0), data)
  return jax.jit(step).lower(*call_args).compile(), call_args


def measure(n: int, doc_chunk: int, args) -> dict:
  start = time.perf_counter()
  compiled, call_args = (decoder_step if args.model == "decoder" else toy_step)(n, doc_chunk, args)
  compile_s = time.perf_counter() - start
  call = lambda: jax.block_until_ready(compiled(*call_args))
  call()
  return {"temp": compiled.memory_analysis().temp_size_in_bytes, "compile_s": compile_s,
          "call": call}


def _status_kb(field: str) -> int:
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_rss_point(n: int, doc_chunk: int, args) -> dict:
  """In this process: compile and warm the step, reset the kernel's high-water mark, run it
  twice; the peak RSS of those steps (MB) and how far it rose over the RSS before them."""
  point = measure(n, doc_chunk, args)
  with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM (Linux)
    f.write("5")
  before = _status_kb("VmRSS")
  point["call"]()
  point["call"]()
  peak = _status_kb("VmHWM")
  return {"peak_rss_mb": peak / 1024, "rise_mb": (peak - before) / 1024}


def peak_rss(n: int, doc_chunk: int, argv) -> dict:
  """:func:`peak_rss_point` in a fresh process (a process's high-water mark never falls)."""
  out = subprocess.run([sys.executable, "-m", "benchmarks.chunked_memory", *argv,
                        "--point", f"{n},{doc_chunk}"], cwd=ROOT, capture_output=True,
                       text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def time_alternately(calls, repeats: int) -> list[float]:
  times = [[] for _ in calls]
  for _ in range(repeats):
    for i, call in enumerate(calls):
      start = time.perf_counter()
      call()
      times[i].append(time.perf_counter() - start)
  return [statistics.median(t) for t in times]


def _exponent(xs, ys) -> float:
  """Least-squares slope of log(y) on log(x)."""
  return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def _affine(xs, ys) -> tuple[float, float, float]:
  """Least-squares ``y = a + b x``: ``(a, b, R^2)``."""
  b, a = np.polyfit(xs, ys, 1)
  residual = np.asarray(ys) - (a + b * np.asarray(xs))
  return float(a), float(b), float(1 - residual.var() / np.var(ys))


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", choices=("decoder", "toy"), default="decoder")
  parser.add_argument("--sizes", default="2,4,8,16,32,64")
  parser.add_argument("--doc-chunk", type=int, default=4)
  parser.add_argument("--groups", type=int, default=None, help="default: 1 (decoder), 2 (toy)")
  parser.add_argument("--tokens", type=int, default=64)
  parser.add_argument("--features", type=int, default=16)
  parser.add_argument("--width", type=int, default=None, help="default: 128 (decoder), 256 (toy)")
  parser.add_argument("--dim", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--budget-size", type=int, default=16,
                      help="the temp-memory budget is the one-pass step's at this list size")
  parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
  parser.add_argument("--point", default=None, help=argparse.SUPPRESS)  # n,doc_chunk: RSS only
  args = parser.parse_args(argv)
  decoder = args.model == "decoder"
  args.groups = args.groups or (1 if decoder else 2)
  args.width = args.width or (128 if decoder else 256)
  if args.point:
    n, chunk = (int(x) for x in args.point.split(","))
    print(json.dumps(peak_rss_point(n, chunk, args)))
    return 0
  sizes = [int(s) for s in args.sizes.split(",")]
  child_argv = [a for a in argv if a != "--no-rss"]

  rows = []
  for n in sizes:
    chunk = min(args.doc_chunk, n)
    one, two = measure(n, 0, args), measure(n, chunk, args)
    one_s, two_s = time_alternately([one["call"], two["call"]], args.repeats)
    if not args.no_rss:
      one["rss"], two["rss"] = peak_rss(n, 0, child_argv), peak_rss(n, chunk, child_argv)
    rows.append((n, chunk, one, two, one_s, two_s))
    print(f"  n={n}: temp {one['temp'] / 2**20:.2f} / {two['temp'] / 2**20:.2f} MB, "
          f"{1e3 * one_s:.1f} / {1e3 * two_s:.1f} ms", file=sys.stderr, flush=True)

  mb = lambda b: b / 2 ** 20
  what = ("the engine's update step (make_train_step: surrogate, diagnostics, AdamW) on a "
          f"random 2-layer Qwen2 reranker (hidden {args.width}, vocab 2048)" if decoder else
          f"chunked_value_and_grad on the toy per-token MLP (width {args.width})")
  print(f"Machine: {platform.processor() or platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} usable core(s) of {os.cpu_count()}, jax "
        f"{jax.__version__} ({jax.default_backend()}), load {os.getloadavg()}; {what}; "
        f"B={args.groups}, T={args.tokens}, float32, weight=direction=cl.\n")
  rss = lambda p: f"{p['rss']['peak_rss_mb']:.0f} (+{p['rss']['rise_mb']:.0f})" if "rss" in p \
      else "-"
  print("| n | doc_chunk | temp MB one-pass | temp MB chunked | peak RSS MB one-pass (rise) | "
        "peak RSS MB chunked (rise) | ms one-pass | ms chunked | time chunked / one-pass | "
        "ms/doc chunked |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for n, chunk, one, two, one_s, two_s in rows:
    print(f"| {n} | {chunk} | {mb(one['temp']):.2f} | {mb(two['temp']):.2f} | {rss(one)} | "
          f"{rss(two)} | {1e3 * one_s:.1f} | {1e3 * two_s:.1f} | {two_s / one_s:.2f}x | "
          f"{1e3 * two_s / n:.2f} |")

  by_n = {r[0]: r for r in rows}
  if args.budget_size in by_n:
    budget = by_n[args.budget_size][2]["temp"]
    fits = lambda i: [r[0] for r in rows if r[i]["temp"] <= budget]
    one_fits, two_fits = fits(2), fits(3)
    print(f"\nBudget: {mb(budget):.2f} MB of XLA temp buffers (the one-pass step's at "
          f"{args.budget_size} documents). Largest list that fits: one-pass "
          f"{max(one_fits) if one_fits else 0}, doc_chunk={args.doc_chunk} "
          f"{max(two_fits) if two_fits else 0}"
          f"{' (the largest measured)' if two_fits and max(two_fits) == max(sizes) else ''}.")
  small, large = min(sizes), max(sizes)
  if args.doc_chunk in by_n and large in by_n:
    base, top = by_n[args.doc_chunk], by_n[large]
    temp_ratio = top[3]["temp"] / base[3]["temp"]
    lines = [f"- temp memory, doc_chunk={args.doc_chunk}, {large} vs {args.doc_chunk} documents: "
             f"{temp_ratio:.2f}x (goal <= 1.3x): {'met' if temp_ratio <= 1.3 else 'not met'}"]
    if "rss" in top[3]:
      rss_ratio = top[3]["rss"]["peak_rss_mb"] / base[3]["rss"]["peak_rss_mb"]
      rise_ratio = top[3]["rss"]["rise_mb"] / max(base[3]["rss"]["rise_mb"], 1e-9)
      lines.append(f"- peak RSS, the same: {rss_ratio:.2f}x (goal <= 1.3x): "
                   f"{'met' if rss_ratio <= 1.3 else 'not met'}; its rise during the steps "
                   f"{rise_ratio:.2f}x")
    ratios = [r[5] / r[4] for r in rows if r[0] > args.doc_chunk]
    if ratios:
      lines.append(f"- time chunked / one-pass over n > {args.doc_chunk}: "
                   f"{min(ratios):.2f}-{max(ratios):.2f}x (goal <= 1.4x): "
                   f"{'met' if max(ratios) <= 1.4 else 'not met'}")
    upper = [r for r in rows if r[0] >= 8]
    if len(upper) >= 2:
      lines.append(f"- chunked time vs documents, log-log slope over n = {upper[0][0]}..{large}: "
                   f"{_exponent([r[0] for r in upper], [r[5] for r in upper]):.2f} (1 = linear); "
                   f"one-pass {_exponent([r[0] for r in upper], [r[4] for r in upper]):.2f}")
      fixed, per_doc, r2 = _affine([r[0] for r in upper], [r[5] for r in upper])
      lines.append(f"- chunked time = fixed + per document over n = {upper[0][0]}..{large}: "
                   f"{1e3 * fixed:.1f} ms + {1e3 * per_doc:.2f} ms x n, R^2 {r2:.3f} (a fixed "
                   "part, the optimiser and logging, makes the log-log slope < 1)")
    print("\nGoals:\n" + "\n".join(lines))
  del small
  return 0


if __name__ == "__main__":
  sys.exit(main())
