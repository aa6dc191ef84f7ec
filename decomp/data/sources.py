"""Group sources for the training engine over the formats of :mod:`decomp.data.flag` and
:mod:`decomp.data.beir`, and a converter to the MRB JSONL layout the engine reads today.

* :class:`FlagEmbeddingSource` has the methods of ``decomp.train.setup.JsonlSource``
  (``train_group``, ``split_groups``, ``max_negatives``) over a directory of FlagEmbedding JSONL
  splits (``train.jsonl``, ``val.jsonl``, ``test.jsonl``); the engine can pick it for such a
  ``cfg.data``. Teacher scores travel in ``Group.teacher_scores``.
* :func:`export_mrb` writes groups of any reader as an MRB JSONL split directory (teacher scores
  as each document's ``teacher_score``), which ``cfg.data=<dir>`` trains on without changes.
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping

from decomp.data import flag, mrb
from decomp.data.types import Group


class FlagEmbeddingSource:
  """FlagEmbedding reranker JSONL splits under ``cfg.data`` (see :mod:`decomp.data.flag`).

  As ``JsonlSource``: whole files are read once, documents shuffled per row with the run's seed,
  training visits the train groups epoch by epoch in seeded permutations.
  """

  SPLIT_FILES = {'train': 'train.jsonl', 'val': 'val.jsonl', 'test': 'test.jsonl'}

  def __init__(self, cfg):
    self.directory = cfg.data
    self.seed = cfg.seed
    self.train_pool = cfg.train_pool
    self._options = dict(image_size=cfg.image_size if cfg.vision else None,
                         load_images=cfg.vision, shuffle_seed=cfg.seed)
    self._splits: dict[str, list[Group]] = {}
    train = self._split('train')
    if not train:
      raise ValueError(f'{self._path("train")} holds no groups')
    self.max_negatives = min(sum(1 for label in g.labels if label <= 0) for g in train)

  def _path(self, split: str) -> str:
    return os.path.join(self.directory, self.SPLIT_FILES[split])

  def _split(self, split: str) -> list[Group]:
    if split not in self._splits:
      path = self._path(split)
      if not os.path.exists(path):
        raise FileNotFoundError(f'config data={self.directory!r}: {path} does not exist')
      self._splits[split] = flag.load_flag(path, **self._options)[0]
    return self._splits[split]

  def train_group(self, index: int) -> Group:
    from decomp.train.setup import epoch_order  # the engine's visiting order, one definition
    groups = self._split('train')
    pool = min(self.train_pool, len(groups)) if self.train_pool else len(groups)
    return groups[epoch_order(self.seed, index, pool)]

  def split_groups(self, split: str, count: int) -> list[Group]:
    groups = self._split(split)
    return list(groups if not count else groups[:count])


def is_flag_directory(directory: str) -> bool:
  """Whether ``directory/train.jsonl``'s first row is in FlagEmbedding's format (``pos``/``neg``
  rather than MRB's ``positives``/``negatives``): how the engine may choose the source."""
  import json
  path = os.path.join(directory, 'train.jsonl')
  if not os.path.isfile(path):
    return False
  with open(path, encoding='utf-8') as f:
    for line in f:
      if line.strip():
        try:
          row = json.loads(line)
        except json.JSONDecodeError:
          return False
        return isinstance(row, dict) and 'pos' in row and 'neg' in row
  return False


def export_mrb(directory: str, splits: Mapping[str, Iterable[Group]]) -> str:
  """Writes ``{split: groups}`` as ``<directory>/<split>.jsonl`` in the MRB layout.

  Every group needs a positive and a negative (the MRB schema's rule); images are copied next
  to the files. Returns ``directory``.
  """
  os.makedirs(directory, exist_ok=True)
  for split, groups in splits.items():
    groups = list(groups)
    for g in groups:
      if not any(l > 0 for l in g.labels) or all(l > 0 for l in g.labels):
        raise ValueError(f'export_mrb: group {g.query_id!r} of split {split!r} needs a positive '
                         'and a negative document (the MRB schema)')
    mrb.write_jsonl(groups, os.path.join(directory, f'{split}.jsonl'))
  return directory


def teacher_scores_array(groups: Iterable[Group], list_size: int):
  """``[B, list_size]`` float32 teacher scores of a batch (0 at padding), or None when no group
  has any: what a training step passes as ``readout.extra_scores['teacher']`` (weight 'kd')."""
  import numpy as np
  groups = list(groups)
  if all(g.teacher_scores is None for g in groups):
    return None
  out = np.zeros((len(groups), list_size), np.float32)
  for b, g in enumerate(groups):
    if g.teacher_scores is None:
      raise ValueError(f'group {g.query_id!r} has no teacher scores but others of its batch do; '
                       "weight 'kd' needs them for every group")
    out[b, :len(g.teacher_scores)] = g.teacher_scores
  return out
