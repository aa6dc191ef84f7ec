"""Cached features of a frozen body: a head-only run reads each distinct prompt's answer-position
hidden state from disk instead of running the model.

With ``finetune.trains=head`` nothing that trains acts before the final hidden state ``h`` (the LM head,
a random label head and the projection direction all read ``h``), so ``h`` of a prompt is a
constant of the base model. ``cache_features=true`` computes it once per distinct prompt (keyed
by its token ids, image pixels and positions) and keeps it under
``$DECOMP_CACHE/features/<body key>/`` in append-only ``.npy`` shards (memory-mapped when read),
shared by every run on the same base (seeds, arms, list sizes: the documents of a list of 8 are
those of a list of 64 minus the tail). The step then reads the readout from ``batch['hidden']``
(:func:`decomp.train.step.model_readout`): the same arithmetic as the uncached step up to the
rounding of a separately compiled forward pass (a test compares the two runs).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from typing import Any, Mapping

import jax
import numpy as np
from flax import nnx

from decomp import _files
from decomp.train import cache as cache_lib
from decomp.train.step import model_readout

# Arrays of a batch that are model inputs (replaced by 'hidden'); the rest pass through.
MODEL_INPUTS = ('input_ids', 'attention_mask', 'pixel_values', 'image_valid', 'positions')
FLUSH_ROWS = 50_000  # new rows kept in memory before a shard is written
KEYS_SUFFIX, HIDDEN_SUFFIX = '.keys.npy', '.hidden.npy'


# RerankerSpec fields the answer-position hidden state depends on (the label words, the label
# head, the projection direction and the head's adapters act after it).
BODY_FIELDS = ('decoder', 'vision', 'family_config', 'checkpoint', 'vision_pretrained', 'dtype',
               'param_dtype')


KEY_NAMES = {'family_config': 'vl'}


def body_key(spec, seed: int) -> str:
  """What the frozen hidden states depend on: the body's construction (shapes, dtypes, the
  checkpoint's identity: its path and the size and modification time of its files) and, when
  part of the body starts random (no checkpoint, or a fresh vision tower), the init seed."""
  # ``family_config`` was called ``vl``: the old name keeps the caches of earlier runs valid.
  blob: dict[str, Any] = {'spec': {KEY_NAMES.get(f, f): repr(getattr(spec, f))
                                   for f in BODY_FIELDS}}
  if spec.checkpoint is None or (spec.vision is not None and not spec.vision_pretrained):
    blob['seed'] = int(seed)
  if spec.checkpoint:
    files = sorted(glob.glob(os.path.join(spec.checkpoint, '*')))
    blob['files'] = [(os.path.basename(f), os.path.getsize(f), int(os.path.getmtime(f)))
                     for f in files if os.path.isfile(f)]
  return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:20]


def row_keys(arrays: Mapping[str, np.ndarray]) -> list[bytes]:
  """One digest per document ``[B * n]``: its valid token ids, positions and pixels."""
  lead = arrays['input_ids'].shape[:-1]
  rows = int(np.prod(lead))
  flat = {k: np.ascontiguousarray(arrays[k]).reshape((rows,) + arrays[k].shape[len(lead):])
          for k in MODEL_INPUTS if k in arrays}
  keys = []
  for r in range(rows):
    h = hashlib.blake2b(digest_size=20)
    h.update(flat['input_ids'][r][flat['attention_mask'][r].astype(bool)].tobytes())
    for name in ('positions', 'image_valid', 'pixel_values'):
      if name in flat:
        h.update(flat[name][r].tobytes())
    keys.append(h.digest())
  return keys


class ShardStore:
  """Rows ``[d]`` keyed by digests, on disk in one directory: append-only shards, each a
  ``<name>.hidden.npy`` (memory-mapped when read: a store of millions of rows costs its keys at
  start, not its rows) and a ``<name>.keys.npy`` written after it, so a shard with keys is whole.
  ``.npz`` shards of earlier versions are still read; a torn or foreign file is skipped."""

  def __init__(self, directory: str):
    self.directory = directory
    os.makedirs(directory, exist_ok=True)
    self._index: dict[bytes, tuple[int, int]] = {}
    self._shards: list[np.ndarray] = []
    self._pending: list[np.ndarray] = []  # rows not yet on disk, in key order
    self._pending_index: dict[bytes, int] = {}
    for path in sorted(glob.glob(os.path.join(directory, 'shard-*'))):
      try:
        if path.endswith(KEYS_SUFFIX):
          keys = np.load(path)
          hidden = np.load(path[:-len(KEYS_SUFFIX)] + HIDDEN_SUFFIX, mmap_mode='r')
        elif path.endswith('.npz'):
          with np.load(path) as shard:
            keys, hidden = shard['keys'], shard['hidden']
        else:
          continue
      except Exception:  # a torn or foreign file: recompute what it held
        continue
      if len(keys) == len(hidden):
        self._add_shard(keys, hidden)

  def _add_shard(self, digests: np.ndarray, hidden: np.ndarray) -> None:
    s = len(self._shards)
    self._shards.append(hidden)
    for i, key in enumerate(digests):  # [N, 20] uint8 digests
      self._index.setdefault(key.tobytes(), (s, i))

  def get(self, key: bytes) -> np.ndarray | None:
    where = self._index.get(key)
    if where is not None:
      s, i = where
      return self._shards[s][i]
    i = self._pending_index.get(key)
    return None if i is None else self._pending[i]

  def put(self, key: bytes, row: np.ndarray) -> None:
    if key in self._index or key in self._pending_index:
      return
    self._pending_index[key] = len(self._pending)
    self._pending.append(row)
    if len(self._pending) >= FLUSH_ROWS:
      self.flush()

  def flush(self) -> None:
    """Writes the rows put since the last flush as one shard (atomically)."""
    if not self._pending:
      return
    keys = list(self._pending_index)
    hidden = np.stack(self._pending).astype(np.float32)
    digest = hashlib.sha1(b''.join(keys)).hexdigest()[:12]
    name = os.path.join(self.directory, f'shard-{os.getpid()}-{digest}')
    digests = np.frombuffer(b''.join(keys), np.uint8).reshape(len(keys), -1)
    _files.write_atomic(name + HIDDEN_SUFFIX, lambda f: np.save(f, hidden), binary=True)
    _files.write_atomic(name + KEYS_SUFFIX, lambda f: np.save(f, digests), binary=True)
    self._add_shard(digests, hidden)
    self._pending, self._pending_index = [], {}


class FeatureCache:
  """Answer-position hidden states of a frozen reranker body, memoised on disk.

  ``replace(arrays)`` turns a batch of model inputs into ``{'hidden': [B, n, d], ...}`` (labels,
  where, teacher pass through), running the model only on batches holding an unseen prompt.
  ``computed`` / ``reused`` count documents (for logs and tests).
  """

  def __init__(self, run, params, frozen, *, seed: int, directory: str | None = None,
               put=lambda arrays: arrays):
    self.directory = directory or os.path.join(cache_lib.cache_dir(), 'features',
                                               body_key(run.spec, seed))
    self.store = ShardStore(self.directory)
    self._params, self._frozen, self._put = params, frozen, put
    graphdef = run.graphdef

    def hidden(params, frozen, batch):
      return model_readout(nnx.merge(graphdef, params, frozen), batch).hidden

    self._hidden = jax.jit(hidden)
    self.computed = self.reused = 0
    self._dtype = np.dtype(np.float32)

  def replace(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    lead = arrays['input_ids'].shape[:-1]
    keys = row_keys(arrays)
    found = [self.store.get(k) for k in keys]
    if any(f is None for f in found):
      inputs = {k: v for k, v in arrays.items() if k in MODEL_INPUTS}
      computed = jax.device_get(self._hidden(self._params, self._frozen, self._put(inputs)))
      self._dtype = computed.dtype  # served in the compute dtype the uncached step sees
      hidden = np.asarray(computed, np.float32).reshape((len(keys), -1))
      for key, row, old in zip(keys, hidden, found):
        if old is None:
          self.store.put(key, row)
      self.computed += sum(f is None for f in found)
      self.reused += sum(f is not None for f in found)
      # Every row from this forward pass: one compiled program gives a batch's rows together.
      out = hidden
    else:
      self.reused += len(keys)
      out = np.stack(found)
    result = {k: v for k, v in arrays.items() if k not in MODEL_INPUTS}
    result['hidden'] = out.reshape(lead + (out.shape[-1],)).astype(self._dtype)
    return result

  def flush(self) -> None:
    """Writes the rows computed since the last flush as one shard (atomically)."""
    self.store.flush()
