"""The data of a training run: group sources (the playground, MRB-style JSONL) and the batches
encoded from them.

* :func:`make_data` -> :class:`GroupData`: deterministic batches by group index (each process
  encodes only its rows), evaluation groups, per-example ids. It is given the tokenizer and the
  image encoding up front: data never waits for a model to be built.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Sequence

import numpy as np

from decomp.data import types as data_types
from decomp.data.sources import is_flag_directory, teacher_scores_array
from decomp.models.backbone import ImageAdapter
from decomp.models.prompt import encode_groups, prompt_lengths
from decomp.models.vision import VisionConfig
from decomp.train import config as config_lib


def take_negatives(group: data_types.Group, negatives: int,
                    positives: int | None = None) -> data_types.Group:
  """The group's first ``positives`` positives (all when None) and first ``negatives``
  negatives, in list order (which the data sources randomise)."""
  keep, seen_neg, seen_pos = [], 0, 0
  for i, label in enumerate(group.labels):
    if label > 0:
      if positives is None or seen_pos < positives:
        keep.append(i)
        seen_pos += 1
    elif seen_neg < negatives:
      keep.append(i)
      seen_neg += 1
  pick = lambda seq: tuple(seq[i] for i in keep)
  teacher = None if group.teacher_scores is None else pick(group.teacher_scores)
  return dataclasses.replace(group, docs=pick(group.docs), labels=pick(group.labels),
                             doc_ids=pick(group.doc_ids), doc_kinds=pick(group.doc_kinds),
                             teacher_scores=teacher)


def group_meta(groups: Sequence[data_types.Group], list_size: int) -> dict[str, np.ndarray]:
  """Ids of a batch for the per-example log: ``query_id/task/modality [B]``, ``doc_id/doc_kind/
  label/where [B, n]``."""
  b = len(groups)
  doc_id = np.full((b, list_size), '', dtype=object)
  doc_kind = np.full((b, list_size), '', dtype=object)
  label = np.zeros((b, list_size), np.int32)
  where = np.zeros((b, list_size), bool)
  for i, g in enumerate(groups):
    k = len(g.docs)
    doc_id[i, :k], doc_kind[i, :k] = g.doc_ids, g.doc_kinds
    label[i, :k], where[i, :k] = g.labels, True
  as_str = lambda a: np.asarray(a.tolist(), dtype=str)
  return {'query_id': np.asarray([g.query_id for g in groups], dtype=str),
          'task': np.asarray([g.task for g in groups], dtype=str),
          'modality': np.asarray([g.modality or data_types.TASK_MODALITY.get(g.task, '')
                                  for g in groups], dtype=str),
          'doc_id': as_str(doc_id), 'doc_kind': as_str(doc_kind), 'label': label, 'where': where}


def playground_config(cfg: config_lib.TrainConfig):
  """The run's PlaygroundConfig: defaults, the config's image size, then ``cfg.data.playground``.

  The world (and so the val/test benchmark) is fixed by ``playground.seed`` (default 0), not the
  run's seed: seeds differ in initialisation and training order only, over one benchmark.
  """
  from decomp.data.playground import PlaygroundConfig
  options = {'seed': 0, 'image_size': cfg.model.image_size, **cfg.data.playground}
  fields = {f.name for f in dataclasses.fields(PlaygroundConfig)}
  unknown = sorted(set(options) - fields)
  if unknown:
    raise ValueError(f'config playground: unknown PlaygroundConfig keys {unknown}')
  for key in ('tasks', 'num_values', 'hard_attribute_diffs'):
    if isinstance(options.get(key), list):
      options[key] = tuple(options[key])
  return PlaygroundConfig(**options)


TRAIN_STREAM_STRIDE = 10_000_000  # train groups per run seed before streams would overlap


def epoch_order(seed: int, index: int, pool_size: int) -> int:
  """Which of ``pool_size`` training groups step-group ``index`` reads: the pool is visited epoch
  by epoch, each epoch in its own permutation seeded by (seed, epoch)."""
  epoch, offset = divmod(index, pool_size)
  return int(_epoch_permutation(seed, epoch, pool_size)[offset])


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, pool_size: int) -> np.ndarray:
  # One permutation per epoch, not per group: a 100k-group file costs 13 ms a batch otherwise.
  order = np.random.default_rng([seed, epoch]).permutation(pool_size)
  order.flags.writeable = False
  return order


class PlaygroundSource:
  """Groups of the procedural playground (``cfg.data.playground`` are PlaygroundConfig overrides)."""

  def __init__(self, cfg: config_lib.TrainConfig):
    from decomp.data.playground import Playground
    self.playground = Playground(playground_config(cfg))
    self.max_negatives = self.playground.config.negatives
    self.seed = cfg.seed
    self.train_pool = cfg.data.train_pool
    # Without a pool each run seed reads its own stretch of the unbounded train stream.
    self.train_offset = TRAIN_STREAM_STRIDE * cfg.seed
    self.has_images = any(task not in data_types.TEXT_ONLY_TASKS
                          for task in self.playground.config.tasks)

  def train_group(self, index: int) -> data_types.Group:
    if self.train_pool:  # a fixed training set shared by every seed, visited in the seed's order
      return self.playground.group('train', epoch_order(self.seed, index, self.train_pool))
    return self.playground.group('train', self.train_offset + index)

  def split_groups(self, split: str, count: int) -> list[data_types.Group]:
    return self.playground.groups(split, 0, self._split_count(split, count))

  def split_plans(self, split: str, count: int) -> list:
    """The scenes behind ``split_groups(split, count)``, group by group."""
    return [self.playground.plan(split, i) for i in range(self._split_count(split, count))]

  def _split_count(self, split: str, count: int) -> int:
    total = self.playground.num_groups(split)
    # The playground cycles through tasks by index, so a prefix covers every task.
    return total if not count else min(count, total)


class JsonlSource:
  """MRB-style JSONL (``decomp.data.mrb``): ``<dir>/train.jsonl``, ``val.jsonl``, ``test.jsonl``.

  Whole files are read once; documents are shuffled per row with the seed (ties in scores must
  not favour the positives). Training visits the train groups epoch by epoch, each epoch in a
  seeded permutation, so group ``index`` is a pure function of (seed, index) as on the playground.
  """

  SPLIT_FILES = {'train': 'train.jsonl', 'val': 'val.jsonl', 'test': 'test.jsonl'}

  @staticmethod
  def read(path: str, **options) -> list[data_types.Group]:
    from decomp.data import mrb
    return mrb.load_jsonl(path, **options)[0]

  def __init__(self, cfg: config_lib.TrainConfig, *, load_images: bool = True):
    self.directory = cfg.data.source
    self.seed = cfg.seed
    self.train_pool = cfg.data.train_pool
    self._load = lambda path: self.read(
        path, image_size=cfg.model.image_size if load_images else None, load_images=load_images,
        shuffle_seed=cfg.seed, allow_outside_paths=cfg.data.allow_outside_paths,
        max_image_pixels=cfg.data.max_image_pixels or None)
    self._splits: dict[str, list[data_types.Group]] = {}
    train = self._split('train')
    if not train:
      raise ValueError(f'{self._path("train")} holds no groups')
    self.max_negatives = min(sum(1 for label in g.labels if label <= 0) for g in train)
    self.has_images = load_images and any(
        item.image is not None or getattr(item, 'image_path', None)
        for split in self.SPLIT_FILES if os.path.exists(self._path(split))
        for g in self._split(split) for item in (g.query, *g.docs))

  def _path(self, split: str) -> str:
    return os.path.join(self.directory, self.SPLIT_FILES[split])

  def _split(self, split: str) -> list[data_types.Group]:
    if split not in self._splits:
      path = self._path(split)
      if not os.path.exists(path):
        raise FileNotFoundError(f'config data={self.directory!r}: {path} does not exist')
      self._splits[split] = self._load(path)
    return self._splits[split]

  def train_group(self, index: int) -> data_types.Group:
    groups = self._split('train')
    pool = min(self.train_pool, len(groups)) if self.train_pool else len(groups)
    return groups[epoch_order(self.seed, index, pool)]

  def split_groups(self, split: str, count: int) -> list[data_types.Group]:
    groups = self._split(split)
    return list(groups if not count else groups[:count])


class FlagEmbeddingSource(JsonlSource):
  """FlagEmbedding reranker JSONL splits (``query``, ``pos``, ``neg``, optional ``prompt`` and
  teacher ``pos_scores``/``neg_scores``; :mod:`decomp.data.flag`), read as :class:`JsonlSource`
  reads MRB's."""

  @staticmethod
  def read(path: str, **options) -> list[data_types.Group]:
    from decomp.data import flag
    return flag.load_flag(path, **options)[0]


class Encoder:
  """Groups -> model inputs for one config, tokenizer and image reader.

  ``vision`` is what reads the images: the model's LLaVA ViT shape (placeholders per image,
  preprocessing) or the :class:`~decomp.models.backbone.ImageAdapter` of a family's own tower
  (its placeholders, every image cut into the tower's input at ``image_size`` square, and the
  positions it needs, e.g. M-RoPE ``positions [B, n, 3, T]``, in the batch); None (or a source
  without images: ``has_images=False``) encodes image items by their caption.
  """

  def __init__(self, cfg: config_lib.TrainConfig, tokenizer,
               vision: VisionConfig | ImageAdapter | None = None, *, has_images: bool = True):
    self.cfg = cfg
    self.tokenizer = tokenizer
    self.vision = vision
    self.has_images = has_images
    # The LLaVA ViT is decomp's own; anything else is a family's adapter.
    self.adapter = None if vision is None or isinstance(vision, VisionConfig) else vision
    if self.adapter is not None:
      self.image_tokens = self.adapter.tokens_per_image(cfg.model.image_size)
    else:
      self.image_tokens = vision.num_patches if vision is not None else 0

  def _image_kwargs(self) -> dict:
    """How images enter the prompt and the batch (:func:`encode_groups`' image arguments)."""
    cfg = self.cfg
    if self.adapter is not None and self.has_images:
      size, adapter = cfg.model.image_size, self.adapter
      return dict(image_tokens=self.image_tokens, image_size=size,
                  image_token=adapter.image_token, image_wrap=adapter.image_wrap,
                  image_processor=lambda images: adapter.patches(images, size))
    if self.vision is not None and self.has_images:
      return dict(image_tokens=self.image_tokens, image_size=cfg.model.image_size,
                  image_mean=self.vision.image_mean, image_std=self.vision.image_std)
    return {}

  def encode(self, groups: Sequence[data_types.Group], list_size: int, *,
             lengths: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Numpy model inputs ``[B, n, ...]``: ``T = max_length`` (one compiled shape), or the
    smallest of ``lengths`` (default ``length_buckets``) that holds the batch (a handful of
    shapes).

    Pixel arrays only when the source has images at all: a text-only source (the T->T
    playground) never runs the vision tower on empty image slots.
    """
    cfg = self.cfg
    kwargs = self._image_kwargs()
    if not kwargs:
      groups = [_drop_images(g) for g in groups]
    arrays = encode_groups(groups, self.tokenizer, list_size=list_size,
                           max_length=cfg.data.max_length, padding_side='left',
                           pad_multiple=cfg.data.max_length,
                           lengths=lengths or cfg.data.length_buckets or None,
                           preset=cfg.readout.preset or None, **kwargs)
    if self.adapter is not None and 'pixel_values' in arrays:
      positions = self.adapter.positions(arrays['input_ids'], arrays['attention_mask'],
                                         arrays['image_valid'], cfg.model.image_size)
      if positions is not None:
        arrays['positions'] = positions
    arrays['labels'] = arrays['labels'].astype(np.int32)
    teacher = teacher_scores_array(groups, list_size)
    if teacher is not None:  # distillation reads them (readout.extra_scores['teacher'])
      arrays['teacher'] = teacher
    return arrays

  def prompt_lengths(self, groups: Sequence[data_types.Group]) -> list[int]:
    """The untruncated prompt length of every (group, document), in order: longer than
    ``data.max_length`` means :meth:`encode` cuts its text."""
    kwargs = {k: v for k, v in self._image_kwargs().items()
              if k in ('image_tokens', 'image_token', 'image_wrap')}
    if not kwargs:
      groups = [_drop_images(g) for g in groups]
    pairs = [(g.instruction, g.query, d) for g in groups for d in g.docs]
    return prompt_lengths(self.tokenizer, *zip(*pairs), preset=self.cfg.readout.preset or None,
                          **kwargs) if pairs else []


class GroupData:
  """Training and evaluation batches of a group source for one config and tokenizer.

  Training lists hold one positive and ``data.negatives`` negatives (``list_size``); evaluation
  lists keep every candidate (or ``eval_list_size``). Groups are encoded by an :class:`Encoder`.
  """

  def __init__(self, cfg: config_lib.TrainConfig, source, tokenizer,
               vision: VisionConfig | ImageAdapter | None = None):
    self.cfg = cfg
    self.source = source
    self.max_negatives = source.max_negatives
    self.tokenizer = tokenizer
    self.vision = vision
    self.encoder = Encoder(cfg, tokenizer, vision, has_images=source.has_images)

  def encode(self, groups: Sequence[data_types.Group], list_size: int, *,
             lengths: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    return self.encoder.encode(groups, list_size, lengths=lengths)

  def train_batch(self, start: int, count: int, process_index: int = 0,
                  process_count: int = 1) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """This process's share of the global batch of groups ``start .. start+count-1``."""
    local = count // process_count
    first = start + process_index * local
    groups = [take_negatives(self.source.train_group(i), self.cfg.data.negatives, positives=1)
              for i in range(first, first + local)]
    return self.encode(groups, self.cfg.list_size), group_meta(groups, self.cfg.list_size)

  def eval_groups(self, split: str, count: int) -> list[data_types.Group]:
    """The first ``count`` groups of a split (0: all), candidates cut to ``eval_list_size``."""
    groups = self.source.split_groups(split, count)
    if self.cfg.eval_log.eval_list_size:
      groups = [take_negatives(g, self.cfg.eval_log.eval_list_size - 1, positives=1) for g in groups]
    return groups

  def eval_plans(self, split: str, count: int) -> list | None:
    """The playground plans of ``eval_groups(split, count)`` (what each negative gets wrong), or
    None for data without plans or with candidates cut (``eval_list_size``)."""
    if self.cfg.eval_log.eval_list_size or not hasattr(self.source, 'split_plans'):
      return None
    return self.source.split_plans(split, count)

  @staticmethod
  def eval_list_size(groups: Sequence[data_types.Group]) -> int:
    return max(len(g.docs) for g in groups)


def _drop_images(group: data_types.Group) -> data_types.Group:
  """Text-only models read image items by their caption; pure images become a placeholder."""
  def strip(item):
    if item.image is None and not getattr(item, 'image_path', None):
      return item
    return data_types.Item(text=item.text or 'image')
  return dataclasses.replace(group, query=strip(group.query),
                             docs=tuple(strip(d) for d in group.docs))


def make_source(cfg: config_lib.TrainConfig, *, load_images: bool = True):
  """The config's group source: the playground, or a directory of MRB-style JSONL splits (whose
  images are read only for a model that reads them)."""
  if cfg.data.source == 'playground':
    return PlaygroundSource(cfg)
  if os.path.isdir(cfg.data.source):
    source = FlagEmbeddingSource if is_flag_directory(cfg.data.source) else JsonlSource
    return source(cfg, load_images=load_images)
  raise ValueError(f'config data={cfg.data.source!r}: expected "playground" or a directory with '
                   'train.jsonl / val.jsonl / test.jsonl')


def make_data(cfg: config_lib.TrainConfig, tokenizer,
              vision: VisionConfig | ImageAdapter | None = None) -> GroupData:
  """The config's batches, encoded with ``tokenizer`` (and images for a ``vision`` model)."""
  return GroupData(cfg, make_source(cfg, load_images=vision is not None), tokenizer, vision)
