"""A worked decomposition: per-document weight, direction norm and update for SFT, CL and the swaps.

Run ``python -m decomp.demo``. One query with a positive and four negatives (an easy and a hard
positive case, hard and easy negatives) is placed at chosen yes/no logits under a random LM head;
the table shows what each (weight, direction) pair does to every document, and the last lines
check in float64 that the decomposition is the exact gradient of SFT and CL.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import decomp

PAIRS = (("sft", "sft"), ("sft", "cl"), ("cl", "sft"), ("cl", "cl"))

# (description, label, yes logit, no logit): the scores a partly trained reranker might give.
DOCUMENTS = (
    ("positive, half learned", 1, 1.0, 0.2),
    ("hard negative", 0, 1.4, 0.1),
    ("hard negative", 0, 0.6, 0.4),
    ("easy negative", 0, -1.5, 1.5),
    ("easy negative", 0, -2.5, 2.0),
)


def example_readout(hidden_size: int = 16, seed: int = 0):
  """Hidden states realising the chosen logits under random LM-head rows for yes and no."""
  rng = np.random.default_rng(seed)
  rows = rng.normal(size=(2, hidden_size)) / np.sqrt(hidden_size)
  target = np.array([[d[2], d[3]] for d in DOCUMENTS])  # [n, 2]
  # Minimum-norm h with rows @ h = (z_y, z_n), plus a component orthogonal to both rows.
  hidden = np.linalg.lstsq(rows, target.T, rcond=None)[0].T
  free = rng.normal(size=hidden.shape)
  free -= free @ np.linalg.pinv(rows) @ rows
  hidden = (hidden + 0.5 * free)[None]
  labels = np.array([[d[1] for d in DOCUMENTS]])
  logits = hidden @ rows.T
  readout = decomp.Readout(yes=jnp.asarray(logits[..., 0]), no=jnp.asarray(logits[..., 1]),
                           hidden=jnp.asarray(hidden))
  return readout, jnp.asarray(labels), jnp.asarray(rows)


def decomposition_table(readout, labels, rows) -> str:
  diags = {pair: decomp.diagnostics(readout, labels, weight=pair[0], direction=pair[1],
                                    label_rows=rows) for pair in PAIRS}
  names = [f"W_{w.upper()} x D_{d.upper()}" for w, d in PAIRS]
  lines = [f"{'':42s}" + "".join(f"{n:>17s}" for n in names),
           f"{'document':24s}{'z_y':>6s}{'z_n':>6s}{'s_SFT':>6s}" + f"{'W':>9s}{'upd':>8s}" * 4]
  lines.append("-" * len(lines[1]))
  prob = jax.nn.sigmoid(readout.yes - readout.no)
  for i, (name, *_rest) in enumerate(DOCUMENTS):
    line = (f"{name:24s}{float(readout.yes[0, i]):6.2f}{float(readout.no[0, i]):6.2f}"
            f"{float(prob[0, i]):6.3f}")
    for pair in PAIRS:
      line += f"{float(diags[pair]['weight'][0, i]):+9.3f}{float(diags[pair]['update'][0, i]):8.3f}"
    lines.append(line)
  totals = [("total |W|, positive", "pos_weight"), ("total |W|, negatives", "neg_weight"),
            ("total update, positive", "pos_update"), ("total update, negatives", "neg_update")]
  lines.append("-" * len(lines[1]))
  for label, key in totals:
    lines.append(f"{label:42s}" + "".join(f"{float(diags[p][key][0]):17.3f}" for p in PAIRS))
  norms = {d: float(diags[("sft", d)]["direction_norm"][0, 0]) for d in ("sft", "cl")}
  lines.append(f"\n||grad_h f_D||: D_SFT = ||M_y - M_n|| = {norms['sft']:.3f}, "
               f"D_CL = ||M_y|| = {norms['cl']:.3f} (the same for every document)")
  return "\n".join(lines)


def group_size_table(max_negatives: int = 31) -> str:
  """How the weight of a fixed positive and of one fixed negative change with the list size."""
  lines = [f"{'negatives':>9s} {'W+_SFT':>8s} {'W+_CL':>8s} {'W-_SFT':>8s} {'W-_CL':>8s}",
           "(positive at z_y=1, z_n=0; every negative at z_y=0.5, z_n=0)"]
  k = 1
  while k <= max_negatives:
    labels = jnp.array([1] + [0] * k)
    readout = decomp.Readout(yes=jnp.array([1.0] + [0.5] * k), no=jnp.zeros(k + 1))
    w_sft = decomp.weights.sft(readout, labels)
    w_cl = decomp.weights.cl(readout, labels)
    lines.append(f"{k:9d} {float(w_sft[0]):+8.3f} {float(w_cl[0]):+8.3f} {float(w_sft[1]):+8.3f} "
                 f"{float(w_cl[1]):+8.3f}")
    k = 2 * k + 1
  return "\n".join(lines)


def identity_check(seed: int = 0) -> str:
  """Max relative error between URL's gradient and the original losses', in float64."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(seed)
    yes, no = jnp.asarray(rng.normal(size=(8, 5)) * 3), jnp.asarray(rng.normal(size=(8, 5)) * 3)
    labels = jnp.asarray(np.eye(5, dtype=np.int32)[rng.integers(0, 5, 8)])
    out = []
    for name, loss, argnums in (
        ("sft", lambda y, n: decomp.sft_loss(y, n, labels), (0, 1)),
        ("cl", lambda y, n: decomp.cl_loss(y, labels), (0,))):
      g_loss = jax.grad(loss, argnums=argnums)(yes, no)
      g_url = jax.grad(lambda y, n: decomp.url_loss(y, n, labels, weight=name, direction=name),
                       argnums=argnums)(yes, no)
      err = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) for a, b in zip(g_url, g_loss))
      out.append(f"grad url_loss({name!r}, {name!r}) vs grad {name}_loss: max relative error {err:.1e}")
    return "\n".join(out)


def main(argv=None):
  argparse.ArgumentParser(description=__doc__).parse_args(argv)
  readout, labels, rows = example_readout()
  print("Per-document decomposition (W signed: < 0 pushes a score up; upd = |W| * ||grad_h f_D||)\n")
  print(decomposition_table(readout, labels, rows))
  print("\nWeights as the list grows (CL's denominator couples the list; SFT's does not)\n")
  print(group_size_table())
  print()
  print(identity_check())


if __name__ == "__main__":
  main()
