"""CL's InfoNCE temperature (the paper uses none, i.e. 1; a reviewer asked): tau in
{0.05, 0.1, 0.2, 0.5, 1, 2}, with SFT as the reference line.

A temperature rescales CL's weights by 1/tau *and* sharpens their shape (the list's softmax).
The weight-vs-score and update-over-training figures show both effects.

Command::

  python experiments/temperature.py [--seeds 3] [--quick] [--out runs/temperature]

Expected runtime (2-core CPU): 7 arms x 3 seeds (~20 minutes).

Expected result: CL's best temperature is below 1 (larger, sharper weights) and narrows the gap
to SFT; the sweep shows how much of it.
"""

from __future__ import annotations

import sys

from decomp import sweep

TEMPERATURES = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)

ARMS = [sweep.Arm(f"cl-t{t}", {"weight": "cl", "direction": "cl", "temperature": t},
                  f"CL, tau={t}") for t in TEMPERATURES]
ARMS.append(sweep.Arm("sft", {"weight": "sft", "direction": "sft"}, "SFT (reference)"))

CONTRASTS = [(f"CL tau={t} - CL tau=1", f"cl-t{t}", "cl-t1.0") for t in TEMPERATURES if t != 1.0]


def main(argv=None):
  return sweep.main(__doc__, "temperature", ARMS, argv=argv, contrasts=CONTRASTS,
                    title="CL temperature")


if __name__ == "__main__":
  main(sys.argv[1:])
