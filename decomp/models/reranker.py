"""The yes/no reranker: a decoder LM (+ optional image encoder) read out at the label tokens.

Only the label rows of the LM head are multiplied, ``z = h @ W_lm[[yes, no, ...]].T``; the full
vocabulary is computed only when an objective needs its log-normaliser. Prompts and their
encoding live in :mod:`decomp.models.prompt`.
"""

from __future__ import annotations

import json
import math
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from decomp.models.backbone import Backbone, ImageTower
from decomp.models.prompt import image_token_id, label_token_ids
from decomp.models.vision import ImageEncoder, Projector
from decomp.readout import LABEL_HEADS, LABEL_POOLINGS, Readout, readout_from_label_rows

Array = jax.Array


def _last_valid_index(attention_mask: Array) -> Array:
  """Index of the last valid token per row: ``[N, T] -> [N]`` (left or right padding)."""
  t = attention_mask.shape[-1]
  return t - 1 - jnp.argmax(attention_mask[:, ::-1].astype(bool), axis=-1)


class Reranker(nnx.Module):
  """A decoder LM (+ optional image encoder and projector) read out at the label tokens.

  Args:
    decoder: the language model, a :class:`~decomp.models.backbone.Backbone` (any family's).
    label_ids: label token ids, "yes" first, "no" second, more allowed.
    label_pooling: how the label logits become ``yes``/``no``
      (:func:`decomp.readout.pool_label_logits`): ``'first'`` reads the first two labels,
      ``'pairs'`` pools alternating positive/negative words by log-sum-exp.
    vision: an :class:`~decomp.models.vision.ImageEncoder` (LLaVA style, with ``projector``), or
      a family's own tower (an :class:`~decomp.models.backbone.ImageTower`, which outputs
      LM-width tokens); None: text only.
    projector: maps vision features to the LM width; default a fresh LLaVA :class:`Projector`
      (none for a native tower).
    image_token_id: the placeholder token id (required with ``vision``).
    label_head: where the label rows come from (:data:`decomp.readout.LABEL_HEADS`):
      ``'lm_head'`` reads the LM head's rows of ``label_ids``; ``'random'`` learns a fresh
      ``[K, d]`` matrix (rows ``~ N(0, 1/d)``) instead, so ``yes``/``no``, every weight, direction
      and ranking score read no label token (the paper's D_Rand). ``label_ids`` still fix K.
    projection_direction: add a learnable vector ``r ~ N(0, 1/d)`` and report
      ``extra_scores["projection"] = h @ r`` (a direction the yes/no scores do not read).
    rngs: initialisation randomness for the projector, the random label head and ``r``.
  """

  def __init__(self, decoder: Backbone, label_ids: Sequence[int], *, vision: ImageEncoder | None = None,
               projector: nnx.Module | None = None, image_token_id: int | None = None,
               projection_direction: bool = False, label_pooling: str = "first",
               label_head: str = "lm_head", rngs: nnx.Rngs):
    label_ids = tuple(int(i) for i in label_ids)
    if len(label_ids) < 2:
      raise ValueError(f"label_ids needs at least yes and no, got {label_ids}")
    if label_pooling not in LABEL_POOLINGS:
      raise ValueError(f"unknown label_pooling {label_pooling!r}; known: {LABEL_POOLINGS}")
    if label_pooling == "pairs" and len(label_ids) % 2:
      raise ValueError(f"label_pooling='pairs' needs an even number of labels (positive, negative "
                       f"pairs), got {len(label_ids)}")
    if label_head not in LABEL_HEADS:
      raise ValueError(f"unknown label_head {label_head!r}; known: {LABEL_HEADS}")
    vocab_size = decoder.config.vocab_size
    bad = [i for i in label_ids if not 0 <= i < vocab_size]
    if bad:
      raise ValueError(f"label ids {bad} are outside the vocabulary [0, {vocab_size})")
    self.decoder = decoder
    self.label_ids = label_ids
    self.label_pooling = label_pooling
    d = decoder.config.hidden_size
    self.vision = vision
    if vision is not None:
      if image_token_id is None:
        raise ValueError("a Reranker with a vision encoder needs image_token_id")
      if not 0 <= image_token_id < vocab_size:
        raise ValueError(f"image_token_id {image_token_id} is outside the vocabulary")
      if projector is None and not isinstance(vision, ImageTower):
        projector = Projector(vision.hidden_size, d, dtype=decoder.dtype, rngs=rngs)
    self.projector = projector
    self.image_token_id = None if image_token_id is None else int(image_token_id)
    self.projection = (nnx.Param(jax.random.normal(rngs.params(), (d,), jnp.float32) / math.sqrt(d),
                                 out_sharding=("embed",), eager_sharding=False)
                       if projection_direction else None)
    self.random_label_rows = (
        nnx.Param(jax.random.normal(rngs.params(), (len(label_ids), d), jnp.float32)
                  / math.sqrt(d), out_sharding=(None, "embed"), eager_sharding=False)
        if label_head == "random" else None)

  def label_rows(self) -> Array:
    """The label rows ``[K, d]`` every score reads: the LM head's rows of the label tokens, or
    the learned random rows with ``label_head='random'``."""
    if self.random_label_rows is not None:
      return self.random_label_rows[...]
    return self.decoder.lm_head_rows(jnp.asarray(self.label_ids, jnp.int32))

  @property
  def native_vision(self) -> bool:
    """The vision tower is a family's own (patches in, LM-width tokens out, no projector)."""
    return isinstance(self.vision, ImageTower)

  def embed_with_images(self, input_ids: Array, pixel_values: Array,
                         image_valid: Array | None) -> tuple[Array, list[Array]]:
    """Token embeddings ``[N, T, d]`` with image features scattered onto the placeholders, and
    the per-layer residuals ``[N, T, d]`` a family's tower may add (else ``[]``).

    The k-th placeholder of a row takes the k-th feature vector of the row's images laid end to
    end (``[M * P, d]``), a gather by cumulative count, so shapes stay static under jit. Rows
    must hold ``P`` placeholders per valid image (``encode_groups`` guarantees it); extra
    placeholders reuse the last feature vector. ``pixel_values`` is ``[N, M, H, W, 3]`` for a
    LLaVA encoder, ``[N, M, patches, patch_dim]`` for a family's own tower.
    """
    n, t = input_ids.shape
    m = pixel_values.shape[1]
    flat = pixel_values.reshape((n * m,) + pixel_values.shape[2:])
    if self.native_vision:
      feats, deepstack = self.vision.image_features(flat)
    else:
      feats, deepstack = self.projector(self.vision(flat)), []  # [N*M, P, d]
    p, d = feats.shape[1], feats.shape[2]
    embeds = self.decoder.embed(input_ids)
    is_image = input_ids == self.image_token_id
    index = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, m * p - 1)
    valid = None if image_valid is None else image_valid.reshape(n, m)[:, :, None, None]

    def scatter(features, base):
      features = features.reshape(n, m, p, d)
      if valid is not None:
        features = jnp.where(valid, features, 0)
      gathered = jnp.take_along_axis(features.reshape(n, m * p, d), index[:, :, None], axis=1)
      return jnp.where(is_image[:, :, None], gathered.astype(embeds.dtype), base)

    zeros = jnp.zeros((), embeds.dtype)
    return scatter(feats, embeds), [scatter(f, zeros) for f in deepstack]

  def _check_placeholders(self, ids: Array, valid: Array | None, slots: int,
                          pixels_per_image: int) -> None:
    """Outside jit (concrete arrays), each row must hold ``num_patches`` placeholders per valid
    image: a prompt encoded with another ``image_tokens`` would otherwise reuse features."""
    if any(isinstance(x, jax.core.Tracer) for x in (ids, valid)):
      return
    per_image = (self.vision.tokens_per_image(pixels_per_image) if self.native_vision
                 else self.vision.num_patches)
    counts = np.asarray(ids == self.image_token_id).sum(-1)
    images = (np.full(counts.shape, slots) if valid is None else np.asarray(valid).sum(-1))
    bad = np.nonzero(counts != images * per_image)[0]
    if bad.size:
      i = int(bad[0])
      raise ValueError(
          f"prompt {i} has {int(counts[i])} image placeholder tokens for {int(images[i])} "
          f"image(s) of {per_image} visual tokens each; encode prompts with "
          f"image_tokens={per_image}")

  def readout_from_hidden(self, hidden: Array, *, needs=frozenset()) -> Readout:
    """The readout of answer-position hidden states ``[..., d]``: label logits pooled into
    ``yes``/``no``, plus what ``needs`` asks for (:data:`decomp.readout.READOUT_NEEDS`): the
    full-vocabulary log-normaliser (``'log_normalizer'``, the only case in which the whole LM
    head is multiplied) and, when the model has one, the projection score (always reported).

    The one map from ``h`` to a readout: the forward pass, the diagnostics and the per-example
    gradient norms all go through it.
    """
    lognorm = self.decoder.log_normalizer(hidden) if "log_normalizer" in needs else None
    projection = None if self.projection is None else self.projection[...]
    return readout_from_label_rows(hidden, self.label_rows(), pooling=self.label_pooling,
                                   log_normalizer=lognorm, projection=projection)

  def readout(self, input_ids: Array, attention_mask: Array, pixel_values: Array | None = None,
              image_valid: Array | None = None, *, positions: Array | None = None,
              needs=frozenset()) -> Readout:
    """Label-token logits at the answer position (the last valid token).

    Args:
      input_ids: ``[..., T]`` int token ids (left or right padded).
      attention_mask: ``[..., T]``, 1 for tokens, 0 for padding.
      pixel_values: ``[..., M, H, W, 3]`` preprocessed images, or ``[..., M, patches,
        patch_dim]`` for a family's own tower (None: text only).
      image_valid: ``[..., M]`` bool, which image slots hold an image.
      positions: ``[..., S, T]`` position streams of a family whose images need them (its
        :class:`~decomp.models.backbone.ImageAdapter`), None: ``cumsum(mask) - 1``.
      needs: readout fields beyond the label logits (:meth:`readout_from_hidden`).

    Returns:
      :class:`decomp.readout.Readout` with ``yes``/``no`` ``[...]`` float32, ``hidden``
      ``[..., d]``, ``log_normalizer`` ``[...]`` or None, and ``extra_scores`` holding
      ``"projection"`` (with ``projection_direction``) or None.
    """
    input_ids = jnp.asarray(input_ids)
    attention_mask = jnp.asarray(attention_mask)
    if input_ids.shape != attention_mask.shape:
      raise ValueError(f"input_ids {input_ids.shape} and attention_mask {attention_mask.shape} "
                       f"differ in shape")
    lead, t = input_ids.shape[:-1], input_ids.shape[-1]
    ids = input_ids.reshape(-1, t)
    mask = attention_mask.reshape(-1, t)
    if pixel_values is not None:
      if self.vision is None:
        raise ValueError("pixel_values given but this Reranker has no vision encoder")
      pixel_values = jnp.asarray(pixel_values)
      image_dims = 3 if self.native_vision else 4
      if pixel_values.shape[:len(lead)] != lead or pixel_values.ndim != len(lead) + image_dims:
        expected = "M, patches, patch_dim" if self.native_vision else "M, H, W, 3"
        raise ValueError(f"pixel_values must be [..., {expected}] with leading dims {lead}, got "
                         f"{pixel_values.shape}")
      pixels = pixel_values.reshape((ids.shape[0],) + pixel_values.shape[len(lead):])
      valid = None if image_valid is None else jnp.asarray(image_valid).reshape(
          ids.shape[0], pixels.shape[1])
      self._check_placeholders(ids, valid, pixels.shape[1], pixels.shape[2])
      embeds, residuals = self.embed_with_images(ids, pixels, valid)
    else:
      embeds, residuals = None, []
    if positions is not None:
      positions = jnp.asarray(positions)
      if positions.shape[:len(lead)] != lead or positions.shape[len(lead) + 1:] != (t,):
        raise ValueError(f"positions must be [..., S, T] with [...] = {lead} and T = {t}, got "
                         f"{positions.shape}")
      streams = positions.shape[len(lead)]
      positions = jnp.moveaxis(positions.reshape(-1, streams, t), 1, 0)  # [S, N, T]
    # Only the answer position goes through the last layer past its keys/values.
    h_last = self.decoder.hidden_states(ids, mask, inputs_embeds=embeds, positions=positions,
                                        layer_residuals=residuals,
                                        at_index=_last_valid_index(mask))  # [N, d]
    out = self.readout_from_hidden(h_last, needs=needs)
    return jax.tree.map(lambda x: x.reshape(lead + x.shape[1:]), out)

  def __call__(self, *args, **kwargs) -> Readout:
    return self.readout(*args, **kwargs)


# Saved by a plain `tokenizers` pipeline (e.g. the playground's word-level tokenizer).
_GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_tokenizer(path: str):
  """A transformers tokenizer from a local directory.

  A directory whose ``tokenizer_config.json`` names a generic class (a custom ``tokenizer.json``)
  is loaded with ``PreTrainedTokenizerFast``: ``AutoTokenizer`` would follow the ``model_type``
  of a ``config.json`` beside it (e.g. ``qwen2``) and silently rebuild a different (BPE)
  tokenizer from the vocabulary. Everything else goes through ``AutoTokenizer``.
  """
  import transformers  # local: only loading needs it

  if not os.path.isdir(path):
    raise ValueError(f"could not load a tokenizer from {path}: not a directory")
  tokenizer_class = None
  config_file = os.path.join(path, "tokenizer_config.json")
  if os.path.isfile(config_file):
    try:
      with open(config_file) as f:
        tokenizer_class = json.load(f).get("tokenizer_class")
    except (json.JSONDecodeError, OSError) as e:
      raise ValueError(f"{config_file}: unreadable tokenizer config ({e})") from e
  try:
    if (tokenizer_class in _GENERIC_TOKENIZER_CLASSES
        and os.path.isfile(os.path.join(path, "tokenizer.json"))):
      return transformers.PreTrainedTokenizerFast.from_pretrained(path)
    return transformers.AutoTokenizer.from_pretrained(path)
  except Exception as e:
    raise ValueError(f"could not load a tokenizer from {path} ({e})") from e


def load_reranker(path: str, tokenizer_path: str | None = None, *, dtype=jnp.float32,
                  param_dtype=None, vision_path: str | None = None,
                  feature_layer: int | None = -2, label_words: Sequence[str] = ("yes", "no"),
                  label_pooling: str = "first", label_head: str = "lm_head",
                  image_token: str | None = None, projection_direction: bool = False,
                  mesh: jax.sharding.Mesh | None = None, rules=None, remat: str | bool = "none",
                  seed: int = 0):
  """The one-call user path: a text checkpoint dir of any family in
  :data:`decomp.models.families.FAMILIES` (+ optional SigLIP/CLIP dir) -> ``(reranker,
  tokenizer)``.

  The tokenizer comes from ``tokenizer_path`` (default ``path``) via :func:`load_tokenizer`; label ids are resolved with :func:`label_token_ids`. With ``vision_path``,
  the image placeholder token must exist in the tokenizer (see :func:`image_token_id`) and the
  LLaVA projector starts random (it is trained). ``feature_layer=-2`` takes LLaVA's
  penultimate-layer image features.
  """
  from decomp.models import families
  from decomp.models.sharding import shard_model
  from decomp.models.vision import load_vision_pretrained

  tokenizer = load_tokenizer(tokenizer_path or path)
  labels = label_token_ids(tokenizer, label_words)
  family, _ = families.read_checkpoint(path)
  decoder = family.backbone(family.load(path, dtype=dtype, param_dtype=param_dtype, mesh=mesh,
                                        rules=rules, remat=remat))
  vision, image_id = None, None
  if vision_path is not None:
    image_id = image_token_id(tokenizer, image_token)
    vision = load_vision_pretrained(vision_path, dtype=dtype, param_dtype=param_dtype,
                                    feature_layer=feature_layer, mesh=mesh, rules=rules)
  reranker = Reranker(decoder, labels, vision=vision, image_token_id=image_id,
                      projection_direction=projection_direction, label_pooling=label_pooling,
                      label_head=label_head, rngs=nnx.Rngs(seed))
  if mesh is not None:
    shard_model(reranker, mesh, rules)
  return reranker, tokenizer
