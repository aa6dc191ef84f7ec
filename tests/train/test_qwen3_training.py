"""`python -m decomp.train --set model=<dir>` trains a local Qwen3 checkpoint (q/k norms, head_dim
independent of hidden/heads): the reranker is built from the checkpoint through the one
construction path, trains, and resumes to the same numbers."""

import numpy as np
import pytest

from decomp.train import logs
from decomp.train import state as state_lib
from decomp.train.loop import train


@pytest.fixture(scope='module')
def qwen3_dir(tiny_checkpoint_dir):
  from transformers import Qwen3Config, Qwen3ForCausalLM
  return tiny_checkpoint_dir(Qwen3ForCausalLM, Qwen3Config, hidden_size=64, intermediate_size=96,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             head_dim=24, tie_word_embeddings=True, initializer_range=0.05)


def test_a_qwen3_checkpoint_trains_and_resumes(qwen3_dir, tmp_path, assert_resumes_exactly,
                                               checkpoint_run_config):
  cfg = checkpoint_run_config(qwen3_dir)
  assert state_lib.data_shapes(cfg, state_lib.resolve_tokenizer(cfg)).vision is None
  reference = str(tmp_path / 'reference')
  results = train(cfg, reference)
  records = logs.read_steps(reference)
  assert len(records) == 6 and np.isfinite([r['loss'] for r in records]).all()
  assert 0 <= results['test']['ndcg@10'] <= 1
  assert_resumes_exactly(cfg, reference, 6)
