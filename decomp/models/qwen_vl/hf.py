"""Qwen2-VL / Qwen2.5-VL checkpoints <-> QwenVL: config.json + safetensors, no torch.

Tensor-name layouts in circulation, all read:

- transformers 4.4x: text `model.embed_tokens / model.layers.* / model.norm`, vision `visual.*`;
- transformers 4.5x / 5.x: text `model.language_model.*`, vision `model.visual.*`;
- `lm_head.weight` present (untied) or absent (tied: `tie_word_embeddings` at the root or in
  `text_config`).

`save_vl_pretrained` writes tensor names as transformers 5.24's own save_pretrained does (the
names of the published checkpoints: 4.4x `model.*` / `visual.*` for Qwen2-VL and Qwen2.5-VL,
`model.language_model.*` / `model.visual.*` for Qwen3-VL) and config.json in the 5.x layout
(`text_config`); LoRA adapters (decoder and vision tower) are folded in.
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from decomp.models.hf import (CONFIG_NAME, CheckpointError, TensorSource, check_unexpected,
                              decoder_tensor_name, hf_tensors, load_variables, write_checkpoint)
from decomp.models.qwen_vl.model import QwenVL, QwenVLConfig
from decomp.models.sharding import Rules
from decomp.models.qwen_vl.lora import merge_vision_lora

__all__ = ['load_vl_pretrained', 'save_vl_pretrained', 'vision_tensor_name']

_TEXT_PREFIXES = ('model.language_model.', 'model.')
_VISION_PREFIXES = ('model.visual.', 'visual.')


def vision_tensor_name(path: tuple, prefix: str = 'model.visual.') -> tuple[str, str]:
  """(HF name, kind) of a QwenVisionTower state path (kinds as hf.load_variables)."""
  parts = [str(p) for p in path]
  leaf = parts[-1]
  if parts == ['pos_embed']:  # Qwen3-VL's learned position table (an nn.Embedding)
    return prefix + 'pos_embed.weight', 'copy'
  if parts[:2] == ['merger', 'mlp']:  # nn.Sequential(Linear, GELU, Linear): indices 0 and 2
    parts[2] = {'0': '0', '1': '2'}[parts[2]]
  name = prefix + '.'.join(parts[:-1])
  if leaf == 'kernel':
    return name + '.weight', 'conv' if parts[0] == 'patch_embed' else 'T'
  if leaf in ('scale', 'bias'):
    return name + ('.weight' if leaf == 'scale' else '.bias'), 'copy'
  raise CheckpointError(f'no HF name for vision parameter {".".join(parts)}')


def _prefix(names: set[str], candidates: tuple[str, ...], probe: str) -> str | None:
  for prefix in candidates:
    if any(n.startswith(prefix + probe) for n in names):
      return prefix
  return None


def load_vl_pretrained(path: str | os.PathLike, *, dtype=jnp.float32, param_dtype=None,
                       mesh=None, rules: Rules | None = None, remat: str | bool = 'none') -> QwenVL:
  """A QwenVL with weights read from a local Qwen2-VL / Qwen2.5-VL directory (any layout).

  Raises FileNotFoundError (config, weights), ValueError (config), CheckpointError (missing
  language-model or vision weights, missing / mis-shaped / unexpected tensors).
  """
  path = os.fspath(path)
  with open(os.path.join(path, CONFIG_NAME), encoding='utf-8') as f:
    hf = json.load(f)
  try:
    config = QwenVLConfig.from_hf(hf)
  except ValueError as e:
    raise ValueError(f'{os.path.join(path, CONFIG_NAME)}: {e}') from e
  param_dtype = jnp.float32 if param_dtype is None else param_dtype
  source = TensorSource(path)
  names = source.names()
  text_prefix = _prefix(names, _TEXT_PREFIXES, 'embed_tokens.weight')
  if text_prefix is None:
    raise CheckpointError(f'{path}: no language-model weights (looked for '
                          f'{[p + "embed_tokens.weight" for p in _TEXT_PREFIXES]})')
  vision_prefix = _prefix(names, _VISION_PREFIXES, '')
  if vision_prefix is None:
    raise CheckpointError(f'{path}: missing vision weights: {config.hf_architecture} needs the '
                          f'vision tower (no tensor named {" or ".join(_VISION_PREFIXES)}*)')
  abstract = nnx.eval_shape(lambda: QwenVL(config, dtype=dtype, param_dtype=param_dtype,
                                           remat=remat, rngs=nnx.Rngs(0)))

  def name_of(var_path):
    head, rest = str(var_path[0]), var_path[1:]
    if head == 'decoder':
      return decoder_tensor_name(rest, text_prefix)
    return vision_tensor_name(rest, vision_prefix)

  model, wanted = load_variables(abstract, source, path, name_of, param_dtype, mesh, rules)
  check_unexpected(source, wanted, path, tied=config.text.tie_word_embeddings)
  return model


def vl_hf_tensors(model: QwenVL):
  """(HF name, array in HF layout) of every weight, named as transformers 5.24 saves them."""
  text_prefix, vision_prefix = (('model.language_model.', 'model.visual.')
                                if model.config.architecture == 'qwen3_vl'
                                else ('model.', 'visual.'))
  yield from hf_tensors(model.decoder, prefix=text_prefix)
  c = model.config.vision
  visual = model.visual
  if any(isinstance(v, nnx.LoRAParam) for _, v in nnx.to_flat_state(nnx.state(visual))):
    visual = merge_vision_lora(nnx.clone(visual))  # fold into a copy; the model keeps them
  for var_path, variable in nnx.to_flat_state(nnx.state(visual, nnx.Param)):
    name, kind = vision_tensor_name(var_path, vision_prefix)
    value = np.asarray(variable.get_value())
    if kind == 'T':
      value = value.T
    elif kind == 'conv':
      value = value.T.reshape(c.hidden_size, c.in_channels, c.temporal_patch_size, c.patch_size,
                              c.patch_size)
    yield name, value


def save_vl_pretrained(model: QwenVL, path: str | os.PathLike, *,
                       max_shard_size: int | str | None = None) -> None:
  """Writes config.json + safetensors that transformers loads as the same
  *ForConditionalGeneration (max_shard_size as hf.save_pretrained)."""
  write_checkpoint(path, dict(vl_hf_tensors(model)), model.config.to_hf(),
                   max_shard_size=max_shard_size)
