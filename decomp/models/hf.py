"""Hugging Face checkpoints <-> Decoder: config.json + safetensors, no torch.

`load_pretrained(path)` reads a local HF directory (config.json and model.safetensors, or a
sharded model.safetensors.index.json) into a `Decoder`, placing each weight on a mesh when one
is given. `save_pretrained(model, path)` writes the same layout back (LoRA adapters folded in),
loadable by `transformers.AutoModelForCausalLM.from_pretrained`.

Every problem with a checkpoint raises `CheckpointError` (a ValueError) or FileNotFoundError
naming the file or tensor; unsupported architectures raise ValueError from DecoderConfig.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from decomp.models.config import DecoderConfig
from decomp.models.decoder import Decoder, Linear
from decomp.models.lora import LoRALinear
from decomp.models.sharding import Rules, logical_to_mesh_sharding, variable_names

__all__ = ['CheckpointError', 'TensorSource', 'check_unexpected', 'decoder_tensor_name',
           'hf_tensors', 'load_pretrained', 'load_variables', 'read_config', 'save_pretrained',
           'write_checkpoint']

CONFIG_NAME = 'config.json'
WEIGHTS_NAME = 'model.safetensors'
INDEX_NAME = 'model.safetensors.index.json'
# Tensors some checkpoints carry that the forward pass does not use.
_IGNORED = re.compile(r'^model\.(language_model\.)?layers\.\d+\.self_attn\.rotary_emb\.inv_freq$')
_SHARD_FILE = re.compile(r'model-\d{5}-of-\d{5}\.safetensors')


class CheckpointError(ValueError):
  """A checkpoint that cannot be read as the model its config describes."""


def read_config(path: str | os.PathLike) -> DecoderConfig:
  """DecoderConfig from `path`/config.json (either HF layout)."""
  file = os.path.join(os.fspath(path), CONFIG_NAME)
  if not os.path.isfile(file):
    raise FileNotFoundError(f'no {CONFIG_NAME} in {os.fspath(path)!r}')
  try:
    with open(file, encoding='utf-8') as f:
      hf = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f'{file} is not valid JSON: {e}') from e
  try:
    return DecoderConfig.from_hf(hf)
  except ValueError as e:
    raise ValueError(f'{file}: {e}') from e


def _hf_name(path: tuple, prefix: str = 'model.') -> tuple[str, bool]:
  """HF tensor name for a Decoder state path, and whether the array is transposed ([in,out] here).

  prefix: where the decoder's tensors live ('model.' for *ForCausalLM, e.g.
  'model.language_model.' inside a Qwen2-VL checkpoint); the LM head is always 'lm_head.weight'.
  """
  parts = [str(p) for p in path]
  if parts == ['embed_tokens']:
    return prefix + 'embed_tokens.weight', False
  if parts == ['lm_head']:
    return 'lm_head.weight', False
  leaf = parts[-1]
  prefix = prefix + '.'.join(parts[:-1])
  if leaf == 'kernel':
    return prefix + '.weight', True
  if leaf == 'scale':
    return prefix + '.weight', False
  if leaf == 'bias':
    return prefix + '.bias', False
  raise CheckpointError(f'no HF name for parameter {".".join(parts)}')


class TensorSource:
  """Lazy access to the tensors of one HF directory (single file or sharded index)."""

  def __init__(self, path: str):
    index_file = os.path.join(path, INDEX_NAME)
    single_file = os.path.join(path, WEIGHTS_NAME)
    self._handles: dict[str, Any] = {}
    if os.path.isfile(index_file):
      try:
        with open(index_file, encoding='utf-8') as f:
          weight_map = json.load(f)['weight_map']
      except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f'{index_file} is not a valid safetensors index '
                              f'(needs a "weight_map"): {e!r}') from e
      self.files = {name: os.path.join(path, file) for name, file in weight_map.items()}
      for file in sorted(set(self.files.values())):
        if not os.path.isfile(file):
          raise FileNotFoundError(f'{index_file} lists {os.path.basename(file)}, which is missing')
    elif os.path.isfile(single_file):
      self.files = {name: single_file for name in self._open(single_file).keys()}
    else:
      raise FileNotFoundError(f'no {WEIGHTS_NAME} or {INDEX_NAME} in {path!r}')

  def _open(self, file: str):
    if file not in self._handles:
      try:
        self._handles[file] = safe_open(file, framework='numpy')
      except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f'cannot read safetensors file {file}: {e}') from e
    return self._handles[file]

  def names(self) -> set[str]:
    return set(self.files)

  def shape(self, name: str) -> tuple[int, ...]:
    file = self.files[name]
    try:
      return tuple(self._open(file).get_slice(name).get_shape())
    except CheckpointError:
      raise
    except Exception as e:
      raise CheckpointError(f'cannot read tensor {name!r} from {file}: {e}') from e

  def get(self, name: str) -> np.ndarray:
    file = self.files[name]
    try:
      return self._open(file).get_tensor(name)
    except CheckpointError:
      raise
    except Exception as e:
      raise CheckpointError(f'cannot read tensor {name!r} from {file}: {e}') from e


def load_pretrained(path: str | os.PathLike, *, dtype=jnp.float32, param_dtype=None,
                    mesh: jax.sharding.Mesh | None = None, rules: Rules | None = None,
                    remat: str | bool = 'none') -> Decoder:
  """A Decoder with weights read from a local HF directory.

  Args:
    path: directory with config.json and model.safetensors or model.safetensors.index.json.
    dtype: compute dtype.
    param_dtype: parameter storage dtype; None -> float32 (whatever the checkpoint stores).
    mesh: when given, every weight is created directly with the NamedSharding its logical names
      map to under `rules` (default DEFAULT_RULES); otherwise on the default device.
    rules: logical name -> mesh axis rules.
    remat: passed to Decoder.

  Raises:
    FileNotFoundError: missing config.json, weights, or an indexed shard.
    ValueError: unsupported architecture / config (DecoderConfig.from_hf).
    CheckpointError: missing tensor, mis-shaped tensor, unexpected tensors (the config does not
      describe these weights), corrupt file.
  """
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'checkpoint directory {path!r} does not exist')
  config = read_config(path)
  param_dtype = jnp.float32 if param_dtype is None else param_dtype
  source = TensorSource(path)
  abstract = nnx.eval_shape(lambda: Decoder(config, dtype=dtype, param_dtype=param_dtype,
                                            remat=remat, rngs=nnx.Rngs(0)))
  model, wanted = load_variables(abstract, source, path, decoder_tensor_name, param_dtype, mesh,
                                 rules)
  check_unexpected(source, wanted, path, tied=config.tie_word_embeddings)
  return model


def decoder_tensor_name(path: tuple, prefix: str = 'model.') -> tuple[str, str]:
  """(HF name, kind) of a Decoder state path, for load_variables."""
  name, transposed = _hf_name(path, prefix)
  return name, 'T' if transposed else 'copy'


def _hf_shape(kind: str, shape: tuple[int, ...], found: tuple[int, ...]) -> tuple[int, ...]:
  """The HF shape a parameter of `shape` needs, given the stored one (only 'conv' reads it)."""
  if kind == 'T':
    return shape[::-1]
  if kind == 'conv':  # [in, out] here <- [out, C, T, p, p] in HF
    return (shape[1],) + tuple(found[1:]) if int(np.prod(found[1:])) == shape[0] else (
        shape[1], shape[0])
  return shape


def _to_ours(kind: str, array: np.ndarray) -> np.ndarray:
  if kind == 'T':
    return array.T
  if kind == 'conv':
    return array.reshape(array.shape[0], -1).T
  return array


def load_variables(abstract: nnx.Module, source: 'TensorSource', path: str, name_of,
                   param_dtype, mesh=None, rules=None) -> tuple[nnx.Module, set[str]]:
  """Fills an abstract module (from nnx.eval_shape) with checkpoint tensors.

  name_of(state path) -> (HF tensor name, kind): kind 'copy' (same layout), 'T' (a Linear
  kernel, HF stores [out, in]) or 'conv' (a Conv patch embedding [out, C, ...] used as an
  [C*..., out] kernel). Returns the module and the set of tensor names read. Raises
  CheckpointError for a missing or mis-shaped tensor.
  """
  graphdef, state = nnx.split(abstract)
  wanted: set[str] = set()
  loaded = []
  for var_path, variable in nnx.to_flat_state(state):
    name, kind = name_of(var_path)
    wanted.add(name)
    if name not in source.files:
      raise CheckpointError(f'{path}: tensor {name!r} is missing from the checkpoint')
    shape = tuple(variable.get_value().shape)
    found = source.shape(name)
    hf_shape = _hf_shape(kind, shape, found)
    if found != hf_shape:
      raise CheckpointError(f'{path}: tensor {name!r} has shape {found}, expected {hf_shape} '
                            f'from config.json')
    array = np.asarray(_to_ours(kind, source.get(name))).astype(param_dtype)
    loaded.append((var_path, variable.replace(_place(array, variable, mesh, rules))))
  return nnx.merge(graphdef, nnx.from_flat_state(loaded)), wanted


def check_unexpected(source: 'TensorSource', wanted: set[str], path: str, *, tied: bool) -> None:
  """CheckpointError when the checkpoint holds tensors the config does not describe."""
  unexpected = sorted(n for n in source.names() - wanted
                      if not _IGNORED.match(n) and not (n == 'lm_head.weight' and tied))
  if unexpected:
    shown = ', '.join(unexpected[:5]) + (' ...' if len(unexpected) > 5 else '')
    raise CheckpointError(f'{path}: {len(unexpected)} tensors the config does not describe '
                          f'(wrong config.json for these weights?): {shown}')


def _place(array: np.ndarray, variable: nnx.Variable, mesh, rules) -> jax.Array:
  if mesh is None:
    return jnp.asarray(array)
  names = variable_names(variable) or (None,) * array.ndim
  sharding = logical_to_mesh_sharding(names, mesh, rules, shape=array.shape)
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def _linear_weights(module: Linear | LoRALinear, prefix: str) -> Iterator[tuple[str, jax.Array]]:
  if isinstance(module, LoRALinear):
    yield prefix + '.weight', module.merged_kernel().T
    module = module.base
  else:
    yield prefix + '.weight', module.kernel[...].T
  if module.bias is not None:
    yield prefix + '.bias', module.bias[...]


def hf_tensors(model: Decoder, prefix: str = 'model.') -> Iterator[tuple[str, jax.Array]]:
  """(HF tensor name, array in HF layout) for every weight; LoRA adapters are folded in."""
  yield prefix + 'embed_tokens.weight', model.embed_tokens[...]
  for i, layer in enumerate(model.layers):
    p = f'{prefix}layers.{i}'
    yield f'{p}.input_layernorm.weight', layer.input_layernorm.scale[...]
    for name in ('q_proj', 'k_proj', 'v_proj', 'o_proj'):
      yield from _linear_weights(getattr(layer.self_attn, name), f'{p}.self_attn.{name}')
    if layer.self_attn.q_norm is not None:
      yield f'{p}.self_attn.q_norm.weight', layer.self_attn.q_norm.scale[...]
      yield f'{p}.self_attn.k_norm.weight', layer.self_attn.k_norm.scale[...]
    yield f'{p}.post_attention_layernorm.weight', layer.post_attention_layernorm.scale[...]
    for name in ('gate_proj', 'up_proj', 'down_proj'):
      yield from _linear_weights(getattr(layer.mlp, name), f'{p}.mlp.{name}')
  yield prefix + 'norm.weight', model.norm.scale[...]
  if model.lm_head is not None:
    yield 'lm_head.weight', model.lm_head[...]


def _parse_size(size: int | str) -> int:
  if isinstance(size, int):
    return size
  match = re.fullmatch(r'\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*', str(size), re.IGNORECASE)
  if not match:
    raise ValueError(f'max_shard_size must be bytes or like "5GB", got {size!r}')
  units = {None: 1, 'B': 1, 'KB': 10**3, 'MB': 10**6, 'GB': 10**9,
           'KIB': 2**10, 'MIB': 2**20, 'GIB': 2**30}
  return int(float(match.group(1)) * units[match.group(2) and match.group(2).upper()])


_DTYPE_NAMES = {np.dtype(np.float32): 'float32', np.dtype(jnp.bfloat16): 'bfloat16',
                np.dtype(np.float16): 'float16'}


def save_pretrained(model: Decoder, path: str | os.PathLike, *,
                    max_shard_size: int | str | None = None) -> None:
  """Writes config.json + model.safetensors (or shards + index) in HF layout.

  LoRA adapters are folded into the written weights (the model itself is not changed). With
  max_shard_size (bytes or e.g. "2GB") the weights are split into
  model-0000k-of-0000n.safetensors files plus model.safetensors.index.json, as transformers does.
  Weights are gathered to this host (single-process meshes).
  """
  write_checkpoint(path, dict(hf_tensors(model)), model.config.to_hf(),
                   max_shard_size=max_shard_size)


def write_checkpoint(path: str | os.PathLike, tensors: dict[str, Any], hf: dict[str, Any], *,
                     max_shard_size: int | str | None = None) -> None:
  """Writes config.json (`hf` plus the dtype keys) and the tensors (HF names and layout)."""
  path = os.fspath(path)
  os.makedirs(path, exist_ok=True)
  tensors = {name: np.ascontiguousarray(np.asarray(jax.device_get(value)))
             for name, value in tensors.items()}
  # 'dtype' is what transformers 5 reads, 'torch_dtype' what 4.x reads.
  first = next(iter(tensors.values()))
  hf = dict(hf)
  hf['dtype'] = hf['torch_dtype'] = _DTYPE_NAMES.get(first.dtype, 'float32')
  with open(os.path.join(path, CONFIG_NAME), 'w', encoding='utf-8') as f:
    json.dump(hf, f, indent=2, sort_keys=True)
  # Weights from an earlier save in this directory would shadow or mix with the new ones.
  for stale in os.listdir(path):
    if stale in (WEIGHTS_NAME, INDEX_NAME) or _SHARD_FILE.fullmatch(stale):
      os.remove(os.path.join(path, stale))
  metadata = {'format': 'pt'}
  limit = None if max_shard_size is None else _parse_size(max_shard_size)
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, array in tensors.items():
    if limit is not None and shards[-1] and size + array.nbytes > limit:
      shards.append({})
      size = 0
    shards[-1][name] = array
    size += array.nbytes
  if len(shards) == 1:
    save_file(shards[0], os.path.join(path, WEIGHTS_NAME), metadata=metadata)
    return
  weight_map = {}
  for k, shard in enumerate(shards, start=1):
    file = f'model-{k:05d}-of-{len(shards):05d}.safetensors'
    save_file(shard, os.path.join(path, file), metadata=metadata)
    weight_map.update({name: file for name in shard})
  index = {'metadata': {'total_size': int(sum(a.nbytes for a in tensors.values()))},
           'weight_map': weight_map}
  with open(os.path.join(path, INDEX_NAME), 'w', encoding='utf-8') as f:
    json.dump(index, f, indent=2, sort_keys=True)
