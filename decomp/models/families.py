"""The one table from a checkpoint's ``architectures`` to its model family, and the entry points
that go through it.

:data:`FAMILIES` maps each transformers class name a ``config.json`` may hold to a
:class:`~decomp.models.backbone.Family`. :func:`load_pretrained` returns the model of any
supported directory, called as ``model(input_ids, attention_mask, pixel_values=None,
image_grid_thw=None)`` -> logits ``[B, T, V]``; :func:`save_pretrained` writes what transformers
loads back as the same class. Adding a family: its package, one line here (``docs/models.md``).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from decomp.models import hf
from decomp.models.backbone import Family
from decomp.models.config import DecoderConfig
from decomp.models.decoder import Decoder
from decomp.models.gemma3.family import ARCHITECTURES as GEMMA3
from decomp.models.qwen_vl.family import ARCHITECTURES as QWEN_VL

__all__ = ['FAMILIES', 'SUPPORTED_ARCHITECTURES', 'family_for', 'family_of', 'load_pretrained',
           'read_checkpoint', 'save_pretrained']


def _create_decoder(config: DecoderConfig, *, dtype, param_dtype, rngs, remat: str | bool = 'none'):
  return Decoder(config, dtype=dtype, param_dtype=param_dtype, remat=remat, rngs=rngs)


# Qwen2 / Qwen3 / Llama: decomp.models.decoder, config.py and hf.py (also the playground's base).
DECODER = Family(name='decoder', read_config=DecoderConfig.from_hf, create=_create_decoder,
                 load=hf.load_pretrained, save=hf.save_pretrained, model_type=Decoder)

FAMILIES: dict[str, Family] = {
    'Qwen2ForCausalLM': DECODER,
    'Qwen3ForCausalLM': DECODER,
    'LlamaForCausalLM': DECODER,
    **QWEN_VL,
    **GEMMA3,
}
SUPPORTED_ARCHITECTURES = tuple(sorted(FAMILIES))
# Old config.json files without `architectures` name only their model_type.
_MODEL_TYPES = {'qwen2': 'Qwen2ForCausalLM', 'qwen3': 'Qwen3ForCausalLM',
                'llama': 'LlamaForCausalLM', 'qwen2_vl': 'Qwen2VLForConditionalGeneration',
                'qwen2_5_vl': 'Qwen2_5_VLForConditionalGeneration',
                'qwen3_vl': 'Qwen3VLForConditionalGeneration', 'gemma3_text': 'Gemma3ForCausalLM'}


def family_of(config: Mapping[str, Any]) -> Family:
  """The family of a ``config.json`` dict, by its ``architectures`` (else its ``model_type``)."""
  architectures = config.get('architectures') or []
  if isinstance(architectures, str):
    architectures = [architectures]
  if not architectures and config.get('model_type') in _MODEL_TYPES:
    architectures = [_MODEL_TYPES[config['model_type']]]
  unknown = [a for a in architectures if a not in FAMILIES]
  if unknown or not architectures:
    named = repr(unknown[0]) if unknown else f'(none; model_type {config.get("model_type")!r})'
    raise ValueError(f'unsupported architecture {named}; supported: '
                     f'{list(SUPPORTED_ARCHITECTURES)}')
  return FAMILIES[architectures[0]]


def family_for(config: Any) -> Family:
  """The family of a model config (any family's: its ``hf_architecture`` is the table key)."""
  return FAMILIES[config.hf_architecture]


def _read_json(path: str) -> dict[str, Any]:
  file = os.path.join(path, hf.CONFIG_NAME)
  if not os.path.isfile(file):
    raise FileNotFoundError(f'no {hf.CONFIG_NAME} in {path!r}')
  try:
    with open(file, encoding='utf-8') as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise hf.CheckpointError(f'{file} is not valid JSON: {e}') from e


def read_checkpoint(path: str | os.PathLike) -> tuple[Family, Any]:
  """The family and config of a checkpoint directory, from ``config.json`` alone."""
  path = os.fspath(path)
  raw = _read_json(path)
  try:
    family = family_of(raw)
    return family, family.read_config(raw)
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f'{os.path.join(path, hf.CONFIG_NAME)}: {e}') from None


def load_pretrained(path: str | os.PathLike, **kwargs):
  """The model of a local HF directory, whatever its supported architecture.

  kwargs (dtype, param_dtype, mesh, rules, remat) go to the family's loader.

  Raises:
    ValueError: an architecture outside SUPPORTED_ARCHITECTURES (named, with the list).
    FileNotFoundError / CheckpointError: as the family's loader.
  """
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'checkpoint directory {path!r} does not exist')
  try:
    family = family_of(_read_json(path))
  except ValueError as e:
    raise ValueError(f'{os.path.join(path, hf.CONFIG_NAME)}: {e}') from None
  return family.load(path, **kwargs)


def save_pretrained(model, path: str | os.PathLike, **kwargs) -> None:
  """Writes config.json + safetensors (LoRA folded in); kwargs: max_shard_size."""
  for family in FAMILIES.values():
    if type(model) is family.model_type:
      return family.save(model, path, **kwargs)
  known = sorted({f.model_type.__name__ for f in FAMILIES.values()})
  raise TypeError(f'save_pretrained takes a model of {known}, got {type(model).__name__}')
