"""One way to build a reranker: a :class:`RerankerSpec` says what it is, :func:`make_reranker`
creates it (random init, inside ``nnx.eval_shape`` or a jitted init alike) and
:func:`load_base_weights` reads the checkpoint weights it starts from.

Training (sharded ``jit(init)``), the playground base's pre-training, :func:`build_reranker`
(eager, for notebooks, benchmarks and ``load_reranker``) all construct through here, so a new
backbone is added in ``decomp/models/`` and wired in one place.

A base checkpoint is an HF directory of any family in :data:`decomp.models.families.FAMILIES`
(``config.json`` + safetensors + tokenizer): a text decoder, optionally with ``multimodal.json`` /
``multimodal.safetensors`` holding a LLaVA ViT and projector, or a model with its own image
tower (``RerankerSpec.family_config``): its language model becomes the reranker's decoder and
its tower the image encoder. Everything family-specific goes through the family's record.
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

from decomp.models.backbone import Family
from decomp.models.families import family_for, read_checkpoint
from decomp.models.lora import apply_lora
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
  vision: bool = False  # adapters on the family's own image tower too


@dataclasses.dataclass(frozen=True)
class RerankerSpec:
  """What a reranker is, before any weight exists.

  Attributes:
    decoder: the decoder's config (any family's).
    label_ids: label token ids (yes first, no second, more allowed).
    vision: the LLaVA ViT's shape (None: text only, or a ``family_config`` model's own tower).
    image_token_id: the image placeholder token (required with ``vision``; a
      ``family_config`` model's comes from its family).
    checkpoint: a base-checkpoint directory whose weights initialise the decoder (None: random).
    vision_pretrained: the checkpoint's ``multimodal.safetensors`` holds the ViT + projector
      (else a vision tower starts random).
    label_pooling, label_head: see :class:`~decomp.models.reranker.Reranker`.
    projection: add the learnable projection direction ``r``.
    lora: LoRA adapters on the decoder (None: none).
    dtype, param_dtype: names in :data:`DTYPES`.
    remat: what each decoder layer and vision block keeps for the backward pass
      (:data:`decomp.models.remat.REMAT_POLICIES`); the same values and gradients under each.
    family_config: the checkpoint family's config when it holds more than the decoder (a model
      with its own image tower): ``decoder`` must be its text config, and the reranker reads
      images with that tower (no projector). None: ``decoder`` is the whole model.
  """

  decoder: Any
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
  family_config: Any = None
  remat: str = 'none'

  def __post_init__(self):
    if self.family_config is not None and (
        self.vision is not None or self.family.text_config(self.family_config) != self.decoder):
      raise ValueError('a RerankerSpec with family_config reads images with the model\'s own '
                       'tower: decoder must be its text config and vision None')

  @property
  def config(self) -> Any:
    """The config the family builds from (``family_config``, else ``decoder``)."""
    return self.decoder if self.family_config is None else self.family_config

  @property
  def family(self) -> Family:
    return family_for(self.config)


def checkpoint_shapes(directory: str) -> tuple[Any, VisionConfig | None]:
  """The family's config and (if present) the LLaVA ViT shape of a base-checkpoint directory,
  from its JSON files alone (no weight is read)."""
  _, config = read_checkpoint(directory)
  mm_config = os.path.join(directory, MULTIMODAL_CONFIG)
  if not os.path.exists(mm_config):
    return config, None
  try:
    with open(mm_config) as f:
      meta = json.load(f)
    return config, VisionConfig(**meta['vision'])
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
  family = spec.family
  whole = family.create(spec.config, dtype=dtype, param_dtype=param_dtype, remat=spec.remat,
                        rngs=rngs)
  if base is not None:
    nnx.update(whole, base['model'])
  decoder, tower = family.backbone(whole), family.tower(whole)
  vision, projector, image_id = tower, None, spec.image_token_id
  if tower is not None:
    image_id = family.images(spec.config).image_token_id
  elif spec.vision is not None:
    vision = VisionEncoder(spec.vision, dtype=dtype, param_dtype=param_dtype, remat=spec.remat,
                           rngs=rngs)
    projector = Projector(spec.vision.hidden_size, decoder.config.hidden_size, dtype=dtype,
                          param_dtype=param_dtype, rngs=rngs)
    if base is not None and base.get('multimodal') is not None:
      assign_multimodal(vision, projector, base['multimodal'])
  model = Reranker(decoder, spec.label_ids, vision=vision, projector=projector,
                   image_token_id=image_id, projection_direction=spec.projection,
                   label_pooling=spec.label_pooling, label_head=spec.label_head, rngs=rngs)
  if spec.lora is not None:
    apply_lora(model.decoder, rank=spec.lora.rank, alpha=spec.lora.alpha,
               targets=spec.lora.targets, rngs=rngs)
    if spec.lora.vision:
      if tower is None:
        raise ValueError('LoraSpec(vision=True) needs a model with its own image tower')
      family.images(spec.config).apply_lora(model.vision, rank=spec.lora.rank,
                                            alpha=spec.lora.alpha, rngs=rngs)
  return model


def load_base_weights(spec: RerankerSpec, mesh=None, rules=None) -> dict[str, Any] | None:
  """The checkpoint weights ``spec`` starts from (None for random init): the family model's nnx
  state and, with ``vision_pretrained``, the LLaVA ViT + projector tensors; on ``mesh`` when
  given."""
  if spec.checkpoint is None:
    return None
  model = spec.family.load(spec.checkpoint, dtype=DTYPES[spec.dtype],
                           param_dtype=DTYPES[spec.param_dtype], mesh=mesh, rules=rules)
  base = {'model': nnx.state(model)}
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

