"""The paper's Table 1 on the playground: {W_SFT, W_CL} x {D_SFT, D_CL}, several seeds.

Command::

  python experiments/probe_weight_direction.py [--seeds 3] [--quick] [--out runs/probe]

Expected runtime (2-core CPU): about 12 minutes for 4 arms x 3 seeds with the default
``playground`` config (the cached pretrained base is built once, ~1 minute, on first use);
``--quick`` about 1-2 minutes.

Expected result: the paper (MRB, Qwen2-VL LoRA) finds that changing the *weight* from W_CL to
W_SFT gains 1.10-1.48 points while changing the *direction* moves 0.21-0.59 points: SFT's edge
is mostly its weight. Each run is scored with its own direction's ranking score (P(yes) for
D_SFT, the yes-logit for D_CL). The summary reports both effects as paired differences over
seeds with 95% confidence intervals; README's "What we found" gives the measured numbers.
"""

from __future__ import annotations

import sys

import sweep

ARMS = [
    sweep.Arm("w_sft-d_sft", {"weight": "sft", "direction": "sft"}, "W_SFT x D_SFT (SFT)"),
    sweep.Arm("w_sft-d_cl", {"weight": "sft", "direction": "cl"}, "W_SFT x D_CL"),
    sweep.Arm("w_cl-d_sft", {"weight": "cl", "direction": "sft"}, "W_CL x D_SFT"),
    sweep.Arm("w_cl-d_cl", {"weight": "cl", "direction": "cl"}, "W_CL x D_CL (CL)"),
]

CONTRASTS = [
    ("weight effect under D_SFT (W_SFT - W_CL)", "w_sft-d_sft", "w_cl-d_sft"),
    ("weight effect under D_CL (W_SFT - W_CL)", "w_sft-d_cl", "w_cl-d_cl"),
    ("direction effect under W_SFT (D_SFT - D_CL)", "w_sft-d_sft", "w_sft-d_cl"),
    ("direction effect under W_CL (D_SFT - D_CL)", "w_cl-d_sft", "w_cl-d_cl"),
    ("SFT - CL (the two objectives)", "w_sft-d_sft", "w_cl-d_cl"),
    # The 2x2 design's main effects (each averaged over the other factor, as the paper reports
    # them) and the interaction (how much the weight's effect depends on the direction).
    ("weight main effect (W_SFT - W_CL)",
     {"w_sft-d_sft": 0.5, "w_sft-d_cl": 0.5, "w_cl-d_sft": -0.5, "w_cl-d_cl": -0.5}),
    ("direction main effect (D_SFT - D_CL)",
     {"w_sft-d_sft": 0.5, "w_cl-d_sft": 0.5, "w_sft-d_cl": -0.5, "w_cl-d_cl": -0.5}),
    ("interaction (weight effect under D_SFT - under D_CL)",
     {"w_sft-d_sft": 1.0, "w_cl-d_sft": -1.0, "w_sft-d_cl": -1.0, "w_cl-d_cl": 1.0}),
]


def main(argv=None):
  return sweep.main(__doc__, "probe", ARMS, argv=argv, contrasts=CONTRASTS,
                    title="Probe: weight x direction (paper Table 1)")


if __name__ == "__main__":
  main(sys.argv[1:])
