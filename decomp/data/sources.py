"""Helpers between the readers and the training engine: which format a split directory holds,
teacher scores as a batch array, and a converter to the MRB JSONL layout.

* :func:`is_flag_directory`: the engine reads such a ``cfg.data.source`` with its FlagEmbedding source
  (``decomp.train.data``); teacher scores travel in ``Group.teacher_scores``.
* :func:`export_mrb` writes groups of any reader as an MRB JSONL split directory (teacher scores
  as each document's ``teacher_score``), which ``cfg.data=<dir>`` trains on without changes.
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping

from decomp.data import mrb
from decomp.data.types import Group


def is_flag_directory(directory: str) -> bool:
  """Whether ``directory/train.jsonl``'s first row is in FlagEmbedding's format (``pos``/``neg``
  rather than MRB's ``positives``/``negatives``): how the engine may choose the source.

  Reads bytes line by line (a text read decodes 8 KB at once, so a bad byte further on would fail
  here with no file or line); a first row that is not UTF-8 raises ``ValueError`` naming file
  and line."""
  import json
  path = os.path.join(directory, 'train.jsonl')
  if not os.path.isfile(path):
    return False
  with open(path, 'rb') as f:
    for line_no, raw in enumerate(f, start=1):
      if raw.strip():
        try:
          row = json.loads(raw.decode('utf-8'))
        except UnicodeDecodeError as e:
          raise ValueError(f'{path}:{line_no}: not UTF-8 text (byte {e.start}: '
                           f'{raw[e.start:e.start + 4]!r})') from None
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
