"""The reranker's readout: what the losses, weights and directions of decomp read.

A reranker scores a list of ``n`` documents per query. Everything the math core needs is a handful
of per-document arrays; a model produces them once per step and every loss, weight, direction and
diagnostic reads the same :class:`Readout`.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

Array = Any


class Readout(NamedTuple):
  """Per-document outputs of a yes/no reranker (a pytree, so it passes through ``jax.jit``).

  Attributes:
    yes: ``[..., n]`` logit of the "yes" label token at the answer position, ``z_y = M_y . h``.
    no: ``[..., n]`` logit of the "no" label token, ``z_n = M_n . h``.
    log_normalizer: optional ``[..., n]`` log-sum-exp of the logits over the whole vocabulary;
      needed only by directions that read a vocabulary log-probability (``cl_logprob``).
    hidden: optional ``[..., n, d]`` final hidden state ``h`` at the answer position.
    extra_scores: optional mapping name -> ``[..., n]`` further per-document scores a model
      computes (e.g. ``"projection"``, a learnable random projection of ``h`` used as direction).
  """

  yes: Array
  no: Array
  log_normalizer: Array | None = None
  hidden: Array | None = None
  extra_scores: Mapping[str, Array] | None = None
