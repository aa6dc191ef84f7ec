"""One way to build a reranker: a :class:`RerankerSpec` says what it is, :func:`make_reranker`
creates it (random init, inside ``nnx.eval_shape`` or a jitted init alike) and
:func:`load_base_weights` reads the checkpoint weights it starts from.

Training (sharded ``jit(init)``), the playground base's pre-training, :func:`build_reranker`
(eager, for notebooks, benchmarks and ``load_reranker``) all construct through here, so a new
backbone is added in ``decomp/models/`` and wired in one place.

A base checkpoint is an HF decoder directory (``config.json`` + safetensors + tokenizer),
optionally with ``multimodal.json`` / ``multimodal.safetensors`` holding a ViT and projector, or
a Qwen2-VL / Qwen2.5-VL / Qwen3-VL directory (``RerankerSpec.vl``): its language model becomes
the reranker's decoder and its native vision tower the image encoder.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from decomp.models.config import DecoderConfig
from decomp.models.decoder import Decoder
from decomp.models.lora import apply_lora
from decomp.models.qwen_vl import QwenVL, QwenVLConfig, vl_architecture_of
from decomp.models.reranker import Reranker
from decomp.models.vision import Projector, VisionConfig, VisionEncoder

MULTIMODAL_CONFIG = 'multimodal.json'
MULTIMODAL_WEIGHTS = 'multimodal.safetensors'
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


@dataclasses.dataclass(frozen=True)
class LoraSpec:
  rank: int = 16
  alpha: float = 32.0
  targets: tuple[str, ...] = ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj',
                              'down_proj')
  vision: bool = False  # adapters on a native Qwen-VL tower's attention and MLP too


@dataclasses.dataclass(frozen=True)
class RerankerSpec:
  """What a reranker is, before any weight exists.

  Attributes:
    decoder: the decoder's shape.
    label_ids: label token ids (yes first, no second, more allowed).
    vision: the LLaVA ViT's shape (None: text only, or a ``vl`` model's own tower).
    image_token_id: the image placeholder token (required with ``vision``; a ``vl`` model's
      comes from its config).
    checkpoint: a base-checkpoint directory whose weights initialise the decoder (None: random).
    vision_pretrained: the checkpoint's ``multimodal.safetensors`` holds the ViT + projector
      (else a vision tower starts random).
    label_pooling, label_head: see :class:`~decomp.models.reranker.Reranker`.
    projection: add the learnable projection direction ``r``.
    lora: LoRA adapters on the decoder (None: none).
    dtype, param_dtype: names in :data:`DTYPES`.
    vl: a Qwen-VL model's config: ``decoder`` must be its text config; the reranker reads images
      with the model's native tower (M-RoPE positions, no projector).
  """

  decoder: DecoderConfig
  label_ids: tuple[int, ...]
  vision: VisionConfig | None = None
  image_token_id: int | None = None
  checkpoint: str | None = None
  vision_pretrained: bool = False
  label_pooling: str = 'first'
  label_head: str = 'lm_head'
  projection: bool = False
  lora: LoraSpec | None = None
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  vl: QwenVLConfig | None = None

  def __post_init__(self):
    if self.vl is not None and (self.vision is not None or self.vl.text != self.decoder):
      raise ValueError('a RerankerSpec with vl reads images with the VL model\'s own tower: '
                       'decoder must be vl.text and vision None')


def vl_config(directory: str) -> QwenVLConfig | None:
  """The Qwen-VL config of a checkpoint directory, or None for any other model."""
  from decomp.models import hf
  path = os.path.join(directory, hf.CONFIG_NAME)
  try:
    with open(path, encoding='utf-8') as f:
      raw = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f'{path}: unreadable config ({e})') from None
  if vl_architecture_of(raw) is None:
    return None
  try:
    return QwenVLConfig.from_hf(raw)
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f'{path}: {e}') from None


def checkpoint_shapes(directory: str) -> tuple[DecoderConfig, VisionConfig | None]:
  """The decoder and (if present) ViT shapes of a base-checkpoint directory, from its JSON files
  alone (no weight is read)."""
  from decomp.models import hf
  dconfig = hf.read_config(directory)
  mm_config = os.path.join(directory, MULTIMODAL_CONFIG)
  if not os.path.exists(mm_config):
    return dconfig, None
  try:
    with open(mm_config) as f:
      meta = json.load(f)
    return dconfig, VisionConfig(**meta['vision'])
  except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
    raise ValueError(f'{mm_config}: bad vision config ({e})') from None


def make_reranker(spec: RerankerSpec, rngs: nnx.Rngs, base: Mapping[str, Any] | None = None
                  ) -> Reranker:
  """The reranker of ``spec``, randomly initialised from ``rngs``, then overwritten by ``base``
  (what :func:`load_base_weights` returns) where given. LoRA adapters, a fresh projector, the
  random label rows and the projection vector always come from ``rngs``.

  Pure construction: call it inside ``nnx.eval_shape`` for shapes, inside ``jax.jit`` for a
  sharded init, or eagerly.
  """
  dtype, param_dtype = DTYPES[spec.dtype], DTYPES[spec.param_dtype]
  if spec.vl is not None:
    return _make_vl_reranker(spec, rngs, base)
  decoder = Decoder(spec.decoder, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
  if base is not None:
    nnx.update(decoder, base['decoder'])
  vision = projector = None
  if spec.vision is not None:
    vision = VisionEncoder(spec.vision, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    projector = Projector(spec.vision.hidden_size, spec.decoder.hidden_size, dtype=dtype,
                          param_dtype=param_dtype, rngs=rngs)
    if base is not None and base.get('multimodal') is not None:
      assign_multimodal(vision, projector, base['multimodal'])
  model = Reranker(decoder, spec.label_ids, vision=vision, projector=projector,
                   image_token_id=spec.image_token_id, projection_direction=spec.projection,
                   label_pooling=spec.label_pooling, label_head=spec.label_head, rngs=rngs)
  if spec.lora is not None:
    apply_lora(model.decoder, rank=spec.lora.rank, alpha=spec.lora.alpha,
               targets=spec.lora.targets, rngs=rngs)
  return model


def _make_vl_reranker(spec: RerankerSpec, rngs: nnx.Rngs, base) -> Reranker:
  """A Qwen-VL reranker: the VL model's decoder and native tower (weights from ``base['vl']``)."""
  dtype, param_dtype = DTYPES[spec.dtype], DTYPES[spec.param_dtype]
  vl = QwenVL(spec.vl, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
  if base is not None:
    nnx.update(vl, base['vl'])
  model = Reranker(vl.decoder, spec.label_ids, vision=vl.visual,
                   image_token_id=spec.vl.image_token_id, projection_direction=spec.projection,
                   label_pooling=spec.label_pooling, label_head=spec.label_head, rngs=rngs)
  if spec.lora is not None:
    apply_lora(model.decoder, rank=spec.lora.rank, alpha=spec.lora.alpha,
               targets=spec.lora.targets, rngs=rngs)
    if spec.lora.vision:
      from decomp.models.vision_lora import apply_vision_lora
      apply_vision_lora(model.vision, rank=spec.lora.rank, alpha=spec.lora.alpha, rngs=rngs)
  return model


def load_base_weights(spec: RerankerSpec, mesh=None, rules=None) -> dict[str, Any] | None:
  """The checkpoint weights ``spec`` starts from (None for random init): the decoder's nnx state
  and, with ``vision_pretrained``, the ViT + projector tensors (a Qwen-VL model: its whole
  state); on ``mesh`` when given."""
  if spec.checkpoint is None:
    return None
  if spec.vl is not None:
    from decomp.models.qwen_vl_hf import load_vl_pretrained
    vl = load_vl_pretrained(spec.checkpoint, dtype=DTYPES[spec.dtype],
                            param_dtype=DTYPES[spec.param_dtype], mesh=mesh, rules=rules)
    return {'vl': nnx.state(vl)}
  from decomp.models import hf
  decoder = hf.load_pretrained(spec.checkpoint, dtype=DTYPES[spec.dtype],
                               param_dtype=DTYPES[spec.param_dtype], mesh=mesh, rules=rules)
  base = {'decoder': nnx.state(decoder)}
  if spec.vision_pretrained:
    from safetensors.numpy import load_file
    weights_path = os.path.join(spec.checkpoint, MULTIMODAL_WEIGHTS)
    try:
      tensors = load_file(weights_path)
    except Exception as e:
      raise ValueError(f'{weights_path}: missing, corrupt or unreadable ({e})') from e
    if mesh is not None:
      replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
      tensors = {k: jax.device_put(v, replicated) for k, v in tensors.items()}
    base['multimodal'] = tensors
  return base


def build_reranker(spec: RerankerSpec, *, seed: int = 0) -> Reranker:
  """The reranker of ``spec`` with its checkpoint weights, built eagerly on the default device."""
  return make_reranker(spec, nnx.Rngs(seed), load_base_weights(spec))


def multimodal_tensors(vision: VisionEncoder, projector: Projector) -> dict[str, np.ndarray]:
  """Flat ``{'vision.<path>' / 'projector.<path>': array}`` of the ViT and projector weights."""
  out = {}
  for prefix, module in (('vision', vision), ('projector', projector)):
    for path, value in nnx.to_flat_state(nnx.state(module, nnx.Param)):
      name = prefix + '.' + '.'.join(str(k) for k in path)
      out[name] = np.asarray(jax.device_get(value.get_value()))
  return out


def save_multimodal(directory: str, vision: VisionEncoder, projector: Projector,
                    image_token_id: int) -> None:
  """Writes the ViT + projector beside a decoder checkpoint (``multimodal.*``)."""
  from safetensors.numpy import save_file
  save_file(multimodal_tensors(vision, projector), os.path.join(directory, MULTIMODAL_WEIGHTS))
  with open(os.path.join(directory, MULTIMODAL_CONFIG), 'w') as f:
    json.dump({'vision': dataclasses.asdict(vision.config), 'image_token_id': image_token_id,
               'projector': 'llava_mlp2x_gelu'}, f, indent=2)


def assign_multimodal(vision: VisionEncoder, projector: Projector,
                      tensors: Mapping[str, Any]) -> None:
  """Overwrites the ViT and projector weights with ``tensors`` (names as
  :func:`multimodal_tensors` writes them), checking every name and shape."""
  for prefix, module in (('vision', vision), ('projector', projector)):
    state = nnx.state(module, nnx.Param)
    flat = []
    for path, variable in nnx.to_flat_state(state):
      name = prefix + '.' + '.'.join(str(k) for k in path)
      if name not in tensors:
        raise ValueError(f'{MULTIMODAL_WEIGHTS}: tensor {name!r} is missing')
      value = tensors[name]
      if tuple(value.shape) != tuple(variable.get_value().shape):
        raise ValueError(f'{MULTIMODAL_WEIGHTS}: tensor {name!r} has shape {value.shape}, '
                         f'expected {variable.get_value().shape}')
      flat.append((path, variable.replace(jnp.asarray(value, variable.get_value().dtype))))
    nnx.update(module, nnx.from_flat_state(flat))

