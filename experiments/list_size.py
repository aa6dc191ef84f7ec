"""The paper's mechanism, tested: does CL's deficit come from InfoNCE's small groups?

The paper attributes SFT's edge to CL's weight: InfoNCE's softmax normalises a document's push
over its list, and a reranker fits only k+1 long documents per instance. Here every list size
from 2 to 64 documents trains on the calibrated regime (the LM head on the pretrained base's
frozen features, ``finetune=head``, where seeds resolve differences under a point), with the
exact chunked step for lists above 16 (``doc_chunk=8``: one chunk's activations in memory).

Arms, each at 1, 3, 7, 15, 31 and 63 negatives: SFT, CL, the two hybrids (W_SFT x D_CL,
W_CL x D_SFT) and CL rescaled to SFT's scale (``cl_rescaled`` x D_CL: CL's per-list shape with
SFT's total magnitude), so a closing gap can be told apart as scale or shape. One playground
world for every arm (lists of 64 candidates, of which each arm takes its first k negatives)
and one test set (every query ranked among the same 1 + 7 candidates). The frozen body's
features are cached (``cache_features=true``): each document is encoded once for all arms and
list sizes of a seed.

Command::

  python experiments/list_size.py [--seeds 5] [--out runs/list_size]

Expected runtime (2-core CPU, two runs at a time): about 40 minutes for 5 arms x 6 sizes x 5
seeds (each seed's 3200 training lists of 64 documents encoded once, ~4 minutes; a run on
cached features ~20 s).

Expected result: see docs/findings.md ("The list-size mechanism"), written from this sweep's
logs; ``figures/list_size.py`` draws test NDCG@10 and the logged weights (the positive's |W|,
the total |W| per list, its share on hard negatives) against list size with the values both
weights take at uniform scores overlaid.
"""

from __future__ import annotations

import sys

from decomp import sweep

COUNTS = (1, 3, 7, 15, 31, 63)
CHUNK = 8  # documents per chunk of the lists longer than 16 (decomp.chunked)
OBJECTIVES = (("sft", "sft", "sft", "SFT"), ("cl", "cl", "cl", "CL"),
              ("w_sft-d_cl", "sft", "cl", "W_SFT x D_CL"),
              ("w_cl-d_sft", "cl", "sft", "W_CL x D_SFT"),
              ("cl_rescaled", "cl_rescaled", "cl", "CL rescaled to SFT's scale"))
BASE = ("finetune=head", "cache_features=true", "eval_list_size=8", "example_log_every=10")


def arms(counts=COUNTS):
  out = []
  for name, weight, direction, label in OBJECTIVES:
    for k in counts:
      out.append(sweep.Arm(f"{name}-neg{k}", {
          "weight": weight, "direction": direction, "negatives": k,
          "playground": {"negatives": max(counts)},
          **({"doc_chunk": CHUNK} if k + 1 > 16 else {})}, f"{label}, {k} negatives"))
  return out


def contrasts(counts=COUNTS):
  out = [(f"SFT - CL at {k} negatives", f"sft-neg{k}", f"cl-neg{k}") for k in counts]
  out += [(f"SFT - CL rescaled at {k} negatives", f"sft-neg{k}", f"cl_rescaled-neg{k}")
          for k in counts]
  lo, hi = counts[0], counts[-1]
  out += [(f"{name}: {hi} - {lo} negatives", f"{name}-neg{hi}", f"{name}-neg{lo}")
          for name in ("sft", "cl", "cl_rescaled")]
  # Does the gap close? (SFT - CL at the largest lists) - (SFT - CL at the smallest).
  out.append((f"gap change (SFT - CL at {hi}) - (SFT - CL at {lo})",
              {f"sft-neg{hi}": 1, f"cl-neg{hi}": -1, f"sft-neg{lo}": -1, f"cl-neg{lo}": 1}))
  return out


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  # The regime first: a user's --set comes later and wins.
  return sweep.main(__doc__, "list_size", arms(), argv=["--set", *BASE, *argv],
                    contrasts=contrasts(), title="List size (head-only)")


if __name__ == "__main__":
  main()
