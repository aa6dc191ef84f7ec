"""Memory and time of the chunked two-pass gradient against list size (a toy model, not a test).

  python -m benchmarks.chunked_memory [--sizes 2,4,8,16,32,64] [--doc-chunk 4] [--repeats 15]

For each list size ``n`` it compiles ``decomp.chunked.chunked_value_and_grad`` (InfoNCE's weight
and direction, so the whole list is coupled) with ``doc_chunk=0`` (one pass: every document's
activations at once) and with ``doc_chunk=min(c, n)``, reads XLA's temporary buffers from the
compiled program (``memory_analysis().temp_size_in_bytes``: activations and other intermediates,
not the arguments or outputs), and times the two alternately (median of ``--repeats`` calls after
a warm-up, so both see the same machine load). Prints a markdown table.

The model is a per-token MLP over ``T`` tokens of every document, mean-pooled to ``h``, read by
two label rows: per-document activations (``T x width``) dwarf the parameters, as in a reranker.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
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


def measure(n: int, doc_chunk: int, args) -> dict:
  params = init_params(args.features, args.width, args.dim)
  docs, labels = batch(args.groups, n, args.tokens, args.features)
  step = jax.jit(functools.partial(chunked_value_and_grad, readout_fn, weight="cl",
                                   direction="cl", doc_chunk=doc_chunk))
  start = time.perf_counter()
  compiled = step.lower(params, docs, labels).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(compiled(params, docs, labels))
  return {"temp": compiled.memory_analysis().temp_size_in_bytes, "compile_s": compile_s,
          "call": lambda: jax.block_until_ready(compiled(params, docs, labels))}


def time_alternately(calls, repeats: int) -> list[float]:
  times = [[] for _ in calls]
  for _ in range(repeats):
    for i, call in enumerate(calls):
      start = time.perf_counter()
      call()
      times[i].append(time.perf_counter() - start)
  return [statistics.median(t) for t in times]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="2,4,8,16,32,64")
  parser.add_argument("--doc-chunk", type=int, default=4)
  parser.add_argument("--groups", type=int, default=2)
  parser.add_argument("--tokens", type=int, default=64)
  parser.add_argument("--features", type=int, default=16)
  parser.add_argument("--width", type=int, default=256)
  parser.add_argument("--dim", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=15)
  args = parser.parse_args(argv)
  sizes = [int(s) for s in args.sizes.split(",")]

  rows, reference = [], None
  for n in sizes:
    chunk = min(args.doc_chunk, n)
    one, two = measure(n, 0, args), measure(n, chunk, args)
    one_s, two_s = time_alternately([one["call"], two["call"]], args.repeats)
    if n == args.doc_chunk:
      reference = one["temp"]
    rows.append((n, chunk, one, two, one_s, two_s))

  mb = lambda b: b / 2 ** 20
  print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__} ({jax.default_backend()}), load {os.getloadavg()}; "
        f"B={args.groups}, T={args.tokens}, width={args.width}, float32, weight=direction=cl.\n")
  ref_note = (f" / one-pass n={args.doc_chunk}" if reference else "")
  print(f"| n | doc_chunk | temp MB one-pass | temp MB chunked | chunked{ref_note} | "
        "ms one-pass | ms chunked | time chunked / one-pass | ms/doc chunked |")
  print("|---|---|---|---|---|---|---|---|---|")
  for n, chunk, one, two, one_s, two_s in rows:
    ratio = f"{two['temp'] / reference:.2f}x" if reference else "-"
    print(f"| {n} | {chunk} | {mb(one['temp']):.2f} | {mb(two['temp']):.2f} | {ratio} | "
          f"{1e3 * one_s:.1f} | {1e3 * two_s:.1f} | {two_s / one_s:.2f}x | "
          f"{1e3 * two_s / n:.2f} |")
  budget = max(two["temp"] for *_, two, _, _ in rows)
  fits = [n for n, _, one, *_ in rows if one["temp"] <= budget]
  print(f"\nIn the chunked steps' largest temp budget ({mb(budget):.2f} MB) the one-pass step fits "
        f"lists of up to {max(fits) if fits else 0} documents; the chunked one fits "
        f"{max(sizes)} (any length: its temp memory does not grow with n).")
  return 0


if __name__ == "__main__":
  sys.exit(main())
