"""More label tokens than yes/no: SFT with 2, 4, 8 and 16 label words (the paper: 2 to 16 label
tokens score about 57.9 throughout, no gain over yes/no).

The words alternate positive and negative (yes, no, true, false, relevant, irrelevant, ...;
``decomp.data.LABEL_WORDS``) and ``label_pooling='pairs'`` pools each side by log-sum-exp:
P(relevant) is the probability mass of the positive words among all label words, and SFT's
direction becomes the softmax-weighted mix of the positive words' LM-head rows minus that of the
negative ones (``decomp.readout.pool_label_logits``). With 2 words this is exactly the probe's SFT
run (linked with ``--reuse runs/probe``).

Command::

  python experiments/label_tokens.py [--seeds 3] [--quick] [--reuse runs/probe] [--out runs/label_tokens]

Expected runtime (2-core CPU): 4 arms x 3 seeds, about the probe's (~12 minutes; ~9 with the
yes/no arm linked from the probe).

Expected result (the paper): no gain from more label tokens. The base never saw the label words
in pre-training, so every added word is another freshly initialised LM-head row to pool.
"""

from __future__ import annotations

import sys

from decomp import sweep
from decomp.data.tokenizer import LABEL_WORDS

COUNTS = (2, 4, 8, 16)


def _arm(count: int) -> sweep.Arm:
  overrides = {"weight": "sft", "direction": "sft"}
  if count > 2:  # yes/no keeps the default config, so it is the probe's SFT run
    overrides.update(label_words=list(LABEL_WORDS[:count]), label_pooling="pairs")
  return sweep.Arm(f"sft-labels{count}", overrides, f"SFT, {count} label words")


ARMS = [_arm(count) for count in COUNTS]
CONTRASTS = [(f"{count} - 2 label words", f"sft-labels{count}", "sft-labels2")
             for count in COUNTS[1:]]


def main(argv=None):
  return sweep.main(__doc__, "label_tokens", ARMS, argv=argv, contrasts=CONTRASTS,
                    title="Label tokens: yes/no vs more words (SFT)")


if __name__ == "__main__":
  main(sys.argv[1:])
