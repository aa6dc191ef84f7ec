"""Number of negatives per training list, for SFT and CL: 1, 3, 7, 15 (31 and 63 with --max 63).

Lists of 32 and 64 documents train with the exact chunked step (``doc_chunk=8``: one chunk's
activations in memory, one extra forward), so their memory stays that of a list of 8.

CL's weights are normalised over the list (a negative's share shrinks like 1/k while the
positive's weight approaches 1); SFT's are per document (the total push on negatives grows with
k). The paper: SFT improves monotonically from 2 to 16 negatives; more negatives help CL too.

Command::

  python experiments/negatives.py [--seeds 3] [--quick] [--max 15|31|63] [--out runs/negatives]

Expected runtime (2-core CPU): cost grows linearly with the list size: 63 s per run at 1
negative, ~100 s at 3, ~170 s at 7, ~285 s at 15 (two at a time): about 36 minutes for the 24
runs; each doubling of the list doubles a run (31 negatives ~10 minutes, 63 ~20 minutes a run:
not run with --max 63 in this regime; ``experiments/list_size.py`` runs 1 to 63 negatives with
the chunked step in the head-only regime, where 5 seeds resolve the differences).

Expected result (measured, docs/findings.md): both improve with more negatives (1 -> 15: SFT +6.0, CL
+6.7 on average, not resolved with 3 seeds); SFT and CL tie at every list size.
"""

from __future__ import annotations

import argparse
import sys

from decomp import sweep

COUNTS = (1, 3, 7, 15, 31, 63)
CHUNK = 8  # documents per chunk of the lists longer than 16 (decomp.chunked)


def arms(max_negatives: int):
  counts = [k for k in COUNTS if k <= max_negatives]
  out = []
  for objective in ("sft", "cl"):
    for k in counts:
      # One world for every arm (its lists hold max_negatives candidates) and one test set:
      # every query ranked among the same 1 + 7 candidates, whatever the training list size.
      out.append(sweep.Arm(f"{objective}-neg{k}", {
          "weight": objective, "direction": objective, "negatives": k,
          "playground": {"negatives": max(7, max_negatives)}, "eval_list_size": 8,
          **({"doc_chunk": CHUNK} if k + 1 > 16 else {})},
          f"{objective.upper()}, {k} negatives"))
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(add_help=False)
  parser.add_argument("--max", type=int, default=15)
  known, rest = parser.parse_known_args(argv)
  counts = [k for k in COUNTS if k <= known.max]
  contrasts = [(f"SFT - CL at {k} negatives", f"sft-neg{k}", f"cl-neg{k}") for k in counts]
  contrasts += [(f"{objective.upper()}: {counts[-1]} - {counts[0]} negatives",
                 f"{objective}-neg{counts[-1]}", f"{objective}-neg{counts[0]}")
                for objective in ("sft", "cl")]
  return sweep.main(__doc__, "negatives", arms(known.max), argv=rest, contrasts=contrasts,
                    quick_overrides=("max_length=64",), title="Number of negatives")


if __name__ == "__main__":
  main(sys.argv[1:])
