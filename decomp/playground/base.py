"""The base-checkpoint recipe: a short pre-training of a small backbone on the playground.

Probing runs (like the paper's) fine-tune a *pretrained* LM, not random weights. This recipe
trains the playground model (decoder + ViT + projector) with next-token prediction on the
playground's descriptions and captions, images included: each sequence is an image (as its
``image_tokens`` placeholders, replaced by projected ViT features) followed by its description,
or a description alone. The loss covers the text tokens only.

The result is saved in HF layout (decoder ``config.json`` + ``model.safetensors``, the tokenizer)
plus ``multimodal.json`` / ``multimodal.safetensors`` (ViT and projector) and ``pretrain.json``
(recipe and loss curve), under ``$DECOMP_CACHE/base-<hash>`` keyed by the recipe's fields: built
once, reused afterwards; the same seed gives the same weights.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from decomp import optim
from decomp.models import hf
from decomp.models.build import RerankerSpec, make_reranker, save_multimodal
from decomp.models.prompt import image_token_id, label_token_ids
from decomp.models.vision import image_preprocess
from decomp.playground.sequences import (MATCH_KINDS, PretrainStream, pretraining_world)
from decomp.train import cache
from decomp.train import config as config_lib
from decomp.train import logs
from decomp.train import state as state_lib

RECIPE_VERSION = 2  # 2: paraphrase and edit pairs
# List knobs added to the world after the recipe's keys were fixed: no base depends on them, so
# they stay out of the key and cached bases keep theirs.
NEWER_LIST_KNOBS = ('oracle_teacher',)
# The model fields that shape a base checkpoint; with the ``base`` section and the world they
# make its cache key.
SHAPE_FIELDS = ('hidden_size', 'num_layers', 'num_heads', 'num_kv_heads', 'intermediate_size',
                'vision_hidden_size', 'vision_layers', 'vision_heads', 'image_size', 'patch_size')


def recipe(cfg: config_lib.TrainConfig) -> dict[str, Any]:
  """The JSON-able recipe of ``cfg``'s base checkpoint. Its keys are the flat config's names
  (before config sections), so the bases cached by earlier versions keep their keys."""
  out = {k: getattr(cfg.model, k) for k in SHAPE_FIELDS}
  out.update(pretrain_steps=cfg.base.steps, pretrain_learning_rate=cfg.base.learning_rate,
             pretrain_batch_size=cfg.base.batch_size, base_seed=cfg.base.seed)
  out['vision'] = cfg.model.vision is not False  # 'auto' builds the multimodal base
  # The resolved world, not just the overrides: a changed default must not reuse a stale base.
  out['playground'] = {k: v for k, v in dataclasses.asdict(pretraining_world(cfg)).items()
                       if k not in NEWER_LIST_KNOBS}
  out['version'] = RECIPE_VERSION
  if cfg.base.qa_per_group:  # only when used: the keys of earlier bases stay valid
    out['pretrain_qa_per_group'] = cfg.base.qa_per_group
  if cfg.base.match_per_group:
    out['pretrain_match_per_group'] = cfg.base.match_per_group
  if cfg.base.vision_steps:
    out['pretrain_vision_steps'] = cfg.base.vision_steps
  if cfg.base.freeze_vision:
    out['pretrain_freeze_vision'] = True
  if cfg.base.match_format != 'words':
    out['pretrain_match_format'] = cfg.base.match_format
  if cfg.base.match_negatives != 'group':
    out['pretrain_match_negatives'] = cfg.base.match_negatives
  return out


# The code whose numerics a base's weights depend on (model, data, this recipe).
_SOURCE_DIRS = ('models', 'data', 'playground')
_SOURCE_FILES = ('optim.py', 'readout.py')


def source_fingerprint() -> str:
  """A hash of the library sources a base build runs through (model, data, recipe code).

  The cache key is the recipe, not the code: a base built before a numerics-changing edit (even
  a reordered float sum) is reused, and training on it no longer matches what a fresh machine
  builds. The fingerprint, stored with the base, lets :func:`base_checkpoint` say so.
  """
  import hashlib
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  paths = [os.path.join(root, f) for f in _SOURCE_FILES]
  for d in _SOURCE_DIRS:
    for folder, _, files in os.walk(os.path.join(root, d)):
      paths += [os.path.join(folder, f) for f in files if f.endswith('.py')]
  digest = hashlib.sha256()
  for path in sorted(paths):
    digest.update(os.path.relpath(path, root).encode())
    with open(path, 'rb') as f:
      digest.update(f.read())
  return digest.hexdigest()[:16]


def base_checkpoint(cfg: config_lib.TrainConfig, *, quiet: bool | None = None) -> str:
  """The directory of ``cfg``'s pretrained base (built now if it is not cached).

  A cached base built by other library sources is still used (a sweep keeps one base), with a
  warning: delete the directory (or point ``DECOMP_CACHE`` elsewhere) to rebuild it.
  """
  spec = recipe(cfg)
  path = os.path.join(cache.cache_dir(), f'base-{config_lib.config_hash(spec)}')
  quiet = cfg.eval_log.quiet if quiet is None else quiet
  path = cache.build_once(path, lambda d: build(cfg, d, quiet=quiet))
  try:
    built_by = logs.read_json(os.path.join(path, 'pretrain.json')).get('source_fingerprint')
  except (OSError, ValueError):
    built_by = None
  current = source_fingerprint()
  if built_by != current:
    how = ('before decomp recorded source fingerprints' if built_by is None else
           f'by other decomp sources (fingerprint {built_by}, now {current})')
    warnings.warn(f'the cached base {path} was built {how}: runs on it may not match a fresh '
                  'build; delete it to rebuild', stacklevel=2)
  return path


def next_token_logits(model, batch: dict[str, Any]):
  """The LM's logits ``[B, T, V]`` on a pre-training batch, its images (if any) in place."""
  if 'pixel_values' in batch:
    embeds, _ = model.embed_with_images(batch['input_ids'], batch['pixel_values'],
                                        batch['image_valid'])
    return model.decoder(None, batch['attention_mask'], inputs_embeds=embeds)
  return model.decoder(batch['input_ids'], batch['attention_mask'])


def lm_loss(model, batch: dict[str, Any]):
  """The recipe's loss: next-token cross-entropy averaged over ``batch['loss_mask']`` (weights)."""
  logits = next_token_logits(model, batch)
  targets = jnp.roll(batch['input_ids'], -1, axis=1)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  weight = batch['loss_mask']
  return jnp.sum(nll * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def matching_accuracy(cfg: config_lib.TrainConfig, model, tokenizer, vision_config, *,
                      questions: int = 256) -> dict[str, float]:
  """The base's accuracy on ``questions`` held-out matching questions of each kind (validation
  scenes, half true): ``P(yes) > P(no)`` at the answer position. 0.5 is chance; it says how much
  of the matching the reranking task needs the base brings with it."""
  yes, no = label_token_ids(tokenizer)[:2]

  @jax.jit
  def answer_logits(batch):
    return next_token_logits(model, batch)[..., jnp.array([yes, no])]

  out = {}
  kinds = MATCH_KINDS if vision_config is not None else ('text-text',)
  for kind in kinds:
    stream = PretrainStream(cfg, tokenizer, vision_config.num_patches if vision_config else 0,
                        vision_config, split='val', match_kinds=(kind,))
    batch = stream.batch(questions)
    logits = np.asarray(answer_logits(batch))
    rows, cols = np.nonzero(batch['loss_mask'])  # the position that predicts the answer
    said_yes = logits[rows, cols, 0] > logits[rows, cols, 1]
    truth = batch['input_ids'][rows, cols + 1] == yes
    out[kind] = float(np.mean(said_yes == truth))
  return out


def image_reading(cfg: config_lib.TrainConfig, model, tokenizer, vision_config, *,
                  rows: int = 256) -> dict[str, float]:
  """Does the base read its images? The mean caption loss (nats per token) of ``rows`` held-out
  captions (validation scenes) after their own image and after another row's image. Equal
  losses mean the LM ignores the image tokens (the collapse ``base.freeze_vision``
  prevents); the gap is what the images tell it."""
  captions_only = config_lib.replace(cfg, base={'match_per_group': 0, 'qa_per_group': 0})
  stream = PretrainStream(captions_only, tokenizer, vision_config.num_patches, vision_config,
                      split='val')
  parts = []
  while sum(len(p['input_ids']) for p in parts) < rows:
    batch = stream.batch(64)
    keep = batch['image_valid'][:, 0]
    parts.append({k: v[keep] for k, v in batch.items()})
  batch = {k: np.concatenate([p[k] for p in parts])[:rows] for k in parts[0]}

  caption_loss = jax.jit(lambda batch: lm_loss(model, batch))
  shuffled = dict(batch, pixel_values=np.roll(batch['pixel_values'], 1, axis=0))
  return {'own_image': float(caption_loss(batch)), 'other_image': float(caption_loss(shuffled))}


def pretrain_tower(cfg: config_lib.TrainConfig, vision, *, batch_size: int = 64,
                   learning_rate: float = 3e-3, eval_images: int = 512
                   ) -> dict[str, dict[str, float]]:
  """Trains the ViT ``vision`` in place to name each attribute of rendered training scenes (a
  linear head per attribute on its mean patch feature, discarded afterwards): the supervised
  tower a VLM starts from (SigLIP, an ImageNet ViT) before its LM learns to read it. Returns the
  accuracy per attribute on ``eval_images`` fresh renders of training scenes and of validation
  scenes (``{'train_scenes': {...}, 'held_out_pairs': {...}}``)."""
  from decomp.data.playground import render, world
  playground = pretraining_world(cfg)
  pools = world.split_pools(playground.num_values, val_pairs=playground.val_pairs,
                            test_pairs=playground.test_pairs, seed=playground.seed)
  vconfig = vision.config
  offsets = np.cumsum((0,) + tuple(playground.num_values))
  heads = nnx.Linear(vconfig.hidden_size, int(offsets[-1]), rngs=nnx.Rngs(cfg.base.seed + 1))
  tower = nnx.List([vision, heads])
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(
      0.0, learning_rate, max(cfg.base.vision_steps // 10, 1),
      max(cfg.base.vision_steps, 2), learning_rate * 0.1), weight_decay=0.01)
  graphdef, params = nnx.split(tower)
  opt_state = tx.init(params)

  def attribute_logits(params, pixels):
    vit, linear = nnx.merge(graphdef, params)
    return linear(vit(pixels).mean(axis=1))

  def loss_fn(params, pixels, scenes):
    logits = attribute_logits(params, pixels)
    return sum(optax.softmax_cross_entropy_with_integer_labels(
        logits[:, offsets[a]:offsets[a + 1]], scenes[:, a]).mean() for a in range(len(offsets) - 1))

  @jax.jit
  def update(params, opt_state, pixels, scenes):
    grads = jax.grad(loss_fn)(params, pixels, scenes)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def images(split, rng, n):
    pool = pools[split]
    scenes = pool[rng.integers(len(pool), size=n)]
    pixels = image_preprocess(list(render.render_scenes(scenes, rng, playground.style)),
                              mean=vconfig.image_mean, std=vconfig.image_std, size=cfg.model.image_size)
    return jnp.asarray(pixels), jnp.asarray(scenes)

  rng = np.random.default_rng([cfg.base.seed, 12])
  for _ in range(cfg.base.vision_steps):
    params, opt_state = update(params, opt_state, *images('train', rng, batch_size))
  nnx.update(tower, params)

  def accuracy(split, seed):
    pixels, scenes = images(split, np.random.default_rng([cfg.base.seed, seed]), eval_images)
    logits, scenes = np.asarray(jax.jit(attribute_logits)(params, pixels)), np.asarray(scenes)
    return {name: float(np.mean(logits[:, offsets[a]:offsets[a + 1]].argmax(1) == scenes[:, a]))
            for a, name in enumerate(world.ATTRIBUTES)}

  # Fresh renders of training scenes, and validation scenes, whose (shape, colour) pairs the
  # tower never saw: a tower that reads shape off colour fails there.
  return {'train_scenes': accuracy('train', 13), 'held_out_pairs': accuracy('val', 14)}

def model_directory(cfg: config_lib.TrainConfig, *, build: bool = True) -> str | None:
  """The checkpoint directory ``cfg`` trains from: None for random weights, the playground
  base's directory (built once, cached) for ``model=playground`` (None with ``build=False``:
  its shape is the config's), else ``model.path`` itself."""
  path = cfg.model.path
  if path == 'random' or (path == 'playground' and not build):
    return None
  if path == 'playground':
    return base_checkpoint(cfg)
  return state_lib.checkpoint_directory(cfg)


def build(cfg: config_lib.TrainConfig, directory: str, *, quiet: bool = True) -> dict[str, Any]:
  """Pre-trains ``cfg``'s backbone and writes it to ``directory``; returns ``pretrain.json``."""
  tokenizer = state_lib.resolve_tokenizer(cfg, None)
  shapes = state_lib.model_shapes(cfg, tokenizer, None)
  vconfig = shapes.vision
  image_id = image_token_id(tokenizer) if vconfig is not None else None
  # The LM objective reads no label: any pair will do.
  spec = RerankerSpec(decoder=shapes.decoder, label_ids=tuple(label_token_ids(tokenizer)),
                      vision=vconfig, image_token_id=image_id)
  model = make_reranker(spec, nnx.Rngs(cfg.base.seed))
  tower_accuracy = None
  if vconfig is not None and cfg.base.vision_steps:
    tower_accuracy = pretrain_tower(cfg, model.vision)
  # The LM stage's optimizer never sees ``fixed``: the ViT and projector when frozen, else nothing.
  freeze = vconfig is not None and cfg.base.freeze_vision
  graphdef, fixed, params = nnx.split(
      model, lambda path, _: freeze and path[0] in ('vision', 'projector'), ...)
  tx, schedule = optim.make_optimizer(
      peak=cfg.base.learning_rate, steps=max(cfg.base.steps, 1),
      warmup_steps=max(cfg.base.steps // 10, 1), end_factor=0.1, weight_decay=0.01,
      b1=0.9, b2=0.98, clip_norm=1.0)
  opt_state = tx.init(params)

  def loss_fn(params, batch):
    return lm_loss(nnx.merge(graphdef, fixed, params), batch)

  @jax.jit
  def update(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  stream = PretrainStream(cfg, tokenizer, vconfig.num_patches if vconfig else 0, vconfig)
  losses = []
  bar = None
  if not quiet:
    from tqdm.auto import tqdm
    bar = tqdm(total=cfg.base.steps, desc='pretrain base', dynamic_ncols=True)
  for _ in range(cfg.base.steps):
    params, opt_state, loss = update(params, opt_state, stream.batch(cfg.base.batch_size))
    losses.append(loss)
    if bar is not None:
      bar.update(1)
  if bar is not None:
    bar.close()
  losses = [float(x) for x in jax.device_get(losses)]
  model = nnx.merge(graphdef, fixed, params)
  accuracy = (matching_accuracy(cfg, model, tokenizer, vconfig)
              if cfg.base.match_per_group else None)
  reading = image_reading(cfg, model, tokenizer, vconfig) if vconfig is not None else None
  hf.save_pretrained(model.decoder, directory)
  tokenizer.save_pretrained(directory)
  if vconfig is not None:
    save_multimodal(directory, model.vision, model.projector, image_id)
  info = {'recipe': recipe(cfg), 'source_fingerprint': source_fingerprint(), 'losses': losses,
          'parameters': int(sum(x.size for x in jax.tree.leaves((fixed, params)))),
          'matching_accuracy': accuracy}
  if accuracy is None:
    del info['matching_accuracy']
  if tower_accuracy is not None:
    info['tower_accuracy'] = tower_accuracy
  if reading is not None:
    info['caption_loss'] = reading
  logs.write_json_atomic(os.path.join(directory, 'pretrain.json'), info)
  return info
