"""The playground base's pre-training stream: captions, descriptions and yes/no questions.

Sequences are built from playground groups in index order (deterministic): each is an image (as
its ``image_tokens`` placeholders, replaced by projected ViT features) followed by its
description, or a description alone, or a matching question written as a reranking prompt with
its answer (the loss then on the answer alone).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from decomp.data import types as data_types
from decomp.models.prompt import image_token_id, label_token_ids
from decomp.models.vision import image_preprocess
from decomp.train import config as config_lib
from decomp.train import data as data_lib

TEXT_TOKENS = 40  # description tokens per sequence (after the image placeholders)


# Knobs that choose reranking tasks and shape their lists, not the world's scenes, words and
# images: the base does not depend on them (it always reads every task family's texts and
# images), so sweeps over tasks, list size or hard negatives share one pretrained base.
LIST_KNOBS = ('tasks', 'negatives', 'hard_ratio', 'hard_attribute_diffs', 'positives',
              'num_eval_queries', 'shuffle_docs', 'oracle_teacher')


def pretraining_world(cfg: config_lib.TrainConfig):
  """The run's playground world with the list-shaping knobs at their defaults."""
  from decomp.data.playground import PlaygroundConfig
  defaults = PlaygroundConfig()
  world = data_lib.playground_config(cfg)
  return dataclasses.replace(world, **{k: getattr(defaults, k) for k in LIST_KNOBS})


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


class PretrainStream:
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
    self.image_size = cfg.model.image_size
    self._buffer: list = []
    self._next_group = 0
    self.questions = cfg.base.qa_per_group
    self.matches = cfg.base.match_per_group
    self.match_negatives = cfg.base.match_negatives
    # A question is a reranking prompt (images in place) + its answer + eos: in words, the
    # 'playground' preset's template; in chat, decomp's default template (a reranking prompt's
    # length) with a generic instruction.
    from decomp.models.prompt import RerankPrompt
    chat = cfg.base.match_format == 'chat'
    self.prompt = RerankPrompt(tokenizer, image_tokens=image_tokens,
                               preset=None if chat else 'playground')
    self.instruction = MATCH_INSTRUCTION if chat else ''
    if chat:
      self.length = max(self.length, cfg.data.max_length + 2)
    self.answer_ids = dict(zip(('yes', 'no'), label_token_ids(tokenizer)[:2]))
    self.split = split
    # Only matching questions of these kinds (the held-out check of matching_accuracy).
    self.match_kinds = match_kinds
    self.seed = cfg.base.seed

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
