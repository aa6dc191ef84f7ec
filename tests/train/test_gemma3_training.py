"""`python -m decomp.train --set model=<dir>` trains a local Gemma 3 text checkpoint through the
family table: the reranker reads the Gemma backbone's own logits, and trains (LoRA)."""

import numpy as np
import pytest

from decomp.train import logs
from decomp.train import state as state_lib
from decomp.train.loop import train


@pytest.fixture(scope='module')
def gemma3_dir(tiny_checkpoint_dir):
  from transformers import Gemma3ForCausalLM, Gemma3TextConfig
  # Sliding windows of 8 tokens, far shorter than the prompts (max_length 48).
  return tiny_checkpoint_dir(Gemma3ForCausalLM, Gemma3TextConfig, hidden_size=64,
                             intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, head_dim=16, sliding_window=8,
                             query_pre_attn_scalar=16,
                             layer_types=['sliding_attention', 'full_attention'],
                             initializer_range=0.05)


def test_the_reranker_reads_the_gemma3_logits(gemma3_dir):
  """The generic build path gives the Gemma 3 model's own label logits at the answer token."""
  from decomp.models import load_pretrained
  from decomp.models.build import RerankerSpec, build_reranker
  from decomp.models.gemma3 import Gemma3
  model = load_pretrained(gemma3_dir)
  assert isinstance(model, Gemma3)
  labels = (5, 9)
  reranker = build_reranker(RerankerSpec(decoder=model.config, label_ids=labels,
                                         checkpoint=gemma3_dir))
  assert isinstance(reranker.decoder, Gemma3)
  rng = np.random.default_rng(0)
  ids = rng.integers(1, model.config.vocab_size, (2, 20)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, :7] = 0  # left padding
  out = reranker.readout(ids, mask)
  logits = np.asarray(model(ids, mask))[:, -1]
  np.testing.assert_allclose(np.asarray(out.yes), logits[:, labels[0]], atol=1e-4)
  np.testing.assert_allclose(np.asarray(out.no), logits[:, labels[1]], atol=1e-4)


def test_a_gemma3_checkpoint_trains(gemma3_dir, tmp_path, checkpoint_run_config):
  cfg = checkpoint_run_config(gemma3_dir, 'learning_rate=3e-3')
  assert state_lib.data_shapes(cfg, state_lib.resolve_tokenizer(cfg)).vision is None
  workdir = str(tmp_path / 'run')
  results = train(cfg, workdir)
  records = logs.read_steps(workdir)
  losses = [r['loss'] for r in records]
  assert len(records) == 6 and np.isfinite(losses).all()
  updates = [r['update_norm'] for r in records if r.get('update_norm') is not None]
  assert updates and updates[-1] > 0  # the adapters moved
  assert 0 <= results['test']['ndcg@10'] <= 1
