"""What the generic code reads from a model family: two small Protocols and one record.

A family (a package under ``decomp/models/``) gives a :class:`Family`; the table in
:mod:`decomp.models.families` maps each ``config.json`` ``architectures`` name to one. The
reranker, the build path and the training engine only call what is written here, so adding a
family touches its package and that table (``docs/models.md``, "Adding a family").
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import jax
import numpy as np

__all__ = ['Backbone', 'Family', 'ImageAdapter', 'ImageTower']


class Backbone(Protocol):
  """A decoder LM as the reranker reads it (:class:`decomp.models.decoder.Decoder` is one).

  ``config`` has ``vocab_size``, ``hidden_size`` and ``hf_architecture``; ``dtype`` is the
  compute dtype. Linear projections named ``q_proj`` ... ``down_proj`` under
  ``layers[i].self_attn`` / ``layers[i].mlp`` (as :func:`decomp.models.lora.apply_lora` finds
  them) and an LM-head parameter with Variable metadata ``lm_head=True`` make LoRA and
  ``finetune=head`` work unchanged.
  """

  config: Any
  dtype: Any

  def embed(self, input_ids: jax.Array) -> jax.Array:
    """``[B, T]`` ids -> ``[B, T, d]`` input embeddings (what image features replace)."""

  def hidden_states(self, input_ids: jax.Array | None = None,
                    attention_mask: jax.Array | None = None, *,
                    inputs_embeds: jax.Array | None = None, positions: jax.Array | None = None,
                    layer_residuals: Sequence[jax.Array] = (),
                    at_index: jax.Array | None = None) -> jax.Array:
    """Final normed hidden states ``[B, T, d]``, or ``[B, d]`` at ``at_index [B]``."""

  def lm_head_rows(self, token_ids: jax.Array) -> jax.Array:
    """``[K, d]`` LM-head rows: those tokens' logits are ``h @ rows.T``."""

  def log_normalizer(self, h: jax.Array) -> jax.Array:
    """``[..., d] -> [...]`` float32 logsumexp over the vocabulary of ``h``'s logits."""


@runtime_checkable
class ImageTower(Protocol):
  """A family's own vision tower whose output is already LM-width visual tokens (no projector):
  the reranker feeds it ``[K, patches, patch_dim]`` same-size images."""

  def image_features(self, patches: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    """``[K, p, patch_dim]`` -> visual tokens ``[K, tokens, d]`` and per-layer residuals in the
    same shape (added to the LM's hidden states after layers 0, 1, ...; ``[]`` for none)."""

  def tokens_per_image(self, patches_per_image: int) -> int:
    """Visual tokens (placeholders in the prompt) of one image of ``patches_per_image``."""


class ImageAdapter(Protocol):
  """What the data needs to feed a family's own tower: the placeholder tokens, the image
  preprocessing and the positions. Built from the family's config (:attr:`Family.images`)."""

  image_token: str  # the placeholder token a prompt repeats once per visual token
  image_token_id: int
  image_wrap: tuple[str, str] | None  # tokens around each image's placeholders (or None)

  def tokens_per_image(self, image_size: int) -> int:
    """Placeholders of one ``image_size`` square image."""

  def check(self, tokenizer, image_size: int) -> None:
    """ValueError unless the tokenizer and ``image_size`` fit the model."""

  def patches(self, images: Sequence[Any], image_size: int) -> np.ndarray:
    """Images -> the tower's input ``[N, ...]`` float32, one fixed shape per image."""

  def positions(self, input_ids: np.ndarray, attention_mask: np.ndarray, image_valid: np.ndarray,
                image_size: int) -> np.ndarray | None:
    """``[B, n, T]`` prompts -> the positions ``hidden_states`` takes (``[B, n, S, T]``), or
    None for the default ``cumsum(mask) - 1``."""

  def apply_lora(self, tower, *, rank: int, alpha: float, rngs) -> None:
    """LoRA adapters on the tower, in place (``lora_vision=true``)."""


def _identity(x):
  return x


def _no_tower(model):
  del model
  return None


@dataclasses.dataclass(frozen=True)
class Family:
  """One model family: how its checkpoints are read, built, loaded and saved.

  Attributes:
    name: a short name for messages and docs.
    read_config: ``config.json`` dict -> the family's config (raises ValueError for what it
      does not implement). The config has ``hf_architecture`` (the table key it was read for).
    create: ``(config, *, dtype, param_dtype, remat, rngs)`` -> the randomly initialised model
      (``remat``: a :data:`decomp.models.remat.REMAT_POLICIES` name).
    load: ``(directory, *, dtype, param_dtype, mesh, rules, remat)`` -> the model with the
      checkpoint's weights.
    save: ``(model, directory, **kwargs)``: writes what transformers loads back as the same
      class.
    model_type: the class ``create`` / ``load`` return (``save_pretrained`` dispatches on it).
    backbone: model -> its :class:`Backbone` (default: the model itself).
    text_config: config -> the backbone's config (default: the config itself).
    tower: model -> its :class:`ImageTower` (default: none).
    images: config -> its :class:`ImageAdapter` (None: a text family).
  """

  name: str
  read_config: Callable[[Mapping[str, Any]], Any]
  create: Callable[..., Any]
  load: Callable[..., Any]
  save: Callable[..., None]
  model_type: type
  backbone: Callable[[Any], Backbone] = _identity
  text_config: Callable[[Any], Any] = _identity
  tower: Callable[[Any], ImageTower | None] = _no_tower
  images: Callable[[Any], ImageAdapter] | None = None
