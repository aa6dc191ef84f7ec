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

from decomp.data import types as data_types
from decomp.models import hf
from decomp.models.build import RerankerSpec, make_reranker, save_multimodal
from decomp.models.prompt import image_token_id, label_token_ids
from decomp.models.vision import image_preprocess
from decomp.train import cache
from decomp.train import config as config_lib
from decomp.train import data as data_lib
from decomp.train import logs
from decomp.train import state as state_lib
from decomp.train import step as step_lib

RECIPE_VERSION = 2  # 2: paraphrase and edit pairs
# The TrainConfig fields that define a base checkpoint (its cache key).
RECIPE_FIELDS = ('hidden_size', 'num_layers', 'num_heads', 'num_kv_heads', 'intermediate_size',
                 'vision', 'vision_hidden_size', 'vision_layers', 'vision_heads', 'image_size',
                 'patch_size', 'pretrain_steps', 'pretrain_learning_rate', 'pretrain_batch_size',
                 'base_seed', 'playground')
TEXT_TOKENS = 40  # description tokens per sequence (after the image placeholders)


# Knobs that choose reranking tasks and shape their lists, not the world's scenes, words and
# images: the base does not depend on them (it always reads every task family's texts and
# images), so sweeps over tasks, list size or hard negatives share one pretrained base.
LIST_KNOBS = ('tasks', 'negatives', 'hard_ratio', 'hard_attribute_diffs', 'positives',
              'num_eval_queries', 'shuffle_docs')


def pretraining_world(cfg: config_lib.TrainConfig):
  """The run's playground world with the list-shaping knobs at their defaults."""
  from decomp.data.playground import PlaygroundConfig
  defaults = PlaygroundConfig()
  world = data_lib.playground_config(cfg)
  return dataclasses.replace(world, **{k: getattr(defaults, k) for k in LIST_KNOBS})


def recipe(cfg: config_lib.TrainConfig) -> dict[str, Any]:
  """The JSON-able recipe of ``cfg``'s base checkpoint."""
  out = {k: getattr(cfg, k) for k in RECIPE_FIELDS}
  out['vision'] = cfg.vision is not False  # 'auto' builds the multimodal base
  # The resolved world, not just the overrides: a changed default must not reuse a stale base.
  out['playground'] = dataclasses.asdict(pretraining_world(cfg))
  out['version'] = RECIPE_VERSION
  if cfg.pretrain_qa_per_group:  # only when used: the keys of earlier bases stay valid
    out['pretrain_qa_per_group'] = cfg.pretrain_qa_per_group
  return out


# The code whose numerics a base's weights depend on (model, data, this recipe).
_SOURCE_DIRS = ('models', 'data')
_SOURCE_FILES = ('train/pretrain.py', 'train/step.py', 'train/state.py', 'train/data.py',
                 'readout.py')


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
  quiet = cfg.quiet if quiet is None else quiet
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


def _pairs(group: data_types.Group) -> list[tuple[np.ndarray | None, str]]:
  """(image or None, description) pairs of one group: captions of images, plain descriptions."""
  positive = [i for i, label in enumerate(group.labels) if label > 0]
  pairs = []
  q = group.query
  for doc in group.docs:
    if doc.text:  # t2t / i2t documents, it2it image + caption
      pairs.append((doc.image, doc.text))
  if q.text and q.image is None:
    if group.task in ('t2i',):  # the positive image is what the query describes
      pairs.extend((group.docs[i].image, q.text) for i in positive)
    else:
      pairs.append((None, q.text))
  if q.image is not None and group.task == 'i2t':
    pairs.extend((q.image, group.docs[i].text) for i in positive)
  # Two wordings of one scene in a row (and an edit followed by its result): predicting the
  # second from the first teaches which words mean the same thing, the world knowledge a real
  # LLM brings to reranking and that no description alone reveals.
  if group.task == 't2t':
    pairs.extend((None, f'{q.text} . {group.docs[i].text}') for i in positive)
  if group.task == 'it2it':
    pairs.extend((q.image, f'{q.text} . {group.docs[i].text}') for i in positive
                 if group.docs[i].text)
  return pairs


def attribute_questions(plan, world_config, rng: np.random.Generator,
                        count: int) -> list[tuple[None, str]]:
  """``count`` yes/no questions about the scene ``plan.target``, each on one attribute, the answer
  "yes" for even-numbered questions (the true value) and "no" for odd ones (another value)::

    'two striped squares at the top left . Does it match squares ? yes'

  The description and the value are worded independently (synonyms, templates), so answering
  needs the meaning of the words, not their surface.
  """
  from decomp.data.playground import text, world
  description = text.describe(plan.target, rng, synonym_rate=world_config.synonym_rate,
                              paraphrase_rate=world_config.paraphrase_rate)
  out = []
  for k in range(count):
    attribute = int(rng.integers(len(world.ATTRIBUTES)))
    scene = np.array(plan.target)
    if k % 2:  # a false value of the same attribute
      others = [v for v in range(world_config.num_values[attribute]) if v != scene[attribute]]
      scene[attribute] = others[int(rng.integers(len(others)))]
    words = text._value_words(scene, rng, world_config.synonym_rate)
    value = words[world.ATTRIBUTES[attribute]]
    if value == 'a':  # the count word of one object is an article in descriptions
      value = 'one'
    answer = 'no' if k % 2 else 'yes'
    out.append((None, f'{description} . Does it match {value} ? {answer}'))
  return out


class _Sequences:
  """Deterministic stream of ``(input_ids, attention_mask, loss_mask, pixel_values,
  image_valid)`` batches built from playground groups in index order."""

  def __init__(self, cfg, tokenizer, image_tokens: int, vision_config):
    from decomp.data.playground import Playground
    self.playground = Playground(pretraining_world(cfg))
    self.tokenizer = tokenizer
    self.image_tokens = image_tokens
    self.vision_config = vision_config
    self.image_id = image_token_id(tokenizer) if vision_config is not None else None
    self.pad_id = tokenizer.pad_token_id
    self.eos_id = tokenizer.eos_token_id
    self.length = image_tokens + TEXT_TOKENS
    self.image_size = cfg.image_size
    self._buffer: list = []
    self._next_group = 0
    self.questions = cfg.pretrain_qa_per_group
    self.seed = cfg.base_seed

  def batch(self, size: int) -> dict[str, np.ndarray]:
    while len(self._buffer) < size:
      group = self.playground.group('train', self._next_group)
      self._buffer.extend(_pairs(group))
      if self.questions:
        rng = np.random.default_rng([self.seed, self._next_group, 9])
        self._buffer.extend(attribute_questions(
            self.playground.plan('train', self._next_group), self.playground.config, rng,
            self.questions))
      self._next_group += 1
    items, self._buffer = self._buffer[:size], self._buffer[size:]
    texts = self.tokenizer([text for _, text in items], add_special_tokens=False)['input_ids']
    t = self.length
    ids = np.full((size, t), self.pad_id, np.int32)
    mask = np.zeros((size, t), np.int32)
    loss_mask = np.zeros((size, t), np.float32)
    pixels = np.zeros((size, 1, self.image_size, self.image_size, 3), np.float32)
    valid = np.zeros((size, 1), bool)
    images = []
    for row, ((image, _), text_ids) in enumerate(zip(items, texts)):
      prefix = []
      if image is not None and self.vision_config is not None:
        prefix = [self.image_id] * self.image_tokens
        images.append((row, image))
      seq = (prefix + list(text_ids)[:TEXT_TOKENS - 1] + [self.eos_id])[:t]
      ids[row, :len(seq)] = seq
      mask[row, :len(seq)] = 1
      # Targets are the next tokens: predict every text token (and the eos) from its prefix.
      loss_mask[row, max(len(prefix), 1) - 1:len(seq) - 1] = 1.0
    if images:
      processed = image_preprocess([im for _, im in images], mean=self.vision_config.image_mean,
                                   std=self.vision_config.image_std, size=self.image_size)
      for (row, _), pix in zip(images, processed):
        pixels[row, 0] = pix
        valid[row, 0] = True
    out = {'input_ids': ids, 'attention_mask': mask, 'loss_mask': loss_mask}
    if self.vision_config is not None:
      out.update(pixel_values=pixels, image_valid=valid)
    return out


def build(cfg: config_lib.TrainConfig, directory: str, *, quiet: bool = True) -> dict[str, Any]:
  """Pre-trains ``cfg``'s backbone and writes it to ``directory``; returns ``pretrain.json``."""
  base_cfg = dataclasses.replace(cfg, model='random', tokenizer='')
  tokenizer = state_lib.resolve_tokenizer(base_cfg)
  shapes = state_lib.model_shapes(base_cfg, tokenizer)
  vconfig = shapes.vision
  image_id = image_token_id(tokenizer) if vconfig is not None else None
  # The LM objective reads no label: any pair will do.
  spec = RerankerSpec(decoder=shapes.decoder, label_ids=tuple(label_token_ids(tokenizer)),
                      vision=vconfig, image_token_id=image_id)
  model = make_reranker(spec, nnx.Rngs(cfg.base_seed))
  graphdef, params = nnx.split(model)
  tx, schedule = step_lib.make_optimizer(
      peak=cfg.pretrain_learning_rate, steps=max(cfg.pretrain_steps, 1),
      warmup_steps=max(cfg.pretrain_steps // 10, 1), end_factor=0.1, weight_decay=0.01,
      b1=0.9, b2=0.98, clip_norm=1.0)
  opt_state = tx.init(params)

  def loss_fn(params, batch):
    m = nnx.merge(graphdef, params)
    if 'pixel_values' in batch:
      embeds, _ = m.embed_with_images(batch['input_ids'], batch['pixel_values'],
                                       batch['image_valid'])
      logits = m.decoder(None, batch['attention_mask'], inputs_embeds=embeds)
    else:
      logits = m.decoder(batch['input_ids'], batch['attention_mask'])
    targets = jnp.roll(batch['input_ids'], -1, axis=1)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    weight = batch['loss_mask']
    return jnp.sum(nll * weight) / jnp.maximum(jnp.sum(weight), 1.0)

  @jax.jit
  def update(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  stream = _Sequences(cfg, tokenizer, vconfig.num_patches if vconfig else 0, vconfig)
  losses = []
  bar = None
  if not quiet:
    from tqdm.auto import tqdm
    bar = tqdm(total=cfg.pretrain_steps, desc='pretrain base', dynamic_ncols=True)
  for _ in range(cfg.pretrain_steps):
    params, opt_state, loss = update(params, opt_state, stream.batch(cfg.pretrain_batch_size))
    losses.append(loss)
    if bar is not None:
      bar.update(1)
  if bar is not None:
    bar.close()
  losses = [float(x) for x in jax.device_get(losses)]
  model = nnx.merge(graphdef, params)
  hf.save_pretrained(model.decoder, directory)
  tokenizer.save_pretrained(directory)
  if vconfig is not None:
    save_multimodal(directory, model.vision, model.projector, image_id)
  info = {'recipe': recipe(cfg), 'source_fingerprint': source_fingerprint(), 'losses': losses,
          'parameters': int(sum(x.size for x in jax.tree.leaves(params)))}
  logs.write_json_atomic(os.path.join(directory, 'pretrain.json'), info)
  return info
