"""The field's objectives as weight x direction: which weight shape wins for an LLM reranker?

The losses the people who train rerankers choose among (sentence-transformers' CrossEncoder,
rax, LLaVE), each as its weight W = dL/ds on the yes-logit s = z_y (decomp.weights):
``listnet``, ``listmle``, ``ranknet``, ``lambdaloss`` (DCG lambdaweights), ``margin_mse``
(against the playground's oracle teacher, ``playground.oracle_teacher``: minus the number of
attributes a document's scene differs in from the query's target) and ``hard_infonce`` (LLaVE,
alpha = 1), each along D_SFT (ranked by P(yes)) and along D_CL (ranked by z_y: the field's own
objective, the weight paired with the direction of the score it reads), beside SFT and CL. Every
contrast is paired against SFT (same seed: same data, same initialisation). Two more arms read
SFT's own score z_y - z_n (``score='sft'``) along D_SFT: ListNet and RankNet on SFT's margin.

Two regimes (docs/calibration.md): ``--regime head`` (default), the LM head on cached frozen
features (``finetune=head cache_features=true``, paired spread ~0.1-0.2 points), and
``--regime lora``, LoRA rank 16 on the frozen pretrained base (lr 1e-3, 100 steps; paired SFT -
CL spread 0.40).

Command::

  nice -n 10 python experiments/field_objectives.py --seeds 5 --out runs/field_objectives_head
  nice -n 10 python experiments/field_objectives.py --regime lora --seeds 2 --out runs/field_objectives_lora
  python figures/publish.py runs/field_objectives_head runs/field_objectives_lora

Expected runtime (2-core CPU): head-only, 16 arms x 5 seeds at ~25 s a run once each seed's
features are encoded (~4 minutes a seed): ~40 minutes; measured 54 minutes for the first 14 arms
and 4 for the two margin arms, on a CPU shared with three other jobs. LoRA: about a minute a run on
an idle CPU (docs/calibration.md), 16 arms x 5 seeds ~40 minutes two at a time; measured 3-9
minutes a run on the shared CPU, so only SFT, CL and the D_CL arms ran, with 2 seeds.

Expected result (measured, docs/findings.md, "The field's objectives as weight x direction"):
head-only, SFT beats every field arm, by 0.48 (RankNet x D_CL) to 2.43 points (ListMLE x D_SFT),
each resolved; ListNet x D_CL equals CL exactly (one positive per list); ListNet and RankNet on
SFT's score z_y - z_n tie SFT: the score a weight reads decides, not its shape. The total |W|
(0.4 to 11 per list) does not rank the losses. LoRA with 2 seeds resolves nothing (3 to 11 seeds
needed for +-1 point). ``figures/field_objectives.py`` draws W against each document's score for
every weight, side by side, and writes the weights' shape (share of |W| on hard negatives and on
the top-scored negative, total |W| per list) read from the runs' logs.
"""

from __future__ import annotations

import sys

from decomp import sweep

# (name, label) of the field's weights; each runs along D_SFT and along D_CL.
FIELD = (("listnet", "ListNet"), ("listmle", "ListMLE"), ("ranknet", "RankNet"),
         ("lambdaloss", "LambdaLoss (DCG)"), ("margin_mse", "MarginMSE"),
         ("hard_infonce", "hard InfoNCE (alpha 1)"))
# D_CL first: a field weight with D_CL is the field's own objective (its loss on z_y).
DIRECTIONS = (("cl", "D_CL"), ("sft", "D_SFT"))
REGIMES = {
    "head": ("finetune=head", "cache_features=true"),
    "lora": ("finetune=lora", "steps=100", "learning_rate=0.001"),
}
# Every arm reads the same data (the oracle teacher is there for all; only MarginMSE reads it) and
# logs its per-document weights for the shape statistics.
COMMON = ("playground.oracle_teacher=true", "example_log_every=10")


# Weights that read SFT's score z_y - z_n instead (score='sft'), along D_SFT: the field's loss
# on SFT's margin. Does reading the margin, rather than the list's shape, make up SFT's edge?
ON_MARGIN = (("listnet", "ListNet"), ("ranknet", "RankNet"))


def arms():
  out = [sweep.Arm("sft", {"weight": "sft", "direction": "sft"}, "SFT"),
         sweep.Arm("cl", {"weight": "cl", "direction": "cl"}, "CL")]
  for direction, d_label in DIRECTIONS:
    for weight, label in FIELD:
      out.append(sweep.Arm(f"{weight}-d_{direction}", {"weight": weight, "direction": direction},
                           f"{label} x {d_label}"))
  for weight, label in ON_MARGIN:
    out.append(sweep.Arm(f"{weight}-margin", {"weight": weight, "direction": "sft",
                                              "weight_kwargs": {"score": "sft"}},
                         f"{label} on z_y - z_n x D_SFT"))
  return out


def contrasts():
  out = [("SFT - CL", "sft", "cl")]
  for direction, d_label in DIRECTIONS:
    for weight, label in FIELD:
      out.append((f"SFT - {label} x {d_label}", "sft", f"{weight}-d_{direction}"))
  for weight, label in ON_MARGIN:
    out.append((f"SFT - {label} on z_y - z_n", "sft", f"{weight}-margin"))
    out.append((f"{label}: on z_y - z_n - on z_y (x D_SFT)", f"{weight}-margin",
                f"{weight}-d_sft"))
  return out


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  regime = "head"
  if "--regime" in argv:
    at = argv.index("--regime")
    regime = argv[at + 1] if at + 1 < len(argv) else ""
    del argv[at:at + 2]
  if regime not in REGIMES:
    raise SystemExit(f"--regime must be one of {sorted(REGIMES)}, got {regime!r}")
  # The regime first: a user's --set comes later and wins.
  return sweep.main(__doc__, f"field_objectives_{regime}", arms(),
                    argv=["--set", *REGIMES[regime], *COMMON, *argv], contrasts=contrasts(),
                    title=f"The field's objectives ({'head-only' if regime == 'head' else 'LoRA'})")


if __name__ == "__main__":
  main()
