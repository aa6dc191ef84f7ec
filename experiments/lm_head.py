"""Frozen vs trained LM head, for SFT and CL.

The directions D_SFT = M_y - M_n and D_CL = M_y are LM-head rows: training the head changes the
direction itself. The paper: unfreezing the LM head helps CL but not SFT.

Command::

  python experiments/lm_head.py [--seeds 3] [--quick] [--out runs/lm_head]
  python experiments/lm_head.py --seeds 9 --set finetune=lora steps=100 --out runs/lm_head_lora

The first fine-tunes every weight (the config's default; paired stds of 3-11 points, nothing
resolved with 3 seeds). The second is the resolving regime for this question (the head-only one
cannot ask it): LoRA adapters on the frozen base for 100 steps, the LM head frozen or trained
with them, found by ``experiments/lora_calibration.py`` (paired SFT - CL std under a point at
~90 s a run; docs/calibration.md).

Expected runtime (2-core CPU): 4 arms x 3 seeds, about the probe's (~12 minutes); the LoRA
regime with 9 seeds (5 left SFT's interval at ± 1.5) ~27 minutes.

Expected result: the paper finds CL gains from a trained head, SFT does not (or less); measured
in docs/findings.md (claim 6).
"""

from __future__ import annotations

import sys

from decomp import sweep

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
