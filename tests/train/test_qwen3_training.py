"""`python -m decomp.train --set model=<dir>` trains a local Qwen3 checkpoint (q/k norms, head_dim
independent of hidden/heads): the reranker is built from the checkpoint through the one
construction path, trains, and resumes to the same numbers."""

import numpy as np
import pytest

from decomp.train import config as config_lib
from decomp.train import overrides as overrides_lib
from decomp.train import recipes
from decomp.train import logs
from decomp.train import state as state_lib
from decomp.train.loop import train


@pytest.fixture(scope='module')
def qwen3_dir(tmp_path_factory):
  import torch
  from transformers import Qwen3Config, Qwen3ForCausalLM
  tokenizer = state_lib.resolve_tokenizer(recipes.get_config('playground'))
  config = Qwen3Config(vocab_size=len(tokenizer) + 8, hidden_size=64, intermediate_size=96,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=24, tie_word_embeddings=True, initializer_range=0.05)
  torch.manual_seed(0)
  path = str(tmp_path_factory.mktemp('qwen3'))
  Qwen3ForCausalLM(config).save_pretrained(path)
  tokenizer.save_pretrained(path)
  return path


def _cfg(path, *overrides):
  return overrides_lib.apply_overrides(recipes.get_config('playground'), [
      f'model={path}', 'steps=6', 'batch_size=4', 'eval_batch_size=4', 'num_devices=1',
      'mesh={"data": 1}', 'negatives=3', 'eval_every=0',
      'checkpoint_every=3', 'keep_checkpoints=3', 'test_groups=8', 'eval_groups=8',
      'example_log_every=3', 'quiet=true', 'finetune=lora', 'lora_rank=4', 'max_length=48',
      'playground={"tasks": ["t2t"], "num_eval_queries": 8}', *overrides])


def test_a_qwen3_checkpoint_trains_and_resumes(qwen3_dir, tmp_path, assert_resumes_exactly):
  cfg = _cfg(qwen3_dir)
  assert state_lib.data_shapes(cfg, state_lib.resolve_tokenizer(cfg)).vision is None
  reference = str(tmp_path / 'reference')
  results = train(cfg, reference)
  records = logs.read_steps(reference)
  assert len(records) == 6 and np.isfinite([r['loss'] for r in records]).all()
  assert 0 <= results['test']['ndcg@10'] <= 1
  assert_resumes_exactly(cfg, reference, 6)
