"""Frozen vs trained LM head, for SFT and CL.

The directions D_SFT = M_y - M_n and D_CL = M_y are LM-head rows: training the head changes the
direction itself. The paper: unfreezing the LM head helps CL but not SFT.

Command::

  python experiments/lm_head.py [--seeds 3] [--quick] [--out runs/lm_head]

Expected runtime (2-core CPU): 4 arms x 3 seeds, about the probe's (~12 minutes).

Expected result: CL gains from a trained head, SFT does not (or less).
"""

from __future__ import annotations

import sys

import sweep

ARMS = [
    sweep.Arm(f"{objective}-head_{state}",
              {"weight": objective, "direction": objective, "train_lm_head": state == "trained"},
              f"{objective.upper()}, head {state}")
    for objective in ("sft", "cl") for state in ("frozen", "trained")
]

CONTRASTS = [
    ("SFT: trained - frozen head", "sft-head_trained", "sft-head_frozen"),
    ("CL: trained - frozen head", "cl-head_trained", "cl-head_frozen"),
]


def main(argv=None):
  return sweep.main(__doc__, "lm_head", ARMS, argv=argv, contrasts=CONTRASTS,
                    title="LM head frozen vs trained")


if __name__ == "__main__":
  main(sys.argv[1:])
