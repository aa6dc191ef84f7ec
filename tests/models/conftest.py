"""Tiny random Hugging Face checkpoints (saved by transformers + torch) shared by model tests.

Each fixture is session-scoped and returns a `TinyCheckpoint(path, torch_model)`: `path` is a
directory written by `save_pretrained` (transformers 5.x layout, float32 safetensors) and
`torch_model` the PyTorch reference in eval mode. torch is imported lazily so test modules that
do not use these fixtures do not pay for it.

- qwen2_checkpoint: Qwen2 (q/k/v bias), GQA 4/2 heads, rope_theta 1e6, untied LM head.
- llama3_checkpoint: Llama-3.1 style, rope_theta 500000 + llama3 rope scaling (with a short
  original context so the scaling changes frequencies seen at positions < 32), tied embeddings.
- llama_linear_checkpoint: Llama with linear rope scaling, attention and MLP biases and a head_dim
  that is not hidden_size / num_heads, untied.
"""

from __future__ import annotations

import os
import types
from typing import Any, NamedTuple

import numpy as np
import pytest

VOCAB = 128
PAD_ID = 0


class TinyCheckpoint(NamedTuple):
  path: str
  torch_model: Any


def _common(**overrides):
  kw = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            rms_norm_eps=1e-6,
            # Larger than HF's 0.02 so activations (and any mismatch) are not vanishingly small.
            initializer_range=0.1)
  kw.update(overrides)
  return kw


def _save(tmp_path_factory, name, model_cls, config, seed):
  import torch
  torch.manual_seed(seed)
  model = model_cls(config).eval()
  # HF zero-initialises biases; give them values so a dropped bias cannot go unnoticed.
  with torch.no_grad():
    for param_name, param in model.named_parameters():
      if param_name.endswith('bias'):
        param.normal_(0.0, 0.1)
  path = str(tmp_path_factory.mktemp(name))
  model.save_pretrained(path)
  return TinyCheckpoint(path, model)


@pytest.fixture(scope='session')
def qwen2_checkpoint(tmp_path_factory) -> TinyCheckpoint:
  from transformers import Qwen2Config, Qwen2ForCausalLM
  config = Qwen2Config(**_common(rope_theta=1e6, tie_word_embeddings=False))
  return _save(tmp_path_factory, 'qwen2', Qwen2ForCausalLM, config, seed=0)


@pytest.fixture(scope='session')
def llama3_checkpoint(tmp_path_factory) -> TinyCheckpoint:
  from transformers import LlamaConfig, LlamaForCausalLM
  config = LlamaConfig(**_common(
      rope_theta=500000.0, tie_word_embeddings=True,
      rope_scaling={'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0,
                    'high_freq_factor': 4.0, 'original_max_position_embeddings': 64}))
  return _save(tmp_path_factory, 'llama3', LlamaForCausalLM, config, seed=1)


@pytest.fixture(scope='session')
def llama_linear_checkpoint(tmp_path_factory) -> TinyCheckpoint:
  from transformers import LlamaConfig, LlamaForCausalLM
  config = LlamaConfig(**_common(
      rope_theta=10000.0, tie_word_embeddings=False, head_dim=32, attention_bias=True,
      mlp_bias=True, rope_scaling={'rope_type': 'linear', 'factor': 2.0}))
  return _save(tmp_path_factory, 'llama_linear', LlamaForCausalLM, config, seed=2)


@pytest.fixture(scope='session')
def padded_batches():
  """(sequences, left-padded (ids, mask), right-padded (ids, mask)) of lengths 9..13, T=16."""
  rng = np.random.default_rng(0)
  lengths = [13, 9, 11]
  sequences = [rng.integers(1, VOCAB, size=n) for n in lengths]
  t = 16
  left = np.full((len(lengths), t), PAD_ID, np.int32), np.zeros((len(lengths), t), np.int32)
  right = np.full((len(lengths), t), PAD_ID, np.int32), np.zeros((len(lengths), t), np.int32)
  for i, seq in enumerate(sequences):
    n = len(seq)
    left[0][i, t - n:], left[1][i, t - n:] = seq, 1
    right[0][i, :n], right[1][i, :n] = seq, 1
  return sequences, left, right


def torch_reference(torch_model, sequence):
  """(logits [L, V], final normed hidden [L, d]) numpy float32, of one unpadded sequence."""
  import torch
  with torch.no_grad():
    ids = torch.as_tensor(np.asarray(sequence)[None], dtype=torch.long)
    hidden = torch_model.model(input_ids=ids).last_hidden_state
    logits = torch_model.lm_head(hidden)
  return logits[0].numpy(), hidden[0].numpy()


@pytest.fixture(scope='session')
def torch_reference_fn():
  return torch_reference


@pytest.fixture
def assert_saves_same_tensors(tmp_path):
  """``check(model, path) -> saved_dir``: ``decomp.models.save_pretrained(model)`` writes exactly
  the tensors (names and values) of the checkpoint at ``path``."""
  from safetensors.numpy import load_file

  from decomp import models

  def check(model, path: str) -> str:
    saved = str(tmp_path / 'saved')
    models.save_pretrained(model, saved)
    original = load_file(os.path.join(path, 'model.safetensors'))
    written = load_file(os.path.join(saved, 'model.safetensors'))
    assert set(written) == set(original)
    for name in original:
      np.testing.assert_array_equal(written[name], original[name], err_msg=name)
    return saved

  return check


def _left_padded(vocab: int, seed: int = 0, lengths=(11, 7, 9), t: int = 12):
  """Random sequences and their left-padded batch ``(seqs, ids [B, T], mask [B, T])``."""
  rng = np.random.default_rng(seed)
  seqs = [rng.integers(1, vocab, size=n) for n in lengths]
  ids, mask = np.zeros((len(seqs), t), np.int32), np.zeros((len(seqs), t), np.int32)
  for i, s in enumerate(seqs):
    ids[i, t - len(s):], mask[i, t - len(s):] = s, 1
  return seqs, ids, mask


class CausalParity(NamedTuple):
  """Left-padded batches, jitted logits and the check against a torch causal LM run unpadded."""
  batch: Any  # (vocab, seed=0, lengths=(11, 7, 9), t=12) -> (seqs, ids, mask)
  logits: Any  # (model, ids, mask) -> [B, T, V]
  check: Any  # (model, torch_model, vocab, tol=1e-4): equal logits at every valid position


@pytest.fixture(scope='session')
def causal_parity() -> CausalParity:
  import torch
  from flax import nnx

  logits = nnx.jit(lambda model, ids, mask: model(ids, mask))

  def check(model, torch_model, vocab: int, tol: float = 1e-4) -> None:
    seqs, ids, mask = _left_padded(vocab)
    ours = np.asarray(logits(model, ids, mask))
    for i, seq in enumerate(seqs):
      with torch.no_grad():
        ref = torch_model(input_ids=torch.as_tensor(np.asarray(seq)[None]).long()).logits[0]
      ref = ref.numpy()
      assert ref.std() > 0.05
      np.testing.assert_allclose(ours[i][mask[i] == 1], ref, atol=tol, rtol=0)

  return CausalParity(_left_padded, logits, check)


# --- Qwen chat prompts: special tokens, the chat templates, Qwen2VLProcessor's outputs ------------

SPECIAL = ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<|vision_start|>', '<|vision_end|>',
           '<|image_pad|>', '<|video_pad|>']
ADDED = ['<think>', '</think>']  # Qwen3: added (not special) tokens

# Qwen3's chat template, reduced to the system/user turns and the generation prompt it renders
# for a reranker (the enable_thinking=False tail is verbatim).
QWEN3_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n"
    "    {%- if enable_thinking is defined and enable_thinking is false %}\n"
    "        {{- '<think>\\n\\n</think>\\n\\n' }}\n    {%- endif %}\n{%- endif %}")
# Qwen2-VL's (and Qwen2.5-VL's) chat template.
QWEN2VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _bpe_tokenizer(corpus, *, vocab_size: int = 400, extra_tokens=()):
  """A small byte-level BPE trained on ``corpus`` with Qwen's special tokens (offline); the
  ``extra_tokens`` (e.g. label words) are added whole, as single tokens."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(list(corpus) * 3, trainers.BpeTrainer(
      vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      special_tokens=SPECIAL))
  tok.add_tokens(ADDED + list(extra_tokens))
  return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token='<|im_end|>',
                                 pad_token='<|endoftext|>')


def _processor_output(tokenizer, text, images, image_processor=None):
  """What Qwen2VLProcessor returns for one prompt: its image processor's outputs, and the text
  with the i-th <|image_pad|> repeated grid_i.prod() // merge**2 times, then tokenized.
  (Qwen2VLProcessor itself cannot be built here: it insists on a video processor, which needs
  torchvision.)"""
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
  if not images:
    return {'input_ids': tokenizer(text, add_special_tokens=False)['input_ids']}
  out = (image_processor or Qwen2VLImageProcessorPil())(images, return_tensors='np')
  pieces = text.split('<|image_pad|>')
  assert len(pieces) == len(images) + 1
  expanded = pieces[0]
  for grid, piece in zip(out['image_grid_thw'], pieces[1:]):
    merge = getattr(image_processor, 'merge_size', 2)
    expanded += '<|image_pad|>' * int(grid.prod() // merge ** 2) + piece
  return {'input_ids': tokenizer(expanded, add_special_tokens=False)['input_ids'],
          'pixel_values': out['pixel_values'], 'image_grid_thw': out['image_grid_thw']}


@pytest.fixture(scope='session')
def qwen_chat():
  """SPECIAL, ADDED, QWEN3_TEMPLATE, QWEN2VL_TEMPLATE, ``bpe_tokenizer(corpus, ...)`` and
  ``processor_output(tokenizer, text, images, image_processor=None)``."""
  return types.SimpleNamespace(SPECIAL=SPECIAL, ADDED=ADDED, QWEN3_TEMPLATE=QWEN3_TEMPLATE,
                               QWEN2VL_TEMPLATE=QWEN2VL_TEMPLATE, bpe_tokenizer=_bpe_tokenizer,
                               processor_output=_processor_output)
