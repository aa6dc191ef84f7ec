"""decomp: reranking objectives as explicit weight x direction products, in JAX.

The flat public API; internals may move between modules without breaking these names.
"""

from decomp import directions
from decomp import metrics
from decomp import objectives
from decomp import weights
from decomp._lists import check_has_positive
from decomp.update_magnitudes import diagnostics, label_readout_fn
from decomp.directions import DIRECTIONS, Direction
from decomp.losses import cl_loss, kd_loss, sft_loss
from decomp.metrics import aggregate, ap, mrr, ndcg, precision, recall
from decomp.objectives import (OBJECTIVES, RANK_SCORES, Objective, register_direction,
                               register_objective, register_weight, resolve_direction,
                               resolve_objective, resolve_weight, url_surrogate)
from decomp.readout import (LABEL_HEADS, LABEL_POOLINGS, READOUT_NEEDS, Readout,
                            pool_label_logits, readout_from_label_rows)
from decomp.url import url_loss
from decomp.weights import WEIGHTS, Weight

__version__ = "0.1.0"

# The heavy parts (flax models, the training engine, data) load on first use, so that the math
# core above stays importable on its own, quickly. ``decomp.train(config, workdir)`` trains.
_LAZY = {
    "data": ("decomp.data", None),
    "models": ("decomp.models", None),
    "train": ("decomp.train", None),
    "TrainConfig": ("decomp.train", "TrainConfig"),
    "get_config": ("decomp.train", "get_config"),
    "read_steps": ("decomp.train", "read_steps"),
    "read_examples": ("decomp.train", "read_examples"),
    "read_evals": ("decomp.train", "read_evals"),
    "load_state": ("decomp.train", "load_state"),
    "rerank": ("decomp.rerank", None),  # a callable module: decomp.rerank(model, query, docs)
}


def __getattr__(name):
  if name not in _LAZY:
    raise AttributeError(f"module 'decomp' has no attribute {name!r}")
  import importlib
  module_name, attribute = _LAZY[name]
  module = importlib.import_module(module_name)
  value = module if attribute is None else getattr(module, attribute)
  globals()[name] = value
  return value

__all__ = [
    "DIRECTIONS",
    "Direction",
    "OBJECTIVES",
    "Objective",
    "RANK_SCORES",
    "READOUT_NEEDS",
    "WEIGHTS",
    "Weight",
    "objectives",
    "readout_from_label_rows",
    "register_direction",
    "register_objective",
    "register_weight",
    "resolve_objective",
    "LABEL_HEADS",
    "LABEL_POOLINGS",
    "Readout",
    "pool_label_logits",
    "aggregate",
    "ap",
    "metrics",
    "mrr",
    "ndcg",
    "precision",
    "recall",
    "check_has_positive",
    "cl_loss",
    "kd_loss",
    "diagnostics",
    "directions",
    "label_readout_fn",
    "resolve_direction",
    "resolve_weight",
    "sft_loss",
    "url_loss",
    "url_surrogate",
    "weights",
    *_LAZY,
]
