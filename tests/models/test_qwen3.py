"""Qwen3 (per-head q/k RMSNorm, free head_dim) parity with transformers' torch Qwen3ForCausalLM."""

import json
import os
import shutil

import numpy as np
import pytest

from decomp.models import hf
from decomp.models.config import DecoderConfig

VOCAB = 96


def _perturb(model, seed):
  """Norm weights away from 1 (a dropped q/k norm would otherwise pass unseen)."""
  import torch
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in model.named_parameters():
      if name.endswith('norm.weight'):
        param.copy_(1.0 + 0.3 * torch.randn(param.shape, generator=gen))


def _qwen3(tmp_path_factory, tie):
  import torch
  from transformers import Qwen3Config, Qwen3ForCausalLM
  # head_dim 24 != hidden 64 / 4 heads, as in real Qwen3 (0.6B: 1024 / 16 heads, head_dim 128).
  config = Qwen3Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                       rope_parameters={'rope_type': 'default', 'rope_theta': 1e6},
                       tie_word_embeddings=tie, initializer_range=0.1)
  torch.manual_seed(3 + tie)
  model = Qwen3ForCausalLM(config).eval()
  _perturb(model, 7 + tie)
  path = str(tmp_path_factory.mktemp(f'qwen3_tie{int(tie)}'))
  model.save_pretrained(path)
  return path, model


@pytest.fixture(scope='module', params=[False, True], ids=['untied', 'tied'])
def qwen3(request, tmp_path_factory):
  return _qwen3(tmp_path_factory, request.param)


def test_qwen3_matches_torch_left_padded(qwen3, causal_parity):
  path, torch_model = qwen3
  model = hf.load_pretrained(path)
  c = model.config
  assert (c.architecture, c.head_dim, c.qk_norm, c.attention_bias) == ('qwen3', 24, True, False)
  assert (model.lm_head is None) == torch_model.config.tie_word_embeddings
  causal_parity.check(model, torch_model, VOCAB)
  # The q/k norms matter: resetting them to 1 changes the logits well beyond the tolerance.
  _, ids, mask = causal_parity.batch(VOCAB)
  before = np.asarray(causal_parity.logits(model, ids, mask))
  for layer in model.layers:
    layer.self_attn.q_norm.scale[...] = np.ones(24, np.float32)
  assert np.abs(np.asarray(causal_parity.logits(model, ids, mask)) - before).max() > 1e-2


def test_qwen3_pre5_config_layout_and_default_head_dim(qwen3, tmp_path, causal_parity):
  path, torch_model = qwen3
  copy = str(tmp_path / 'old')
  shutil.copytree(path, copy)
  with open(os.path.join(copy, 'config.json')) as f:
    config = json.load(f)
  rope = config.pop('rope_parameters')
  config['rope_theta'], config['rope_scaling'] = rope['rope_theta'], None
  with open(os.path.join(copy, 'config.json'), 'w') as f:
    json.dump(config, f)
  assert hf.read_config(copy) == hf.read_config(path)
  causal_parity.check(hf.load_pretrained(copy), torch_model, VOCAB)
  # Absent head_dim means Qwen3Config's default 128, not hidden / heads.
  del config['head_dim']
  assert DecoderConfig.from_hf(config).head_dim == 128


def test_qwen3_save_pretrained_loads_back_in_transformers(qwen3, assert_saves_same_tensors,
                                                         causal_parity):
  from transformers import AutoModelForCausalLM, Qwen3ForCausalLM
  path, torch_model = qwen3
  model = hf.load_pretrained(path)
  saved = assert_saves_same_tensors(model, path)
  reloaded = AutoModelForCausalLM.from_pretrained(saved).eval()
  assert isinstance(reloaded, Qwen3ForCausalLM)
  causal_parity.check(model, reloaded, VOCAB)
