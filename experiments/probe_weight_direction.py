"""The paper's Table 1 on the playground: {W_SFT, W_CL} x {D_SFT, D_CL}, several seeds.

Command::

  python experiments/probe_weight_direction.py --config playground_multimodal --out runs/probe_mm  # make demo
  python experiments/probe_weight_direction.py --set finetune=head cache_features=true --out runs/probe_head  # make demo-text
  python experiments/probe_weight_direction.py [--seeds 3] [--quick] [--out runs/probe]    # make demo-full

Three setups, one script. ``make demo`` (the main job) trains the LM head alone on the frozen
features of the multimodal base (``playground_multimodal``: T->T, T->I, I->T and IT->IT, each
prompt the base's own matching question, 1024 test queries per family). ``make demo-text`` is
the same regime on text alone with the text base (2048 test queries): the calibrated benchmark,
where the seeds differ only in the order of the data and 3 seeds resolve differences of under a
point. The config's default fine-tunes every weight (the paper's question with the features
trained): deeper but noisy, because each run learns the playground's attributes one by one at
its own steps (docs/calibration.md).

Expected runtime (2-core CPU, two runs at a time): ``make demo`` 10 min 39 s from a fresh
clone, of which ~7.5 build the multimodal base once and ~2 compute the frozen features of every
prompt once (``cache_features=true``); ``make demo-text`` about 4 minutes; full fine-tuning
about 12 minutes; ``--quick`` (a tiny random-init model, 20 steps) about 1-2 minutes.

Expected result: the paper (MRB, Qwen2-VL LoRA) finds SFT best, the *weight* worth 1.10-1.48
points (W_SFT better) and the *direction* 0.21-0.59. On text (docs/findings.md): SFT ahead of CL
by 1.9 +- 0.4 and W_SFT ahead of W_CL under D_SFT by 2.7 +- 0.2, as in the paper, but W_SFT x
D_CL collapses below chance (46), so the direction's main effect is large here, unlike the paper.
With images (docs/probe_mm_summary.md): every family above chance (T->T ~63, I->T ~57, IT->IT
~55, T->I ~51; chance 49.4), SFT and CL tied (+0.0 +- 0.2). Full fine-tuning: CL at least as
good as SFT, no contrast resolved with 3 seeds (paired stds ~4-10).
Each run is scored with its own direction's ranking score (P(yes) for D_SFT, the yes-logit for
D_CL); the summary reports every effect as a paired difference over seeds with a 95% CI.
"""

from __future__ import annotations

import sys

from decomp import sweep

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
# The same effects with every run ranked by its *weight's* score (P(yes) for W_SFT, the
# yes-logit for W_CL) instead of its direction's: the score the weight itself reads and drives.
# A hybrid's two scores can disagree (W_SFT x D_CL moves z_y to fix P(yes), and z_y keeps the
# base's uninformative part), so the convention decides what a hybrid is credited with.
BY_WEIGHT = {"w_sft-d_sft": "w_sft-d_sft@sft", "w_sft-d_cl": "w_sft-d_cl@sft",
             "w_cl-d_sft": "w_cl-d_sft@cl", "w_cl-d_cl": "w_cl-d_cl@cl"}


def _ranked_by_weight(contrast):
  name, coefficients = sweep.contrast_coefficients(contrast)
  return (f"{name}, ranked by the weight's score",
          {BY_WEIGHT[arm]: coefficient for arm, coefficient in coefficients.items()})


# SFT - CL is left out: the pure objectives' weight and direction already share one score.
CONTRASTS += [_ranked_by_weight(c) for c in CONTRASTS if not c[0].startswith("SFT - CL")]


def main(argv=None):
  return sweep.main(__doc__, "probe", ARMS, argv=argv, contrasts=CONTRASTS,
                    title="Probe: weight x direction (paper Table 1)")


if __name__ == "__main__":
  main(sys.argv[1:])
