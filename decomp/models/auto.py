"""One entry point for every supported Hugging Face architecture.

`load_pretrained(dir)` reads config.json's `architectures` and returns a `Decoder`
(Qwen2ForCausalLM, Qwen3ForCausalLM, LlamaForCausalLM) or a `QwenVL`
(Qwen2VLForConditionalGeneration, Qwen2_5_VLForConditionalGeneration,
Qwen3VLForConditionalGeneration). Both are called as
`model(input_ids, attention_mask, pixel_values=None, image_grid_thw=None)` -> logits [B, T, V].
`save_pretrained(model, dir)` writes what transformers loads back as the same class.
"""

from __future__ import annotations

import json
import os
from typing import Any

from decomp.models import hf
from decomp.models.config import _ARCH_TO_TYPE
from decomp.models.decoder import Decoder
from decomp.models.qwen_vl import VL_ARCHITECTURES, QwenVL, vl_architecture_of
from decomp.models.qwen_vl_hf import load_vl_pretrained, save_vl_pretrained

__all__ = ['SUPPORTED_ARCHITECTURES', 'load_pretrained', 'save_pretrained']

SUPPORTED_ARCHITECTURES = tuple(sorted(_ARCH_TO_TYPE)) + tuple(sorted(VL_ARCHITECTURES.values()))


def _read_json(path: str) -> dict[str, Any]:
  file = os.path.join(path, hf.CONFIG_NAME)
  if not os.path.isfile(file):
    raise FileNotFoundError(f'no {hf.CONFIG_NAME} in {path!r}')
  try:
    with open(file, encoding='utf-8') as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise hf.CheckpointError(f'{file} is not valid JSON: {e}') from e


def load_pretrained(path: str | os.PathLike, **kwargs) -> Decoder | QwenVL:
  """The model of a local HF directory, whatever its supported architecture.

  kwargs (dtype, param_dtype, mesh, rules, remat) go to the architecture's loader.

  Raises:
    ValueError: an architecture outside SUPPORTED_ARCHITECTURES (named, with the list).
    FileNotFoundError / CheckpointError: as hf.load_pretrained / load_vl_pretrained.
  """
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'checkpoint directory {path!r} does not exist')
  config = _read_json(path)
  if vl_architecture_of(config) is not None:
    return load_vl_pretrained(path, **kwargs)
  architectures = config.get('architectures') or []
  if isinstance(architectures, str):
    architectures = [architectures]
  unknown = [a for a in architectures if a not in SUPPORTED_ARCHITECTURES]
  if unknown:
    raise ValueError(f'{os.path.join(path, hf.CONFIG_NAME)}: unsupported architecture '
                     f'{unknown[0]!r}; supported: {list(SUPPORTED_ARCHITECTURES)}')
  return hf.load_pretrained(path, **kwargs)


def save_pretrained(model: Decoder | QwenVL, path: str | os.PathLike, **kwargs) -> None:
  """Writes config.json + safetensors (LoRA on the decoder folded in); kwargs: max_shard_size."""
  if isinstance(model, QwenVL):
    save_vl_pretrained(model, path, **kwargs)
  elif isinstance(model, Decoder):
    hf.save_pretrained(model, path, **kwargs)
  else:
    raise TypeError(f'save_pretrained takes a Decoder or QwenVL, got {type(model).__name__}')
