"""A head-only run on cached features (`cache_features=true`) equals the run that recomputes
the frozen body every step, and a second run on the same base reuses the cache."""

import os

import jax
import numpy as np
import pytest

from decomp.train import config as config_lib
from decomp.train import overrides as overrides_lib
from decomp.train import recipes
from decomp.train import logs
from decomp.train import mesh as mesh_lib
from decomp.train import state as state_lib
from decomp.train.loop import train


def _cfg(*overrides):
  return overrides_lib.apply_overrides(recipes.get_config('playground_quick'), [
      'finetune=head', 'steps=6', 'eval_every=3', 'checkpoint_every=3', 'example_log_every=3',
      'quiet=true', 'train_pool=16', 'playground={"tasks": ["t2t", "i2t"]}', *overrides])


def test_cached_features_train_like_the_model(tmp_path, monkeypatch):
  monkeypatch.setenv('DECOMP_CACHE', str(tmp_path / 'cache'))
  plain = train(_cfg(), str(tmp_path / 'plain'))
  cached = train(_cfg('cache_features=true'), str(tmp_path / 'cached'))
  a, b = logs.read_steps(str(tmp_path / 'plain')), logs.read_steps(str(tmp_path / 'cached'))
  np.testing.assert_allclose([r['loss'] for r in b], [r['loss'] for r in a], rtol=1e-5)
  np.testing.assert_allclose([r['grad_norm'] for r in b], [r['grad_norm'] for r in a], rtol=1e-4)
  assert abs(cached['test']['ndcg@10'] - plain['test']['ndcg@10']) < 1e-6
  ea, eb = logs.read_examples(str(tmp_path / 'plain')), logs.read_examples(str(tmp_path / 'cached'))
  np.testing.assert_allclose(eb['weight'], ea['weight'], rtol=1e-4, atol=1e-6)
  store = os.path.join(str(tmp_path / 'cache'), 'features')
  shards = [f for d in os.listdir(store) for f in os.listdir(os.path.join(store, d))]
  assert shards
  # Another objective on the same body and data: every prompt is already cached. Another seed
  # of this random-init body is another body: its cache key differs.
  from decomp.train import features as features_lib
  computed = []
  real = features_lib.FeatureCache.replace

  def counting(self, arrays):
    out = real(self, arrays)
    computed.append(self.computed)
    return out

  monkeypatch.setattr(features_lib.FeatureCache, 'replace', counting)
  train(_cfg('cache_features=true', 'weight=cl', 'direction=cl'), str(tmp_path / 'cl'))
  assert computed and computed[-1] == 0
  cfg = _cfg('cache_features=true')
  spec = state_lib.build_model_state(
      cfg, mesh_lib.make_mesh({'data': 1}, jax.devices()[:1]),
      state_lib.resolve_tokenizer(cfg), config_lib.make_objective(cfg)).spec
  assert features_lib.body_key(spec, 0) != features_lib.body_key(spec, 1)  # a random body


def test_cache_features_needs_a_frozen_body(tmp_path):
  with pytest.raises(ValueError, match='cache_features.*needs trains=head'):
    train(_cfg('cache_features=true', 'finetune=full'), str(tmp_path / 'bad'))


def test_shards_are_memory_mapped_whole_or_ignored(tmp_path):
  """A shard is read only when its keys file exists (written last) and matches its rows; older
  '.npz' shards still load; the hidden rows are memory-mapped, not read at start."""
  from decomp.train.features import ShardStore

  store = ShardStore(str(tmp_path))
  for i in range(3):
    store.put(bytes([i]) * 20, np.full(4, float(i), np.float32))
  store.flush()
  np.savez(tmp_path / 'shard-old.npz', keys=np.full((1, 20), 7, np.uint8),
           hidden=np.full((1, 4), 7.0, np.float32))
  np.save(tmp_path / 'shard-torn.hidden.npy', np.zeros((2, 4), np.float32))  # no keys: torn
  np.save(tmp_path / 'shard-bad.keys.npy', np.full((3, 20), 5, np.uint8))
  np.save(tmp_path / 'shard-bad.hidden.npy', np.zeros((2, 4), np.float32))  # rows != keys

  fresh = ShardStore(str(tmp_path))
  for i in (0, 1, 2, 7):
    np.testing.assert_array_equal(fresh.get(bytes([i]) * 20), np.full(4, float(i)))
  assert isinstance(fresh.get(bytes([0]) * 20), np.memmap)
  assert fresh.get(bytes([5]) * 20) is None  # the shard whose rows disagree with its keys
