"""Gemma 3 text (sandwich norms, (1 + w) RMSNorm, sliding-window layers with their own RoPE base,
query_pre_attn_scalar, sqrt(d) embedding scale, tied head, final soft-capping) parity with
transformers' torch Gemma3ForCausalLM, through the family table."""

import dataclasses
import json
import os

import numpy as np
import pytest
from flax import nnx

from decomp import models
from decomp.models.gemma3 import Gemma3, Gemma3TextConfig

VOCAB = 96
WINDOW = 4  # shorter than every test sequence: the sliding layers' mask matters


@pytest.fixture(scope='module')
def gemma3(tmp_path_factory):
  import torch
  from transformers import Gemma3ForCausalLM
  from transformers import Gemma3TextConfig as TorchConfig
  config = TorchConfig(
      vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
      num_attention_heads=4, num_key_value_heads=2, head_dim=24, sliding_window=WINDOW,
      layer_types=['sliding_attention', 'full_attention', 'sliding_attention'],
      query_pre_attn_scalar=20, final_logit_softcapping=5.0, initializer_range=0.1,
      # Read but not applied by transformers 5.24's Gemma3Attention, nor by decomp: parity with
      # a cap this small shows both ignore it.
      attn_logit_softcapping=0.5,
      rope_parameters={'full_attention': {'rope_type': 'linear', 'factor': 2.0,
                                          'rope_theta': 1e5},
                       'sliding_attention': {'rope_type': 'default', 'rope_theta': 1e3}})
  torch.manual_seed(0)
  model = Gemma3ForCausalLM(config).eval()
  gen = torch.Generator().manual_seed(1)
  with torch.no_grad():  # norm weights away from 0 (= scale 1): a dropped norm would pass unseen
    for name, param in model.named_parameters():
      if name.endswith('norm.weight'):
        param.copy_(0.3 * torch.randn(param.shape, generator=gen))
  path = str(tmp_path_factory.mktemp('gemma3'))
  model.save_pretrained(path)
  return path, model


def test_gemma3_matches_torch_left_padded(gemma3, causal_parity):
  path, torch_model = gemma3
  model = models.load_pretrained(path)
  assert isinstance(model, Gemma3)
  c = model.config
  assert (c.sliding_window, c.layer_types[1], c.rope_scaling_factor) == (
      WINDOW, 'full_attention', 2.0)
  assert model.lm_head is None  # tied, as Gemma 3 ships
  causal_parity.check(model, torch_model, VOCAB)
  # The sliding window matters: the same weights with a window over the whole sequence differ.
  _, ids, mask = causal_parity.batch(VOCAB)
  wide = nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: Gemma3(
      dataclasses.replace(c, sliding_window=64), rngs=nnx.Rngs(0)))), nnx.state(model))
  assert np.abs(np.asarray(causal_parity.logits(wide, ids, mask))
                - np.asarray(causal_parity.logits(model, ids, mask))).max() > 1e-2


def test_gemma3_hidden_states_at_index_and_head_rows(gemma3, causal_parity):
  """What the reranker reads: hidden states at the answer position and the LM-head rows give
  the (un-capped) logits of those tokens."""
  path, _ = gemma3
  model = models.load_pretrained(path)
  _, ids, mask = causal_parity.batch(VOCAB)
  full = model.hidden_states(ids, mask)
  last = model.hidden_states(ids, mask, at_index=np.full(3, ids.shape[1] - 1, np.int32))
  np.testing.assert_allclose(np.asarray(last), np.asarray(full[:, -1]), atol=1e-6)
  rows = model.lm_head_rows(np.asarray([3, 5], np.int32))
  z = np.asarray(last @ rows.T)
  capped = 5.0 * np.tanh(z / 5.0)
  np.testing.assert_allclose(capped, np.asarray(model(ids, mask))[:, -1, [3, 5]], atol=1e-5)


def test_gemma3_save_pretrained_loads_back_in_transformers(gemma3, assert_saves_same_tensors,
                                                          causal_parity):
  import torch
  from transformers import AutoModelForCausalLM
  path, torch_model = gemma3
  model = models.load_pretrained(path)
  saved = assert_saves_same_tensors(model, path)
  reloaded = AutoModelForCausalLM.from_pretrained(saved).eval()
  assert type(reloaded).__name__ == 'Gemma3ForCausalLM'
  ids = torch.as_tensor(causal_parity.batch(VOCAB)[0][0][None]).long()
  with torch.no_grad():
    np.testing.assert_allclose(reloaded(input_ids=ids).logits.numpy(),
                               torch_model(input_ids=ids).logits.numpy(), atol=1e-6)


def test_gemma3_pre5_config_layout(gemma3, tmp_path):
  """Published Gemma 3 configs (transformers 4.5x): rope_theta, rope_local_base_freq,
  rope_scaling and sliding_window_pattern instead of rope_parameters / layer_types."""
  path, _ = gemma3
  with open(os.path.join(path, 'config.json')) as f:
    config = json.load(f)
  new = Gemma3TextConfig.from_hf(config)
  old = {k: v for k, v in config.items() if k not in ('rope_parameters', 'layer_types')}
  old.update(rope_theta=1e5, rope_local_base_freq=1e3, sliding_window_pattern=2,
             rope_scaling={'rope_type': 'linear', 'factor': 2.0})
  assert Gemma3TextConfig.from_hf(old) == new
  assert Gemma3TextConfig.from_hf(new.to_hf()) == new
  with pytest.raises(ValueError, match='hidden_activation'):
    Gemma3TextConfig.from_hf({**config, 'hidden_activation': 'silu'})
