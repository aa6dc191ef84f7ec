"""From a TrainConfig to the reranker it trains: tokenizer, spec, and the sharded train state.

* :func:`tokenizer_and_shapes` resolves the tokenizer and the model's shapes from JSON alone
  (no weights, no base build), so the data can be built first;
* :func:`reranker_spec` -> :class:`~decomp.models.build.RerankerSpec` (what the model is);
* :func:`build_model_state` -> :class:`ModelState`: the reranker split into ``graphdef``,
  trainable ``params`` and ``frozen`` state, created directly sharded
  (``nnx.eval_shape`` -> shardings from logical names -> ``jit(init, out_shardings=...)``).

Models: ``'random'`` (random weights of the config's shape), ``'playground'`` (the cached base
checkpoint of :mod:`decomp.train.pretrain`), or a base-checkpoint directory (HF decoder
``config.json`` + safetensors + tokenizer, optionally ``multimodal.*`` with a ViT + projector).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping

import jax
from flax import nnx

from decomp.models import sharding as sharding_lib
from decomp.models.backbone import ImageAdapter
from decomp.models.build import (LoraSpec, RerankerSpec, checkpoint_shapes, load_base_weights,
                                 make_reranker)
from decomp.models.config import DecoderConfig
from decomp.models.families import read_checkpoint
from decomp.models.lora import is_lm_head, trainable_filter
from decomp.models.prompt import image_token_id, label_token_ids
from decomp.models.reranker import load_tokenizer
from decomp.models.vision import VisionConfig
from decomp.objectives import Objective
from decomp.train import cache
from decomp.train import config as config_lib

# Config fields that shape a 'random' / 'playground' model; a checkpoint directory has its own.
SHAPE_FIELDS = ('hidden_size', 'num_layers', 'num_heads', 'num_kv_heads', 'intermediate_size',
                'vision_hidden_size', 'vision_layers', 'vision_heads', 'patch_size')


def model_dir(cfg: config_lib.TrainConfig, *, build: bool = True) -> str | None:
  """The checkpoint directory the config trains from (None for random weights). The playground
  base is built (once, cached) unless ``build=False``."""
  if cfg.model == 'random':
    return None
  if cfg.model == 'playground':
    if not build:
      return None
    from decomp.train import pretrain
    return pretrain.base_checkpoint(cfg)
  if not os.path.isdir(cfg.model):
    raise FileNotFoundError(f'config model={cfg.model!r}: not "playground", "random" or an '
                            'existing directory')
  return cfg.model


def resolve_tokenizer(cfg: config_lib.TrainConfig):
  """``cfg.tokenizer``, else the model directory's tokenizer, else the playground's."""
  directory = model_dir(cfg, build=False)
  has_own = directory and any(os.path.exists(os.path.join(directory, f))
                              for f in ('tokenizer.json', 'tokenizer_config.json'))
  return load_tokenizer(cfg.tokenizer or (directory if has_own else
                                          cache.playground_tokenizer_dir()))


def decoder_config(cfg: config_lib.TrainConfig, vocab_size: int) -> DecoderConfig:
  """The decoder shape of a 'random' / playground model (Qwen2 layout)."""
  for key in ('hidden_size', 'num_layers', 'num_heads', 'num_kv_heads', 'intermediate_size'):
    if getattr(cfg, key) < 1:
      raise ValueError(f'config {key}={getattr(cfg, key)!r}: must be a positive integer')
  if cfg.hidden_size % cfg.num_heads or cfg.num_heads % cfg.num_kv_heads:
    raise ValueError(f'config hidden_size={cfg.hidden_size}, num_heads={cfg.num_heads}, '
                     f'num_kv_heads={cfg.num_kv_heads}: hidden_size must divide into num_heads '
                     'heads, and num_heads into num_kv_heads groups')
  return DecoderConfig(
      architecture='qwen2', vocab_size=vocab_size, hidden_size=cfg.hidden_size,
      intermediate_size=cfg.intermediate_size, num_layers=cfg.num_layers,
      num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
      head_dim=cfg.hidden_size // cfg.num_heads, attention_bias=True,
      max_position_embeddings=max(512, cfg.max_length), tie_word_embeddings=False)


def vision_config(cfg: config_lib.TrainConfig) -> VisionConfig:
  return VisionConfig(family='siglip', hidden_size=cfg.vision_hidden_size,
                      intermediate_size=4 * cfg.vision_hidden_size,
                      num_layers=cfg.vision_layers, num_heads=cfg.vision_heads,
                      image_size=cfg.image_size, patch_size=cfg.patch_size)


@dataclasses.dataclass(frozen=True)
class ModelShapes:
  decoder: Any  # the decoder's config (any family's)
  vision: VisionConfig | None  # a LLaVA ViT + projector
  vision_pretrained: bool  # the checkpoint carries the ViT + projector weights
  family_config: Any = None  # a checkpoint with its own image tower (decoder: its text config)
  images: ImageAdapter | None = None  # that tower reads the data's images through this

  @property
  def image_input(self) -> VisionConfig | ImageAdapter | None:
    """What the data must encode images for: the LLaVA ViT, a family's own tower, or None."""
    if self.family_config is not None:
      return self.images
    return self.vision


def model_shapes(cfg: config_lib.TrainConfig, tokenizer,
                 directory: str | None = None) -> ModelShapes:
  """The shapes of the config's model, from the checkpoint's JSON files when ``directory`` is
  given, else from the config (random init, or the playground base before it is built: its
  shapes are the config's).

  What a model has follows what it is: a checkpoint with a vision tower reads images; a text
  checkpoint does not unless ``vision=true`` asks for a fresh ViT + projector.
  """
  if directory is None:
    vision = vision_config(cfg) if cfg.vision is not False else None
    return ModelShapes(decoder_config(cfg, len(tokenizer)), vision,
                       vision is not None and cfg.model == 'playground')
  family, config = read_checkpoint(directory)
  if family.images is not None:
    text = family.text_config(config)
    if len(tokenizer) > text.vocab_size:
      raise ValueError(f'{directory}: the tokenizer has {len(tokenizer)} tokens but the model '
                       f'only {text.vocab_size} embeddings')
    return ModelShapes(text, None, False, family_config=config,
                       images=family.images(config) if cfg.vision is not False else None)
  dconfig, vconfig = checkpoint_shapes(directory)
  pretrained = vconfig is not None and cfg.vision is not False
  if cfg.vision is False:
    vconfig = None
  elif cfg.vision is True and vconfig is None:
    vconfig = vision_config(cfg)  # asked for: a fresh ViT + projector on a text checkpoint
  if len(tokenizer) > dconfig.vocab_size:
    raise ValueError(f'{directory}: the tokenizer has {len(tokenizer)} tokens but the model '
                     f'only {dconfig.vocab_size} embeddings')
  return ModelShapes(dconfig, vconfig, pretrained)


def data_shapes(cfg: config_lib.TrainConfig, tokenizer) -> ModelShapes:
  """The model's shapes as far as the data needs them, without building any base."""
  return model_shapes(cfg, tokenizer, model_dir(cfg, build=False))


def check_applies(cfg: config_lib.TrainConfig) -> None:
  """Refuses config fields that do not apply to the chosen model (a checkpoint has its own
  shape: setting one of the random/playground shape fields would be silently ignored)."""
  if cfg.model in ('random', 'playground'):
    return
  defaults = config_lib.TrainConfig()
  preset = config_lib.NAMED_CONFIGS.get(cfg.name)
  reference = preset() if preset else defaults
  changed = [k for k in SHAPE_FIELDS
             if getattr(cfg, k) not in (getattr(reference, k), getattr(defaults, k))]
  if changed:
    raise ValueError(f'config {", ".join(f"{k}={getattr(cfg, k)!r}" for k in changed)}: shape '
                     f'fields of random/playground models do not apply to model={cfg.model!r}, '
                     'whose checkpoint fixes its shape')


def reranker_spec(cfg: config_lib.TrainConfig, tokenizer, shapes: ModelShapes,
                  objective: Objective, directory: str | None) -> RerankerSpec:
  """What the config's reranker is: shapes, label tokens, readout options, adapters."""
  vconfig = shapes.vision
  if vconfig is not None and vconfig.image_size != cfg.image_size:
    raise ValueError(f'config image_size={cfg.image_size} but the checkpoint ViT reads '
                     f'{vconfig.image_size}px images')
  if cfg.lora_vision and (shapes.family_config is None or cfg.finetune != 'lora'):
    raise ValueError('config lora_vision=true: vision adapters need finetune=lora and a '
                     f'checkpoint with its own image tower (model={cfg.model!r})')
  if shapes.images is not None:
    shapes.images.check(tokenizer, cfg.image_size)
  lora = (LoraSpec(cfg.lora_rank, cfg.lora_alpha, tuple(cfg.lora_targets), cfg.lora_vision)
          if cfg.finetune == 'lora' else None)
  labels = tuple(label_token_ids(tokenizer, config_lib.label_words(cfg)))
  return RerankerSpec(
      decoder=shapes.decoder, label_ids=labels, family_config=shapes.family_config,
      vision=vconfig, image_token_id=image_token_id(tokenizer) if vconfig is not None else None,
      checkpoint=directory, vision_pretrained=shapes.vision_pretrained and directory is not None,
      label_pooling=cfg.label_pooling, label_head=cfg.label_head,
      projection='projection' in objective.needs, lora=lora, dtype=cfg.dtype,
      param_dtype=cfg.param_dtype)


def rules_for(layout: str) -> Mapping[str, Any]:
  """Logical-name rules of a layout: 'data' replicates every weight, 'tensor' splits heads/MLP/
  vocab over the 'model' axis, 'fsdp' additionally splits the model width over 'data'."""
  if layout == 'data':
    return {}
  if layout == 'fsdp':
    return dict(sharding_lib.FSDP_RULES)
  return dict(sharding_lib.DEFAULT_RULES)


def trainable(cfg: config_lib.TrainConfig):
  """The nnx filter of what the config trains (a random label head and the projection direction
  always train: they start random)."""
  if cfg.finetune == 'head':
    base = nnx.All(nnx.Param, is_lm_head)
  else:
    base = trainable_filter(lora=cfg.finetune == 'lora', train_lm_head=cfg.train_lm_head)
  return nnx.Any(base, nnx.All(nnx.Param, nnx.PathContains('projection')),
                 nnx.All(nnx.Param, nnx.PathContains('random_label_rows')))


@dataclasses.dataclass
class ModelState:
  """A reranker split for functional training, before any weight is allocated.

  ``params`` (trainable) and ``frozen`` are ``nnx.State`` of ``jax.ShapeDtypeStruct`` with their
  shardings (restore targets); ``initialize()`` creates the real, sharded states (random init
  and/or pretrained weights). ``graphdef`` rebuilds the :class:`~decomp.models.Reranker` with
  ``nnx.merge(graphdef, params, frozen)``; the model owns its readout.
  """
  graphdef: Any
  params: Any
  frozen: Any
  params_shardings: Any
  frozen_shardings: Any
  spec: RerankerSpec
  rules: Mapping[str, Any]
  initialize: Callable[[], tuple[Any, Any]]


def build_model_state(cfg: config_lib.TrainConfig, mesh, tokenizer, objective: Objective, *,
                      build_base: bool = True) -> ModelState:
  """The reranker of ``cfg`` as sharded ``params``/``frozen`` states on ``mesh``.

  Random weights come from ``nnx.Rngs(cfg.seed)``; pretrained ones from :func:`model_dir`.
  LoRA adapters, a fresh projector (when the checkpoint has none), a random label head and the
  projection direction are initialised from the seed too, inside the same jitted init.
  ``build_base=False``: a run restored from its own checkpoint needs the playground base's
  shapes, not its weights, so the base is not built for it (``initialize`` then starts random).
  """
  rules = {**rules_for(cfg.layout), **{k: tuple(v) if isinstance(v, list) else v
                                       for k, v in cfg.axis_rules.items()}}
  directory = model_dir(cfg, build=build_base)
  spec = reranker_spec(cfg, tokenizer, model_shapes(cfg, tokenizer, directory), objective,
                       directory)
  keep = trainable(cfg)

  def init(base):
    _, params, frozen = nnx.split(make_reranker(spec, nnx.Rngs(cfg.seed), base), keep, ...)
    return params, frozen

  abstract = nnx.eval_shape(lambda: make_reranker(spec, nnx.Rngs(cfg.seed)))
  graphdef, abs_params, abs_frozen = nnx.split(abstract, keep, ...)
  if not jax.tree.leaves(abs_params):
    raise ValueError(f'config finetune={cfg.finetune!r}, train_lm_head={cfg.train_lm_head}: '
                     'nothing to train')
  params_sh = sharding_lib.model_shardings(abs_params, mesh, rules)
  frozen_sh = sharding_lib.model_shardings(abs_frozen, mesh, rules)
  with_sharding = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)

  def initialize():
    base = load_base_weights(spec, mesh, rules)
    return jax.jit(init, out_shardings=(params_sh, frozen_sh))(base)

  return ModelState(graphdef=graphdef, params=jax.tree.map(with_sharding, abs_params, params_sh),
                    frozen=jax.tree.map(with_sharding, abs_frozen, frozen_sh),
                    params_shardings=params_sh, frozen_shardings=frozen_sh, spec=spec,
                    rules=rules, initialize=initialize)


def optimizer_shardings(tx, params, mesh, rules):
  """Shardings of ``tx.init(params)``: moment trees are ``nnx.State`` copies of the params (their
  Variables keep the logical names, so they shard like the params); counters are replicated."""
  abstract = jax.eval_shape(tx.init, params)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def one(leaf):
    if isinstance(leaf, nnx.Variable):
      names = sharding_lib.variable_names(leaf)
      shape = tuple(leaf.get_value().shape)
      if names is None:
        return leaf.replace(replicated)
      return leaf.replace(sharding_lib.logical_to_mesh_sharding(names, mesh, rules, shape=shape))
    return replicated

  return jax.tree.map(one, abstract, is_leaf=lambda x: isinstance(x, nnx.Variable))
