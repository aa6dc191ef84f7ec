"""HF config layouts, load/save round trips through transformers, and bad-checkpoint errors."""

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from decomp.models.config import DecoderConfig, rope_inv_freq
from decomp.models.hf import CheckpointError, load_pretrained, save_pretrained

# config.json of a Qwen2.5 checkpoint as published (written by transformers 4.43): top-level
# rope_theta, no rope_parameters.
QWEN25_PRE5 = {
    'architectures': ['Qwen2ForCausalLM'], 'attention_dropout': 0.0, 'bos_token_id': 151643,
    'eos_token_id': 151645, 'hidden_act': 'silu', 'hidden_size': 896, 'initializer_range': 0.02,
    'intermediate_size': 4864, 'max_position_embeddings': 32768, 'max_window_layers': 21,
    'model_type': 'qwen2', 'num_attention_heads': 14, 'num_hidden_layers': 24,
    'num_key_value_heads': 2, 'rms_norm_eps': 1e-06, 'rope_theta': 1000000.0,
    'sliding_window': 32768, 'tie_word_embeddings': True, 'torch_dtype': 'bfloat16',
    'transformers_version': '4.43.1', 'use_cache': True, 'use_sliding_window': False,
    'vocab_size': 151936}
# A Llama-3.2 config.json as published (transformers 4.45): rope_scaling + top-level rope_theta.
LLAMA32_PRE5 = {
    'architectures': ['LlamaForCausalLM'], 'attention_bias': False, 'attention_dropout': 0.0,
    'bos_token_id': 128000, 'eos_token_id': 128001, 'head_dim': 64, 'hidden_act': 'silu',
    'hidden_size': 2048, 'initializer_range': 0.02, 'intermediate_size': 8192,
    'max_position_embeddings': 131072, 'mlp_bias': False, 'model_type': 'llama',
    'num_attention_heads': 32, 'num_hidden_layers': 16, 'num_key_value_heads': 8,
    'pretraining_tp': 1, 'rms_norm_eps': 1e-05,
    'rope_scaling': {'factor': 32.0, 'high_freq_factor': 4.0, 'low_freq_factor': 1.0,
                     'original_max_position_embeddings': 8192, 'rope_type': 'llama3'},
    'rope_theta': 500000.0, 'tie_word_embeddings': True, 'torch_dtype': 'bfloat16',
    'transformers_version': '4.45.0.dev0', 'use_cache': True, 'vocab_size': 128256}
# Llama-2 era: no head_dim / num_key_value_heads, rope_scaling spelled with 'type'.
LLAMA2_PRE5 = {
    'architectures': ['LlamaForCausalLM'], 'hidden_size': 4096, 'intermediate_size': 11008,
    'max_position_embeddings': 4096, 'model_type': 'llama', 'num_attention_heads': 32,
    'num_hidden_layers': 32, 'rms_norm_eps': 1e-05, 'rope_scaling': {'type': 'linear',
                                                                      'factor': 2.0},
    'tie_word_embeddings': False, 'vocab_size': 32000}


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def _copy(checkpoint, tmp_path):
  target = str(tmp_path / 'ckpt')
  shutil.copytree(checkpoint.path, target)
  return target


@nnx.jit
def _logits(model, ids, mask):
  return model(ids, mask)


def _torch_logits(torch_model, ids, mask):
  import torch
  with torch.no_grad():
    ids_t, mask_t = torch.as_tensor(np.asarray(ids)).long(), torch.as_tensor(np.asarray(mask))
    positions = torch.clamp(mask_t.long().cumsum(-1) - 1, min=0)
    return torch_model(input_ids=ids_t, attention_mask=mask_t,
                       position_ids=positions).logits.numpy()


# --- config layouts ---------------------------------------------------------------------------

def test_transformers5_writes_rope_parameters_and_we_read_them(qwen2_checkpoint, llama3_checkpoint):
  qwen = _read_json(os.path.join(qwen2_checkpoint.path, 'config.json'))
  llama = _read_json(os.path.join(llama3_checkpoint.path, 'config.json'))
  # The 5.x layout: everything under rope_parameters, nothing at top level.
  assert 'rope_theta' not in qwen and qwen['rope_parameters']['rope_theta'] == 1e6
  assert 'rope_scaling' not in llama and llama['rope_parameters']['rope_type'] == 'llama3'
  q, l = DecoderConfig.from_hf(qwen), DecoderConfig.from_hf(llama)
  assert (q.architecture, q.rope_theta, q.rope_scaling, q.attention_bias) == ('qwen2', 1e6, None,
                                                                              True)
  assert not q.tie_word_embeddings and l.tie_word_embeddings
  assert l.rope_theta == 500000.0
  assert l.rope_scaling == {'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0,
                            'high_freq_factor': 4.0, 'original_max_position_embeddings': 64}
  assert (l.num_heads, l.num_kv_heads, l.head_dim) == (4, 2, 16)


@pytest.mark.parametrize('old', [QWEN25_PRE5, LLAMA32_PRE5, LLAMA2_PRE5],
                         ids=['qwen2.5', 'llama3.2', 'llama2'])
def test_pre5_layout_reads_like_transformers_reads_it(old):
  from transformers import AutoConfig
  ours = DecoderConfig.from_hf(old)
  # transformers 5.24 converts the old layout on load; its 5.x dict must give the same config.
  theirs = AutoConfig.for_model(**old).to_dict()
  assert 'rope_parameters' in theirs
  assert DecoderConfig.from_hf(theirs) == ours
  if old is QWEN25_PRE5:
    assert ours.rope_theta == 1e6 and ours.tie_word_embeddings and ours.attention_bias
    assert (ours.num_kv_heads, ours.head_dim) == (2, 64)
  elif old is LLAMA32_PRE5:
    assert ours.rope_theta == 500000.0 and ours.rope_scaling['factor'] == 32.0
    assert ours.rope_scaling['original_max_position_embeddings'] == 8192
  else:
    assert ours.rope_theta == 10000.0 and ours.rope_scaling == {'rope_type': 'linear',
                                                                'factor': 2.0}
    assert (ours.num_kv_heads, ours.head_dim) == (32, 128)


def test_rope_frequencies_match_transformers():
  import torch
  from transformers import LlamaConfig
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
  for old in (LLAMA32_PRE5, LLAMA2_PRE5):
    hf_config = LlamaConfig(**{k: v for k, v in old.items() if k != 'architectures'})
    rope_type = hf_config.rope_parameters['rope_type']
    ref, _ = ROPE_INIT_FUNCTIONS[rope_type](hf_config, torch.device('cpu'))
    np.testing.assert_allclose(rope_inv_freq(DecoderConfig.from_hf(old)), ref.numpy(), rtol=1e-6)


def test_old_layout_checkpoint_gives_same_logits(llama3_checkpoint, tmp_path, padded_batches):
  path = _copy(llama3_checkpoint, tmp_path)
  new = _read_json(os.path.join(path, 'config.json'))
  old = {k: v for k, v in new.items() if k not in ('rope_parameters', 'dtype')}
  scaling = dict(new['rope_parameters'])
  old['rope_theta'] = scaling.pop('rope_theta')
  old['rope_scaling'] = scaling
  old['torch_dtype'] = 'float32'
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(old, f)
  _, (ids, mask), _ = padded_batches
  reference = _logits(load_pretrained(llama3_checkpoint.path), ids, mask)
  np.testing.assert_allclose(_logits(load_pretrained(path), ids, mask), reference, atol=1e-6)
  # What a reader of only one layout would compute (theta 10000, no scaling) is visibly wrong.
  wrong = load_pretrained(path)
  wrong.config = DecoderConfig(**{**vars(wrong.config), 'rope_theta': 10000.0,
                                  'rope_scaling': None})
  valid = np.asarray(mask, bool)
  assert np.abs(np.asarray(_logits(wrong, ids, mask) - reference))[valid].max() > 1e-2


def test_to_hf_loads_back_in_transformers_as_same_architecture(qwen2_checkpoint, llama3_checkpoint,
                                                               llama_linear_checkpoint, tmp_path):
  from transformers import AutoConfig
  for i, checkpoint in enumerate((qwen2_checkpoint, llama3_checkpoint, llama_linear_checkpoint)):
    ours = DecoderConfig.from_hf(_read_json(os.path.join(checkpoint.path, 'config.json')))
    directory = tmp_path / str(i)
    directory.mkdir()
    (directory / 'config.json').write_text(json.dumps(ours.to_hf()))
    theirs = AutoConfig.from_pretrained(str(directory))
    assert type(theirs).__name__ == type(checkpoint.torch_model.config).__name__
    assert theirs.architectures == [ours.hf_architecture]
    assert DecoderConfig.from_hf(theirs.to_dict()) == ours
    # A transformers 4.x reader ignores rope_parameters; the pre-5 keys are written too.
    pre5_view = {k: v for k, v in ours.to_hf().items() if k != 'rope_parameters'}
    assert DecoderConfig.from_hf(pre5_view) == ours


def test_unsupported_architecture_and_features_are_named():
  with pytest.raises(ValueError, match='MistralForCausalLM'):
    DecoderConfig.from_hf({**LLAMA2_PRE5, 'architectures': ['MistralForCausalLM']})
  with pytest.raises(ValueError, match="model_type 'gpt2'"):
    DecoderConfig.from_hf({k: v for k, v in LLAMA2_PRE5.items() if k != 'architectures'}
                          | {'model_type': 'gpt2'})
  with pytest.raises(ValueError, match="rope_type 'yarn'"):
    DecoderConfig.from_hf({**LLAMA2_PRE5, 'rope_scaling': {'rope_type': 'yarn', 'factor': 4.0}})
  with pytest.raises(ValueError, match='sliding-window'):
    DecoderConfig.from_hf({**QWEN25_PRE5, 'use_sliding_window': True})
  with pytest.raises(ValueError, match="'vocab_size'"):
    DecoderConfig.from_hf({k: v for k, v in QWEN25_PRE5.items() if k != 'vocab_size'})


# --- save / load round trips ------------------------------------------------------------------

@pytest.mark.parametrize('fixture', ['qwen2_checkpoint', 'llama3_checkpoint'])
def test_save_pretrained_round_trips_through_transformers(fixture, request, tmp_path,
                                                          padded_batches):
  from transformers import AutoModelForCausalLM
  checkpoint = request.getfixturevalue(fixture)
  model = load_pretrained(checkpoint.path)
  saved = str(tmp_path / 'saved')
  save_pretrained(model, saved)
  assert sorted(os.listdir(saved)) == ['config.json', 'model.safetensors']
  # Bit-exact weights, in HF names and layout.
  original, written = load_file(os.path.join(checkpoint.path, 'model.safetensors')), load_file(
      os.path.join(saved, 'model.safetensors'))
  assert set(written) == set(original)
  for name in original:
    np.testing.assert_array_equal(written[name], original[name], err_msg=name)
  reloaded = AutoModelForCausalLM.from_pretrained(saved).eval()
  _, (ids, mask), _ = padded_batches
  valid = np.asarray(mask, bool)
  ours = np.asarray(_logits(model, ids, mask))
  np.testing.assert_allclose(_torch_logits(reloaded, ids, mask)[valid], ours[valid], atol=1e-4)


def test_sharded_save_with_index_loads_in_both(qwen2_checkpoint, tmp_path, padded_batches):
  from transformers import AutoModelForCausalLM
  model = load_pretrained(qwen2_checkpoint.path)
  saved = str(tmp_path / 'sharded')
  save_pretrained(model, saved, max_shard_size='100KB')
  files = sorted(os.listdir(saved))
  shards = [f for f in files if f.startswith('model-')]
  assert 'model.safetensors.index.json' in files and 'model.safetensors' not in files
  assert len(shards) > 2
  index = _read_json(os.path.join(saved, 'model.safetensors.index.json'))
  assert set(index['weight_map'].values()) == set(shards)
  _, _, (ids, mask) = padded_batches
  expected = np.asarray(_logits(model, ids, mask))
  np.testing.assert_array_equal(_logits(load_pretrained(saved), ids, mask), expected)
  valid = np.asarray(mask, bool)
  theirs = _torch_logits(AutoModelForCausalLM.from_pretrained(saved).eval(), ids, mask)
  np.testing.assert_allclose(theirs[valid], expected[valid], atol=1e-4)
  # Saving again unsharded into the same directory leaves no stale shards behind.
  save_pretrained(model, saved)
  assert sorted(os.listdir(saved)) == ['config.json', 'model.safetensors']


def test_bfloat16_params_save_as_bfloat16(llama3_checkpoint, tmp_path):
  model = load_pretrained(llama3_checkpoint.path, param_dtype=jnp.bfloat16)
  saved = str(tmp_path / 'bf16')
  save_pretrained(model, saved)
  assert _read_json(os.path.join(saved, 'config.json'))['dtype'] == 'bfloat16'
  reloaded = load_pretrained(saved)  # bf16 file -> float32 params
  a = model.layers[0].mlp.up_proj.kernel[...]
  assert a.dtype == jnp.bfloat16
  np.testing.assert_array_equal(reloaded.layers[0].mlp.up_proj.kernel[...],
                                a.astype(jnp.float32))


# --- bad checkpoints --------------------------------------------------------------------------

def test_missing_config_or_weights(qwen2_checkpoint, tmp_path):
  path = _copy(qwen2_checkpoint, tmp_path)
  os.remove(os.path.join(path, 'model.safetensors'))
  with pytest.raises(FileNotFoundError, match='no model.safetensors or model.safetensors.index'):
    load_pretrained(path)
  os.remove(os.path.join(path, 'config.json'))
  with pytest.raises(FileNotFoundError, match='no config.json'):
    load_pretrained(path)
  with pytest.raises(FileNotFoundError, match='does not exist'):
    load_pretrained(str(tmp_path / 'nowhere'))


def test_unsupported_architecture_in_checkpoint(qwen2_checkpoint, tmp_path):
  path = _copy(qwen2_checkpoint, tmp_path)
  config = _read_json(os.path.join(path, 'config.json'))
  config['architectures'] = ['GemmaForCausalLM']
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(config, f)
  with pytest.raises(ValueError, match=r"config.json: unsupported architecture 'GemmaForCausalLM'"):
    load_pretrained(path)
  with open(os.path.join(path, 'config.json'), 'w') as f:
    f.write('{"architectures": ["Qwen2')
  with pytest.raises(CheckpointError, match='config.json is not valid JSON'):
    load_pretrained(path)


def _rewrite_weights(path, edit):
  file = os.path.join(path, 'model.safetensors')
  tensors = load_file(file)
  edit(tensors)
  save_file(tensors, file, metadata={'format': 'pt'})


def test_missing_tensor_is_named(qwen2_checkpoint, tmp_path):
  path = _copy(qwen2_checkpoint, tmp_path)
  _rewrite_weights(path, lambda t: t.pop('model.layers.1.self_attn.k_proj.bias'))
  with pytest.raises(CheckpointError, match=r"'model.layers.1.self_attn.k_proj.bias' is missing"):
    load_pretrained(path)


def test_misshaped_tensor_is_named_with_shapes(qwen2_checkpoint, tmp_path):
  path = _copy(qwen2_checkpoint, tmp_path)

  def cut(tensors):
    name = 'model.layers.0.mlp.up_proj.weight'
    tensors[name] = tensors[name][:100]
  _rewrite_weights(path, cut)
  with pytest.raises(CheckpointError, match=r"'model.layers.0.mlp.up_proj.weight' has shape "
                                            r"\(100, 64\), expected \(128, 64\)"):
    load_pretrained(path)


def test_weights_the_config_does_not_describe_are_an_error(llama_linear_checkpoint, tmp_path):
  # Biases on disk but attention_bias=false in config.json would silently drop them.
  path = _copy(llama_linear_checkpoint, tmp_path)
  config = _read_json(os.path.join(path, 'config.json'))
  config['attention_bias'] = False
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(config, f)
  with pytest.raises(CheckpointError, match=r'tensors the config does not describe.*self_attn'):
    load_pretrained(path)


def test_corrupt_safetensors_names_the_file(qwen2_checkpoint, tmp_path):
  path = _copy(qwen2_checkpoint, tmp_path)
  file = os.path.join(path, 'model.safetensors')
  with open(file, 'r+b') as f:
    f.write(b'\xff' * 64)  # clobber the header
  with pytest.raises(CheckpointError, match='cannot read safetensors file .*model.safetensors'):
    load_pretrained(path)
  size = os.path.getsize(file)
  shutil.copy(os.path.join(qwen2_checkpoint.path, 'model.safetensors'), file)
  with open(file, 'r+b') as f:
    f.truncate(size // 2)  # valid header, data cut short
  with pytest.raises(CheckpointError, match=r'model.safetensors'):
    load_pretrained(path)


def test_missing_shard_is_named(qwen2_checkpoint, tmp_path):
  saved = str(tmp_path / 'sharded')
  save_pretrained(load_pretrained(qwen2_checkpoint.path), saved, max_shard_size=100_000)
  second = sorted(f for f in os.listdir(saved) if f.startswith('model-'))[1]
  os.remove(os.path.join(saved, second))
  with pytest.raises(FileNotFoundError, match=f'{second}, which is missing'):
    load_pretrained(saved)
