"""From a TrainConfig to the reranker it trains: tokenizer, spec, and the sharded train state.

* :func:`resolve_tokenizer` and :func:`model_shapes` read the tokenizer and the model's shapes
  from JSON alone (no weights), so the data can be built first;
* :func:`reranker_spec` -> :class:`~decomp.models.build.RerankerSpec` (what the model is);
* :func:`build_model_state` -> :class:`ModelState`: the reranker split into ``graphdef``,
  trainable ``params`` and ``frozen`` state, created directly sharded
  (``nnx.eval_shape`` -> shardings from logical names -> ``jit(init, out_shardings=...)``).

The engine knows two kinds of model: a checkpoint directory (HF decoder ``config.json`` +
safetensors + tokenizer, optionally ``multimodal.*`` with a ViT + projector), or none (``None``:
random weights of the config's shape). ``model=playground`` is resolved to its directory by the
entry points (:func:`decomp.playground.base.model_directory`), never here.
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

def checkpoint_directory(cfg: config_lib.TrainConfig) -> str:
  """``model.path`` as a checkpoint directory (checked: it exists and holds a model)."""
  path = cfg.model.path
  if not os.path.isdir(path):
    raise FileNotFoundError(f'config model.path={path!r}: not "playground", "random" or an '
                            'existing directory')
  return path


TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'vocab.json', 'tokenizer.model')


def shape_directory(cfg: config_lib.TrainConfig) -> str | None:
  """The checkpoint directory a config's *shapes* and tokenizer come from: None for a
  random-shape model (``random``, and ``playground``, whose base has the config's shape and the
  built-in tokenizer), else ``model.path``."""
  return None if cfg.model.is_random_shape else checkpoint_directory(cfg)


def data_shapes(cfg: config_lib.TrainConfig, tokenizer) -> 'ModelShapes':
  """The model's shapes as far as the data needs them, from JSON alone (no base is built)."""
  return model_shapes(cfg, tokenizer, shape_directory(cfg))


_SHAPE_DIRECTORY = object()


def resolve_tokenizer(cfg: config_lib.TrainConfig, directory=_SHAPE_DIRECTORY):
  """``model.tokenizer``, else the checkpoint directory's own tokenizer, else (random weights)
  the built-in tokenizer of random shapes (which the playground base saves too). A checkpoint directory without tokenizer files is refused: another
  tokenizer would silently map the text to the wrong embeddings."""
  if directory is _SHAPE_DIRECTORY:
    directory = shape_directory(cfg)
  if cfg.model.tokenizer:
    return load_tokenizer(cfg.model.tokenizer)
  if directory is None:
    return load_tokenizer(cache.playground_tokenizer_dir())
  if not any(os.path.exists(os.path.join(directory, f)) for f in TOKENIZER_FILES):
    raise FileNotFoundError(f'{directory} holds no tokenizer ({", ".join(TOKENIZER_FILES)}): '
                            'copy the model\'s tokenizer files there or set model.tokenizer=DIR')
  return load_tokenizer(directory)


def decoder_config(cfg: config_lib.TrainConfig, vocab_size: int) -> DecoderConfig:
  """The decoder shape of a random-shape model (Qwen2 layout; ``model`` checked its fields)."""
  return DecoderConfig(
      architecture='qwen2', vocab_size=vocab_size, hidden_size=cfg.model.hidden_size,
      intermediate_size=cfg.model.intermediate_size, num_layers=cfg.model.num_layers,
      num_heads=cfg.model.num_heads, num_kv_heads=cfg.model.num_kv_heads,
      head_dim=cfg.model.hidden_size // cfg.model.num_heads, attention_bias=True,
      max_position_embeddings=max(512, cfg.data.max_length), tie_word_embeddings=False)


def vision_config(cfg: config_lib.TrainConfig) -> VisionConfig:
  return VisionConfig(family='siglip', hidden_size=cfg.model.vision_hidden_size,
                      intermediate_size=4 * cfg.model.vision_hidden_size,
                      num_layers=cfg.model.vision_layers, num_heads=cfg.model.vision_heads,
                      image_size=cfg.model.image_size, patch_size=cfg.model.patch_size)


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
  given, else from the config (random weights; the shape a playground base is built with).

  What a model has follows what it is: a checkpoint with a vision tower reads images; a text
  checkpoint does not unless ``vision=true`` asks for a fresh ViT + projector.
  """
  if directory is None:
    vision = vision_config(cfg) if cfg.model.vision is not False else None
    return ModelShapes(decoder_config(cfg, len(tokenizer)), vision, False)
  family, config = read_checkpoint(directory)
  if family.images is not None:
    text = family.text_config(config)
    if tokenizer is not None and len(tokenizer) > text.vocab_size:
      raise ValueError(f'{directory}: the tokenizer has {len(tokenizer)} tokens but the model '
                       f'only {text.vocab_size} embeddings')
    return ModelShapes(text, None, False, family_config=config,
                       images=family.images(config) if cfg.model.vision is not False else None)
  dconfig, vconfig = checkpoint_shapes(directory)
  pretrained = vconfig is not None and cfg.model.vision is not False
  if cfg.model.vision is False:
    vconfig = None
  elif cfg.model.vision is True and vconfig is None:
    vconfig = vision_config(cfg)  # asked for: a fresh ViT + projector on a text checkpoint
  if tokenizer is not None and len(tokenizer) > dconfig.vocab_size:
    raise ValueError(f'{directory}: the tokenizer has {len(tokenizer)} tokens but the model '
                     f'only {dconfig.vocab_size} embeddings')
  return ModelShapes(dconfig, vconfig, pretrained)


def reranker_spec(cfg: config_lib.TrainConfig, tokenizer, shapes: ModelShapes,
                  objective: Objective, directory: str | None) -> RerankerSpec:
  """What the config's reranker is: shapes, label tokens, readout options, adapters.

  ``tokenizer=None`` (a checkpoint directory's shapes alone, for :mod:`decomp.plan`): the label
  words and image placeholder take ids 0, 1, ..., unchecked against a vocabulary."""
  vconfig = shapes.vision
  if vconfig is not None and vconfig.image_size != cfg.model.image_size:
    raise ValueError(f'config image_size={cfg.model.image_size} but the checkpoint ViT reads '
                     f'{vconfig.image_size}px images')
  if cfg.finetune.lora_vision and (shapes.family_config is None or cfg.finetune.mode != 'lora'):
    raise ValueError('config lora_vision=true: vision adapters need finetune=lora and a '
                     f'checkpoint with its own image tower (model={cfg.model.path!r})')
  if shapes.images is not None and tokenizer is not None:
    shapes.images.check(tokenizer, cfg.model.image_size)
  lora = (LoraSpec(cfg.finetune.lora_rank, cfg.finetune.lora_alpha,
                   tuple(cfg.finetune.lora_targets), cfg.finetune.lora_vision)
          if cfg.finetune.mode == 'lora' else None)
  words = config_lib.label_words(cfg)
  labels = (tuple(label_token_ids(tokenizer, words)) if tokenizer is not None
            else tuple(range(len(words))))
  image_id = None
  if vconfig is not None:
    image_id = image_token_id(tokenizer) if tokenizer is not None else len(words)
  return RerankerSpec(
      decoder=shapes.decoder, label_ids=labels, family_config=shapes.family_config,
      vision=vconfig, image_token_id=image_id,
      checkpoint=directory, vision_pretrained=shapes.vision_pretrained and directory is not None,
      label_pooling=cfg.readout.label_pooling, label_head=cfg.readout.label_head,
      projection='projection' in objective.needs, lora=lora, dtype=cfg.model.dtype,
      param_dtype=cfg.model.param_dtype, remat=cfg.parallel.remat)


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
  if cfg.finetune.mode == 'head':
    base = nnx.All(nnx.Param, is_lm_head)
  else:
    base = trainable_filter(lora=cfg.finetune.mode == 'lora', train_lm_head=cfg.finetune.lm_head)
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


def build_model_state(cfg: config_lib.TrainConfig, mesh, tokenizer, objective: Objective,
                      directory=_SHAPE_DIRECTORY) -> ModelState:
  """The reranker of ``cfg`` as sharded ``params``/``frozen`` states on ``mesh``.

  Random weights come from ``nnx.Rngs(cfg.seed)``; pretrained ones from ``directory`` (a
  checkpoint directory; None: the config's random shape, as for a run restored from its own
  checkpoint, which needs the shapes only). LoRA adapters, a fresh projector (when the checkpoint
  has none), a random label head and the projection direction are initialised from the seed
  too, inside the same jitted init.
  """
  if directory is _SHAPE_DIRECTORY:
    directory = shape_directory(cfg)
  rules = {**rules_for(cfg.parallel.layout), **{k: tuple(v) if isinstance(v, list) else v
                                       for k, v in cfg.parallel.axis_rules.items()}}
  spec = reranker_spec(cfg, tokenizer, model_shapes(cfg, tokenizer, directory), objective,
                       directory)
  keep = trainable(cfg)

  def init(base):
    _, params, frozen = nnx.split(make_reranker(spec, nnx.Rngs(cfg.seed), base), keep, ...)
    return params, frozen

  abstract = nnx.eval_shape(lambda: make_reranker(spec, nnx.Rngs(cfg.seed)))
  graphdef, abs_params, abs_frozen = nnx.split(abstract, keep, ...)
  if not jax.tree.leaves(abs_params):
    raise ValueError(f'config finetune.trains={cfg.finetune.trains!r}: nothing to train')
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
