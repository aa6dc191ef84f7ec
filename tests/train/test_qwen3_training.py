"""`python -m decomp.train --set model=<dir>` trains a local Qwen3 checkpoint (q/k norms, head_dim
independent of hidden/heads): the reranker is built from the checkpoint through the one
construction path, trains, and resumes to the same numbers. A LoRA checkpoint holds only what
trains and names its base (path + content hash): resume, ``Run.open`` / ``evaluate_workdir`` and
``save_pretrained`` read the frozen weights from the base, and a changed base is refused."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from decomp.train import base_ref
from decomp.train import checkpoint as ckpt_lib
from decomp.train import logs
from decomp.train import state as state_lib
from decomp.train.errors import BaseChangedError
from decomp.train.loop import evaluate_workdir, train
from decomp.train.run import Run


@pytest.fixture(scope='module')
def qwen3_dir(tiny_checkpoint_dir):
  from transformers import Qwen3Config, Qwen3ForCausalLM
  return tiny_checkpoint_dir(Qwen3ForCausalLM, Qwen3Config, hidden_size=64, intermediate_size=96,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             head_dim=24, tie_word_embeddings=True, initializer_range=0.05)


@pytest.fixture(scope='module')
def lora_run(qwen3_dir, tmp_path_factory):
  """``(cfg, workdir, results)`` of a finished 6-step LoRA run on the Qwen3 checkpoint."""
  from decomp.train import overrides as overrides_lib
  from decomp.train import recipes
  cfg = overrides_lib.apply_overrides(recipes.get_config('playground'), [
      f'model={qwen3_dir}', 'steps=6', 'batch_size=4', 'eval_batch_size=4', 'num_devices=1',
      'mesh={"data": 1}', 'negatives=3', 'eval_every=0', 'checkpoint_every=3',
      'keep_checkpoints=3', 'test_groups=8', 'eval_groups=8', 'example_log_every=3', 'quiet=true',
      'finetune=lora', 'lora_rank=4', 'max_length=48', 'mu_dtype=bfloat16',
      'playground={"tasks": ["t2t"], "num_eval_queries": 8}'])
  workdir = str(tmp_path_factory.mktemp('qwen3_lora') / 'reference')
  return cfg, workdir, train(cfg, workdir)


@pytest.fixture(scope='module')
def opened(lora_run):
  """The finished LoRA run opened (its frozen weights read from the base)."""
  return Run.open(lora_run[1])


def test_a_qwen3_checkpoint_trains_and_resumes(lora_run, assert_resumes_exactly):
  cfg, reference, results = lora_run
  assert state_lib.data_shapes(cfg, state_lib.resolve_tokenizer(cfg)).vision is None
  records = logs.read_steps(reference)
  assert len(records) == 6 and np.isfinite([r['loss'] for r in records]).all()
  assert 0 <= results['test']['ndcg@10'] <= 1
  final, _ = ckpt_lib.load_state(reference)
  # The resumed run restores step 3 (adapters + Adam moments) and reads the base again.
  assert_resumes_exactly(cfg, reference, 6)
  resumed, _ = ckpt_lib.load_state(reference.rstrip(os.sep) + '-crashed')
  for got, want in zip(jax.tree.leaves(resumed['params']), jax.tree.leaves(final['params'])):
    np.testing.assert_array_equal(got, want)


def _size(path):
  return sum(os.path.getsize(os.path.join(root, n)) for root, _, names in os.walk(path)
             for n in names)


def test_a_lora_checkpoint_holds_the_adapters_and_names_its_base(lora_run, qwen3_dir):
  cfg, workdir, _ = lora_run
  state, meta = ckpt_lib.load_state(workdir)
  assert set(state) == {'params', 'opt_state'}  # no frozen base
  names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(
      state['params'])[0]]
  assert names and all('lora' in n for n in names), names
  assert meta['base'] == {'path': os.path.abspath(qwen3_dir),
                          'sha256': base_ref.content_hash(qwen3_dir)}
  # Rank 4 on q, k, v, o, gate, up, down of 2 layers: 4 x (in + out) = 4 x (160 + 112 + 112 +
  # 160 + 3 x 160) per layer; saved with their two Adam moments (+ a step counter), the first
  # moment in bfloat16 (mu_dtype).
  assert sum(a.size for a in jax.tree.leaves(state['params'])) == 2 * 4 * 1024
  moments = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state['opt_state'])[0]:
    for moment in ('mu', 'nu'):
      if f"'{moment}'" in jax.tree_util.keystr(path):
        moments.setdefault(moment, set()).add(leaf.dtype)
  assert moments == {'mu': {np.dtype('bfloat16')}, 'nu': {np.dtype('float32')}}, moments
  saved = sum(a.nbytes for a in jax.tree.leaves(state))
  assert saved <= 2 * 4 * 1024 * (4 + 2 + 4) + 16, saved
  assert _size(os.path.join(workdir, 'checkpoints', '6')) < _size(qwen3_dir)


def test_open_evaluate_and_save_pretrained_read_the_base(lora_run, opened, tmp_path):
  cfg, workdir, results = lora_run
  again = evaluate_workdir(workdir)
  assert again['ndcg@10'] == results['test']['ndcg@10']
  run = opened
  exported = str(tmp_path / 'merged')
  run.save_pretrained(exported)
  merged = Run.from_model_dir(exported, max_length=cfg.data.max_length)
  from decomp.data.types import Group, Item
  group = Group(query_id='q', task='t2t', instruction='Find it.', query=Item(text='a red square'),
                docs=tuple(Item(text=d) for d in ('red square', 'blue circle', 'green')),
                labels=(1, 0, 0), doc_ids=tuple('abc'), doc_kinds=('',) * 3)
  arrays = run.encoder.encode([group], 3)
  want = run.scores_fn()(run.params, run.frozen, arrays)['sft']
  got = merged.scores_fn()(merged.params, merged.frozen, merged.encoder.encode([group], 3))['sft']
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)


def test_a_moved_base_opens_and_a_changed_one_is_refused(lora_run, qwen3_dir, tmp_path):
  _, workdir, _ = lora_run
  moved = str(tmp_path / 'moved')
  shutil.copytree(qwen3_dir, moved)
  Run.open(workdir, base_directory=moved)  # same content elsewhere: accepted
  with open(os.path.join(moved, 'config.json')) as f:
    config = json.load(f)
  config['rms_norm_eps'] = config['rms_norm_eps'] * 2  # other weights' behaviour
  with open(os.path.join(moved, 'config.json'), 'w') as f:
    json.dump(config, f)
  with pytest.raises(BaseChangedError, match='changed since the checkpoint was trained'):
    Run.open(workdir, base_directory=moved)
  with pytest.raises(BaseChangedError, match='is gone'):
    Run.open(workdir, base_directory=str(tmp_path / 'nowhere'))


def test_a_checkpoint_that_holds_the_frozen_weights_still_restores(lora_run, opened, monkeypatch,
                                                                   tmp_path):
  """Checkpoints written before adapters were saved alone hold ``frozen``: they restore from it
  without looking for the base."""
  _, workdir, _ = lora_run
  run = opened
  _, meta = ckpt_lib.load_state(workdir)
  old = str(tmp_path / 'old')
  os.makedirs(old)
  shutil.copy(os.path.join(workdir, logs.CONFIG_FILE), old)
  opt_state = ckpt_lib.load_state(workdir)[0]['opt_state']
  with ckpt_lib.Checkpoints(old, async_save=False) as checkpoints:
    checkpoints.save(6, {'params': run.params, 'frozen': run.frozen, 'opt_state': opt_state},
                     {k: v for k, v in meta.items() if k not in ('step', 'base')})
  monkeypatch.setattr(base_ref, 'check', lambda *a: pytest.fail('read the base'))
  reopened = Run.open(old)
  for got, want in zip(jax.tree.leaves(reopened.frozen), jax.tree.leaves(run.frozen)):
    np.testing.assert_array_equal(got, want)
