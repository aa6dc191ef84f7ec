"""decomp: reranking objectives as explicit weight x direction products, in JAX.

The flat public API; internals may move between modules without breaking these names.
"""

from decomp import directions
from decomp import metrics
from decomp import weights
from decomp._lists import check_has_positive
from decomp.diagnostics import diagnostics, label_readout_fn
from decomp.losses import cl_loss, sft_loss
from decomp.metrics import aggregate, ap, mrr, ndcg, precision, recall
from decomp.readout import Readout
from decomp.url import resolve_direction, resolve_weight, url_loss, url_surrogate

__version__ = "0.1.0"

__all__ = [
    "Readout",
    "aggregate",
    "ap",
    "metrics",
    "mrr",
    "ndcg",
    "precision",
    "recall",
    "check_has_positive",
    "cl_loss",
    "diagnostics",
    "directions",
    "label_readout_fn",
    "resolve_direction",
    "resolve_weight",
    "sft_loss",
    "url_loss",
    "url_surrogate",
    "weights",
]
