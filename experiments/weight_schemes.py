"""Weight schemes along SFT's direction: is SFT's advantage the *scale* of its weights or their
*shape*?

Arms (all with D_SFT): W_SFT, W_CL, constant W = 1 (the paper's W_base), tau-masked constant
W (tau = 0.1), 1 + W_SFT, and W_CL rescaled per list to SFT's total magnitude (CL's shape at
SFT's scale).

Command::

  python experiments/weight_schemes.py [--seeds 3] [--quick] [--out runs/weight_schemes]

Expected runtime (2-core CPU): 6 arms x 3 seeds ~ 1.5x the probe (~20 minutes).

Expected result (the paper, MRB): constant W 49.47 (far below both), tau mask 56.57, 1 + W_SFT
58.19 (>= W_SFT 58.09): a weight that decays on learned documents is what matters. The question
the paper leaves open: if ``cl_rescaled`` closes the gap to W_SFT, SFT wins by the scale of its
weights; if not, by their per-document shape. docs/findings.md reports our numbers.
"""

from __future__ import annotations

import sys

from decomp import sweep

ARMS = [
    sweep.Arm("sft", {"weight": "sft", "direction": "sft"}, "W_SFT"),
    sweep.Arm("cl", {"weight": "cl", "direction": "sft"}, "W_CL"),
    sweep.Arm("constant", {"weight": "constant", "direction": "sft"}, "W = 1"),
    sweep.Arm("tau_mask", {"weight": "tau_mask", "direction": "sft",
                           "weight_kwargs": {"tau": 0.1}}, "W = 1, tau mask 0.1"),
    sweep.Arm("one_plus_sft", {"weight": "one_plus_sft", "direction": "sft"}, "W = 1 + W_SFT"),
    sweep.Arm("cl_rescaled", {"weight": "cl_rescaled", "direction": "sft"},
              "W_CL rescaled to SFT's scale"),
]

CONTRASTS = [
    ("W_SFT - W_CL", "sft", "cl"),
    ("W_SFT - constant", "sft", "constant"),
    ("W_SFT - tau mask", "sft", "tau_mask"),
    ("1 + W_SFT - W_SFT", "one_plus_sft", "sft"),
    ("CL rescaled - W_CL (scale)", "cl_rescaled", "cl"),
    ("W_SFT - CL rescaled (shape)", "sft", "cl_rescaled"),
]


def main(argv=None):
  return sweep.main(__doc__, "weight_schemes", ARMS, argv=argv, contrasts=CONTRASTS,
                    title="Weight schemes along D_SFT")


if __name__ == "__main__":
  main(sys.argv[1:])
