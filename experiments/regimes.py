"""The probe's two pure objectives (SFT, CL) across training regimes: pretrained base vs random
initialisation, full fine-tuning vs LoRA vs the LM head alone (a linear probe of the frozen
network's answer-position features: how much of the ranking do they already hold?).

The paper's claim is about *pretrained* LLM rerankers. In a quick from-scratch test (a 2-layer
MLP cross-encoder on synthetic vectors, 1 positive + 4 negatives, Adam, 5 seeds) CL beat SFT by
far: test MRR 0.82 vs 0.30 after 400 steps, 0.90 vs 0.72 after 2000, the opposite of the paper.
This sweep asks where the ordering flips: each run logs validation NDCG over training (the
``val_ndcg`` figure shows the ordering at every step) and the per-example weights, which show
why: from random initialisation every score starts near the prior, where W_SFT and W_CL differ
most in how they split the push between the positive and the negatives.

Command::

  python experiments/regimes.py [--seeds 3] [--quick] [--out runs/regimes]

Expected runtime (2-core CPU): 12 arms x 3 seeds, ~2 minutes per run (head-only runs ~1), two at
a time: about 30 minutes (~26 with the probe's two pure arms linked by --reuse runs/probe).

Expected result (measured, docs/findings.md): CL ahead wherever the network's features train (by 1.3-5.8
points, none resolved); SFT ahead only with the LM head alone on the frozen base (+1.89 ± 0.38,
paired std 0.15); a frozen random network with LoRA beats every pretrained arm by ~24 points.
"""

from __future__ import annotations

import sys

from decomp import sweep

ARMS = [
    sweep.Arm(f"{init}-{finetune}-{objective}",
              {"model": "playground" if init == "pretrained" else "random", "finetune": finetune,
               "weight": objective, "direction": objective},
              f"{init}, {finetune}, {objective.upper()}")
    for init in ("pretrained", "random") for finetune in ("lora", "full", "head")
    for objective in ("sft", "cl")
]

CONTRASTS = [(f"SFT - CL ({init}, {finetune})", f"{init}-{finetune}-sft", f"{init}-{finetune}-cl")
             for init in ("pretrained", "random") for finetune in ("lora", "full", "head")]
# Does the regime move the SFT - CL gap? (difference of gaps, paired over seeds)
CONTRASTS += [
    (f"gap change, pretrained - random ({finetune})",
     {f"pretrained-{finetune}-sft": 1, f"pretrained-{finetune}-cl": -1,
      f"random-{finetune}-sft": -1, f"random-{finetune}-cl": 1})
    for finetune in ("lora", "full")]
CONTRASTS += [
    (f"gap change, LoRA - full ({init})",
     {f"{init}-lora-sft": 1, f"{init}-lora-cl": -1, f"{init}-full-sft": -1, f"{init}-full-cl": 1})
    for init in ("pretrained", "random")]

# Does the regime move the rerankers themselves? (mean of SFT and CL, paired over seeds)
CONTRASTS += [
    (f"random - pretrained init ({finetune}, mean of SFT and CL)",
     {f"random-{finetune}-{o}": 0.5 for o in ("sft", "cl")}
     | {f"pretrained-{finetune}-{o}": -0.5 for o in ("sft", "cl")})
    for finetune in ("lora", "full")]
CONTRASTS += [
    (f"LoRA - full ({init} init, mean of SFT and CL)",
     {f"{init}-lora-{o}": 0.5 for o in ("sft", "cl")} | {f"{init}-full-{o}": -0.5 for o in ("sft", "cl")})
    for init in ("pretrained", "random")]
# How much do the frozen features already rank? (a linear probe: only the LM head trains)
CONTRASTS += [
    ("random - pretrained features (head only, mean of SFT and CL)",
     {f"random-head-{o}": 0.5 for o in ("sft", "cl")} | {f"pretrained-head-{o}": -0.5 for o in ("sft", "cl")})]


def main(argv=None):
  return sweep.main(__doc__, "regimes", ARMS, argv=argv, contrasts=CONTRASTS,
                    title="Regimes: initialisation x fine-tuning")


if __name__ == "__main__":
  main(sys.argv[1:])
