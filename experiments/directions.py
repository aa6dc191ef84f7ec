"""Directions: D_SFT (M_y - M_n), D_CL (M_y), D_CL-logprob (M_y - E_p[M_v], the generative
model's normalised log-probability of "yes"), the paper's D_Rand, and an unread projection.

D_Rand (``label_head=random``) replaces the label words' LM-head rows by a fresh learnable K x d
matrix in every score: the weight, the direction and the ranking all read h . r_y (and h . r_n),
so no label token is used at all. The paper's reading: CL gains from it (+1.32), SFT loses (-1.34).
D_proj (``direction=projection``) is a different control: it pushes h along a learnable r while
the weight and the ranking still read the label tokens, so it should not learn at all.

Command::

  python experiments/directions.py [--seeds 3] [--quick] [--reuse runs/probe] [--out runs/directions]

Expected runtime (2-core CPU): 10 arms x 3 seeds, ~2 minutes per run two at a time: about 30
minutes (~24 with the probe's four pure arms linked by --reuse). D_CL-logprob computes the
full-vocabulary normaliser at the answer position (small for the playground's vocabulary).

Expected result (the paper): with W_SFT the token directions are close (D_SFT best); D_Rand costs
SFT about 1.3 points and gives CL about as much. D_proj stays at chance (49). Runs with D_CL /
D_CL-logprob are ranked by the yes-logit, D_SFT and D_proj by P(yes), D_Rand arms by their own
objective's score on the random rows.
"""

from __future__ import annotations

import sys

from decomp import sweep

ARMS = [
    sweep.Arm(f"w_{weight}-d_{direction}", {"weight": weight, "direction": direction},
              f"W_{weight.upper()} x D_{label}")
    for weight in ("sft", "cl")
    for direction, label in (("sft", "SFT"), ("cl", "CL"), ("cl_logprob", "CL-logprob"),
                             ("projection", "proj"))
] + [
    sweep.Arm(f"{objective}-rand", {"weight": objective, "direction": objective,
                                    "label_head": "random"},
              f"{objective.upper()}, D_Rand (random label rows)")
    for objective in ("sft", "cl")
]

CONTRASTS = [
    ("SFT: D_SFT - D_Rand", "w_sft-d_sft", "sft-rand"),
    ("CL: D_Rand - D_CL", "cl-rand", "w_cl-d_cl"),
    ("D_Rand: SFT - CL", "sft-rand", "cl-rand"),
    ("W_SFT: D_CL - D_CL-logprob", "w_sft-d_cl", "w_sft-d_cl_logprob"),
    ("W_SFT: D_SFT - D_proj", "w_sft-d_sft", "w_sft-d_projection"),
]


def main(argv=None):
  return sweep.main(__doc__, "directions", ARMS, argv=argv, contrasts=CONTRASTS,
                    title="Directions")


if __name__ == "__main__":
  main(sys.argv[1:])
