"""Gemma 3 text checkpoints <-> :class:`~decomp.models.gemma3.model.Gemma3` (no torch), and the
family record the table in :mod:`decomp.models.families` points to."""

from __future__ import annotations

import json
import os
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from decomp.models import hf
from decomp.models.backbone import Family
from decomp.models.gemma3.config import ARCHITECTURE, Gemma3TextConfig
from decomp.models.gemma3.model import Gemma3
from decomp.models.lora import merge_lora
from decomp.models.sharding import Rules


def read_config(path: str | os.PathLike) -> Gemma3TextConfig:
  """Gemma3TextConfig from ``path``/config.json."""
  file = os.path.join(os.fspath(path), hf.CONFIG_NAME)
  try:
    with open(file, encoding='utf-8') as f:
      raw = json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(f'no {hf.CONFIG_NAME} in {os.fspath(path)!r}') from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise hf.CheckpointError(f'{file} is not valid JSON: {e}') from e
  try:
    return Gemma3TextConfig.from_hf(raw)
  except ValueError as e:
    raise ValueError(f'{file}: {e}') from e


def load_pretrained(path: str | os.PathLike, *, dtype=jnp.float32, param_dtype=None,
                    mesh: jax.sharding.Mesh | None = None, rules: Rules | None = None,
                    remat: str | bool = 'none') -> Gemma3:
  """A Gemma3 with weights read from a local `Gemma3ForCausalLM` directory (arguments and
  errors as :func:`decomp.models.hf.load_pretrained`)."""
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'checkpoint directory {path!r} does not exist')
  config = read_config(path)
  param_dtype = jnp.float32 if param_dtype is None else param_dtype
  source = hf.TensorSource(path)
  abstract = nnx.eval_shape(lambda: Gemma3(config, dtype=dtype, param_dtype=param_dtype,
                                           remat=remat, rngs=nnx.Rngs(0)))
  model, wanted = hf.load_variables(abstract, source, path, hf.decoder_tensor_name, param_dtype,
                                    mesh, rules)
  hf.check_unexpected(source, wanted, path, tied=config.tie_word_embeddings)
  return model


def hf_tensors(model: Gemma3) -> Iterator[tuple[str, np.ndarray]]:
  """(HF tensor name, array in HF layout) of every weight; LoRA adapters folded in (on a copy)."""
  if any(isinstance(v, nnx.LoRAParam) for _, v in nnx.to_flat_state(nnx.state(model))):
    model = merge_lora(nnx.clone(model))
  for var_path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    name, kind = hf.decoder_tensor_name(var_path)
    value = np.asarray(jax.device_get(variable.get_value()))
    yield name, value.T if kind == 'T' else value


def save_pretrained(model: Gemma3, path: str | os.PathLike, *,
                    max_shard_size: int | str | None = None) -> None:
  """Writes config.json + safetensors that transformers loads as `Gemma3ForCausalLM`."""
  hf.write_checkpoint(path, dict(hf_tensors(model)), model.config.to_hf(),
                      max_shard_size=max_shard_size)


def _create(config: Gemma3TextConfig, *, dtype, param_dtype, rngs, remat: str | bool = 'none'):
  return Gemma3(config, dtype=dtype, param_dtype=param_dtype, remat=remat, rngs=rngs)


GEMMA3 = Family(name='gemma3', read_config=Gemma3TextConfig.from_hf, create=_create,
                load=load_pretrained, save=save_pretrained, model_type=Gemma3)

# `architectures` name -> family, for the table in decomp.models.families.
ARCHITECTURES = {ARCHITECTURE: GEMMA3}
