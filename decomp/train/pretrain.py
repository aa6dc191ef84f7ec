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
  if cfg.pretrain_match_per_group:
    out['pretrain_match_per_group'] = cfg.pretrain_match_per_group
  if cfg.pretrain_vision_steps:
    out['pretrain_vision_steps'] = cfg.pretrain_vision_steps
  if cfg.pretrain_freeze_vision:
    out['pretrain_freeze_vision'] = True
  if cfg.pretrain_match_format != 'words':
    out['pretrain_match_format'] = cfg.pretrain_match_format
  if cfg.pretrain_match_negatives != 'group':
    out['pretrain_match_negatives'] = cfg.pretrain_match_negatives
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


# A matching question's one answer token weighs as much in the loss as a caption's ~10 tokens:
# at weight 1 the answers were 7% of the loss and 600 steps left every kind at chance.
ANSWER_WEIGHT = 10.0
MATCH_KINDS = ('image-caption', 'caption-image', 'text-text', 'edit')
MATCH_NEGATIVES = ('group', 'random')
# The system instruction of chat-format matching questions: generic, none of the benchmark's
# task instructions (a chat VLM is tuned on yes/no questions, not on this benchmark's prompts).
MATCH_INSTRUCTION = 'Does the document match the query?'


def matching_items(plan, world_config, rng: np.random.Generator, count: int,
                   kinds: tuple[str, ...] = MATCH_KINDS, negatives: str = 'group'
                   ) -> list[tuple[data_types.Item, data_types.Item, str]]:
  """``count`` image-text matching questions (BLIP's ITM) from one training group's scenes, half
  of them true, as ``(query, document, answer)`` with ``answer`` 'yes' or 'no'.

  Each question pairs the group's target scene with itself (yes) or with one of its negatives
  (no: one of its negatives, a scene one or two attributes away or a random one; with
  ``negatives='random'`` a random one only), the two sides rendered or worded
  independently: an image and a caption (either one first), two descriptions, or an image with
  an edit (the target with one attribute changed, and the words that change it back) and a
  caption.
  """
  from decomp.data.playground import render, text, world
  say = lambda scene: text.describe(scene, rng, synonym_rate=world_config.synonym_rate,
                                    paraphrase_rate=world_config.paraphrase_rate)
  if negatives not in MATCH_NEGATIVES:
    raise ValueError(f'negatives={negatives!r}: expected one of {MATCH_NEGATIVES}')
  wrong = [s for s, kind in zip(plan.doc_scenes, plan.doc_kinds)
           if kind != 'positive' and (negatives == 'group' or kind == 'random')]
  if not wrong:
    raise ValueError(f'the plan has no {"random " if negatives == "random" else ""}negative '
                     'to ask a false matching question about')
  Item = data_types.Item
  out = []
  for k in range(count):
    kind = kinds[int(rng.integers(len(kinds)))]
    true = k % 2 == 0
    other = plan.target if true else wrong[int(rng.integers(len(wrong)))]
    answer = 'yes' if true else 'no'
    if kind == 'edit':
      # The source: the target with one attribute changed; the edit names the target's value.
      changed = int(rng.integers(len(plan.target)))
      values = [v for v in range(world_config.num_values[changed]) if v != plan.target[changed]]
      if not values:
        kind = 'image-caption'
      else:
        source = np.array(plan.target)
        source[changed] = values[int(rng.integers(len(values)))]
        edit = text.describe_edit(plan.target, world.ATTRIBUTES[changed], rng,
                                  synonym_rate=world_config.synonym_rate)
        image = render.render_scenes(source[None], rng, world_config.style)[0]
        out.append((Item(text=edit, image=image), Item(text=say(other)), answer))
        continue
    if kind == 'text-text':
      first = say(plan.target)
      out.append((Item(text=first), Item(text=say(other)), answer))
      continue
    image_scene, caption_scene = (plan.target, other) if rng.integers(2) else (other, plan.target)
    image = render.render_scenes(np.asarray(image_scene)[None], rng, world_config.style)[0]
    if kind == 'image-caption':
      out.append((Item(image=image), Item(text=say(caption_scene)), answer))
    else:
      out.append((Item(text=say(caption_scene)), Item(image=image), answer))
  return out


class _Sequences:
  """Deterministic stream of ``(input_ids, attention_mask, loss_mask, pixel_values,
  image_valid)`` batches built from playground groups in index order."""

  def __init__(self, cfg, tokenizer, image_tokens: int, vision_config, *, split: str = 'train',
               match_kinds: tuple[str, ...] | None = None):
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
    self.matches = cfg.pretrain_match_per_group
    self.match_negatives = cfg.pretrain_match_negatives
    # A question is a reranking prompt (images in place) + its answer + eos: in words, the
    # 'playground' preset's template; in chat, decomp's default template (a reranking prompt's
    # length) with a generic instruction.
    from decomp.models.prompt import RerankPrompt
    chat = cfg.pretrain_match_format == 'chat'
    self.prompt = RerankPrompt(tokenizer, image_tokens=image_tokens,
                               preset=None if chat else 'playground')
    self.instruction = MATCH_INSTRUCTION if chat else ''
    if chat:
      self.length = max(self.length, cfg.max_length + 2)
    self.answer_ids = dict(zip(('yes', 'no'), label_token_ids(tokenizer)[:2]))
    self.split = split
    # Only matching questions of these kinds (the held-out check of matching_accuracy).
    self.match_kinds = match_kinds
    self.seed = cfg.base_seed

  def _matching(self, plan, rng: np.random.Generator, count: int, kinds: tuple[str, ...]):
    """Buffer items of ``count`` matching questions: ``(image, prompt ids, answer, 'prompt')``."""
    questions = matching_items(plan, self.playground.config, rng, count, kinds,
                               self.match_negatives)
    prompts = self.prompt.encode_pairs([self.instruction] * len(questions),
                                       [q for q, _, _ in questions], [d for _, d, _ in questions],
                                       max_length=self.length - 2)
    return [(q.image if q.image is not None else d.image, ids, answer, 'prompt')
            for (q, d, answer), ids in zip(questions, prompts)]

  def batch(self, size: int) -> dict[str, np.ndarray]:
    while len(self._buffer) < size:
      plan = self.playground.plan(self.split, self._next_group)
      if self.match_kinds:
        rng = np.random.default_rng([self.seed, self._next_group, 11])
        self._buffer.extend(self._matching(plan, rng, 2, self.match_kinds))
        self._next_group += 1
        continue
      group = self.playground.group(self.split, self._next_group)
      self._buffer.extend((image, '', words, False) for image, words in _pairs(group))
      if self.questions:
        rng = np.random.default_rng([self.seed, self._next_group, 9])
        self._buffer.extend((image, '', words, False) for image, words in attribute_questions(
            plan, self.playground.config, rng, self.questions))
      if self.matches:
        rng = np.random.default_rng([self.seed, self._next_group, 10])
        # A text-only base (vision=false) is asked about two descriptions only.
        kinds = MATCH_KINDS if self.vision_config is not None else ('text-text',)
        self._buffer.extend(self._matching(plan, rng, self.matches, kinds))
      self._next_group += 1
    items, self._buffer = self._buffer[:size], self._buffer[size:]
    # A question ('prompt' in its last field) carries its prompt's ids (images in place) and
    # its answer word; captions and descriptions are tokenized here.
    question = [item[3] == 'prompt' for item in items]
    befores = self.tokenizer(['' if c else item[1] for c, item in zip(question, items)],
                             add_special_tokens=False)['input_ids']
    befores = [list(item[1]) if c else b for c, item, b in zip(question, items, befores)]
    afters = self.tokenizer(['' if c else item[2] for c, item in zip(question, items)],
                            add_special_tokens=False)['input_ids']
    t = self.length
    ids = np.full((size, t), self.pad_id, np.int32)
    mask = np.zeros((size, t), np.int32)
    loss_mask = np.zeros((size, t), np.float32)
    pixels = np.zeros((size, 1, self.image_size, self.image_size, 3), np.float32)
    valid = np.zeros((size, 1), bool)
    images = []
    for row, ((image, _, _, answer_only), before, after) in enumerate(zip(items, befores, afters)):
      block = []
      if image is not None and self.vision_config is not None:
        block = [] if answer_only else [self.image_id] * self.image_tokens
        images.append((row, image))
      if answer_only:  # the prompt fits (encode_pairs cut its texts), then the answer and eos
        seq = before + [self.answer_ids[items[row][2]], self.eos_id]
      else:
        seq = (list(before) + block + list(after)[:TEXT_TOKENS - 1] + [self.eos_id])[:t]
      ids[row, :len(seq)] = seq
      mask[row, :len(seq)] = 1
      if answer_only:  # the answer is the token before eos; predict it from its prefix
        loss_mask[row, len(seq) - 3] = ANSWER_WEIGHT
      else:
        # Targets are the next tokens: predict every text token (and the eos) from its prefix.
        start = len(before) + len(block)
        loss_mask[row, max(start, 1) - 1:len(seq) - 1] = 1.0
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
    stream = _Sequences(cfg, tokenizer, vision_config.num_patches if vision_config else 0,
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
  losses mean the LM ignores the image tokens (the collapse ``pretrain_freeze_vision``
  prevents); the gap is what the images tell it."""
  captions_only = dataclasses.replace(cfg, pretrain_match_per_group=0, pretrain_qa_per_group=0)
  stream = _Sequences(captions_only, tokenizer, vision_config.num_patches, vision_config,
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
  heads = nnx.Linear(vconfig.hidden_size, int(offsets[-1]), rngs=nnx.Rngs(cfg.base_seed + 1))
  tower = nnx.List([vision, heads])
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(
      0.0, learning_rate, max(cfg.pretrain_vision_steps // 10, 1),
      max(cfg.pretrain_vision_steps, 2), learning_rate * 0.1), weight_decay=0.01)
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
                              mean=vconfig.image_mean, std=vconfig.image_std, size=cfg.image_size)
    return jnp.asarray(pixels), jnp.asarray(scenes)

  rng = np.random.default_rng([cfg.base_seed, 12])
  for _ in range(cfg.pretrain_vision_steps):
    params, opt_state = update(params, opt_state, *images('train', rng, batch_size))
  nnx.update(tower, params)

  def accuracy(split, seed):
    pixels, scenes = images(split, np.random.default_rng([cfg.base_seed, seed]), eval_images)
    logits, scenes = np.asarray(jax.jit(attribute_logits)(params, pixels)), np.asarray(scenes)
    return {name: float(np.mean(logits[:, offsets[a]:offsets[a + 1]].argmax(1) == scenes[:, a]))
            for a, name in enumerate(world.ATTRIBUTES)}

  # Fresh renders of training scenes, and validation scenes, whose (shape, colour) pairs the
  # tower never saw: a tower that reads shape off colour fails there.
  return {'train_scenes': accuracy('train', 13), 'held_out_pairs': accuracy('val', 14)}

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
  tower_accuracy = None
  if vconfig is not None and cfg.pretrain_vision_steps:
    tower_accuracy = pretrain_tower(cfg, model.vision)
  # The LM stage's optimizer never sees ``fixed``: the ViT and projector when frozen, else nothing.
  freeze = vconfig is not None and cfg.pretrain_freeze_vision
  graphdef, fixed, params = nnx.split(
      model, lambda path, _: freeze and path[0] in ('vision', 'projector'), ...)
  tx, schedule = step_lib.make_optimizer(
      peak=cfg.pretrain_learning_rate, steps=max(cfg.pretrain_steps, 1),
      warmup_steps=max(cfg.pretrain_steps // 10, 1), end_factor=0.1, weight_decay=0.01,
      b1=0.9, b2=0.98, clip_norm=1.0)
  opt_state = tx.init(params)

  def loss_fn(params, batch):
    return lm_loss(nnx.merge(graphdef, fixed, params), batch)

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
  model = nnx.merge(graphdef, fixed, params)
  accuracy = (matching_accuracy(cfg, model, tokenizer, vconfig)
              if cfg.pretrain_match_per_group else None)
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
