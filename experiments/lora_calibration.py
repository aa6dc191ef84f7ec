"""A second resolving regime, for what the head-only regime cannot ask: LoRA on the frozen base.

The LM-head ablation (frozen vs trained head) is meaningless when only the head trains, and full
fine-tuning's paired seed spread (3.6-9.7 points) resolves only ~10-point effects. This sweep
trains pure SFT and pure CL with LoRA adapters on the pretrained playground base under a few
budgets and reports, per budget, the paired SFT - CL spread and the seeds a +-1-point interval
would need: the budget to use is the cheapest with a paired std <= 1 at <= 2 minutes a run.

Variants (LoRA rank 16 on every projection, LM head frozen):
  lr1e-3-steps100  the default learning rate, half the default steps
  lr3e-4-steps100  a third of the learning rate
  lr1e-4-steps200  a tenth of the learning rate, the default steps

Command::

  python experiments/lora_calibration.py [--seeds 3] [--out runs/lora_calibration]

Expected runtime (2-core CPU): 3 variants x 2 objectives x 3 seeds, two at a time, about a
minute a run: ~10 minutes.

Expected result: measured in docs/calibration.md ("A second resolving regime: LoRA on the
frozen base").
"""

from __future__ import annotations

import sys

from decomp import sweep

VARIANTS = {
    "lr1e-3-steps100": {"learning_rate": 1e-3, "steps": 100},
    "lr3e-4-steps100": {"learning_rate": 3e-4, "steps": 100},
    "lr1e-4-steps200": {"learning_rate": 1e-4, "steps": 200},
}

ARMS = [sweep.Arm(f"{variant}-{objective}",
                  {"finetune": "lora", **overrides, "weight": objective, "direction": objective},
                  f"LoRA {variant}, {objective.upper()}")
        for variant, overrides in VARIANTS.items() for objective in ("sft", "cl")]
CONTRASTS = [(f"SFT - CL ({variant})", f"{variant}-sft", f"{variant}-cl") for variant in VARIANTS]


def main(argv=None):
  return sweep.main(__doc__, "lora_calibration", ARMS, argv=argv, contrasts=CONTRASTS,
                    title="A second regime: SFT vs CL with LoRA on the frozen base")


if __name__ == "__main__":
  main(sys.argv[1:])
