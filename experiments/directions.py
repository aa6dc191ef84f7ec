"""Directions under SFT's weight: D_SFT (M_y - M_n), D_CL (M_y), D_CL-logprob (M_y - E_p[M_v],
the generative model's normalised log-probability of "yes") and D_Rand (a learnable random
projection r of h, the paper's control that uses no label token at all).

Command::

  python experiments/directions.py [--seeds 3] [--quick] [--out runs/directions]

Expected runtime (2-core CPU): 4 arms x 3 seeds, about the probe's (~12 minutes); D_CL-logprob
computes the full-vocabulary normaliser at the answer position (small for the playground's
~300-word vocabulary).

Expected result (the paper): with W_SFT the token directions are close (D_SFT best) and D_Rand
costs about 1.3 points; with W_CL, D_Rand helps CL (+1.32). Runs with D_CL / D_CL-logprob are
ranked by the yes-logit, D_SFT and D_Rand by P(yes).
"""

from __future__ import annotations

import sys

import sweep

ARMS = [
    sweep.Arm(f"w_{weight}-d_{direction}", {"weight": weight, "direction": direction},
              f"W_{weight.upper()} x D_{label}")
    for weight in ("sft", "cl")
    for direction, label in (("sft", "SFT"), ("cl", "CL"), ("cl_logprob", "CL-logprob"),
                             ("projection", "Rand"))
]

CONTRASTS = [
    ("W_SFT: D_SFT - D_Rand", "w_sft-d_sft", "w_sft-d_projection"),
    ("W_SFT: D_CL - D_CL-logprob", "w_sft-d_cl", "w_sft-d_cl_logprob"),
    ("W_CL: D_Rand - D_CL", "w_cl-d_projection", "w_cl-d_cl"),
]


def main(argv=None):
  return sweep.main(__doc__, "directions", ARMS, argv=argv, contrasts=CONTRASTS,
                    title="Directions")


if __name__ == "__main__":
  main(sys.argv[1:])
