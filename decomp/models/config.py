"""DecoderConfig: the shape of a Qwen2/Qwen3/Llama decoder, read from and written to HF config.json.

Hugging Face config.json files come in two layouts and both are in circulation:

- written before transformers 5 (most published checkpoints): top-level ``rope_theta`` and
  ``rope_scaling`` (``{"rope_type" | "type": ..., "factor": ...}`` or null);
- written by transformers 5.x: one ``rope_parameters`` dict holding ``rope_theta`` and the
  scaling keys together, with no top-level ``rope_theta``.

A reader that knows only one layout does not fail: it falls back to theta=10000 and no scaling,
and computes wrong logits. `DecoderConfig.from_hf` reads both, preferring ``rope_parameters``
(as transformers does).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np

__all__ = ['DecoderConfig', 'SUPPORTED_ROPE_TYPES', 'check_shape', 'mrope_streams',
           'rope_inv_freq']

# model_type -> HF class written in `architectures`.
_ARCHITECTURES = {'qwen2': 'Qwen2ForCausalLM', 'qwen3': 'Qwen3ForCausalLM',
                  'llama': 'LlamaForCausalLM'}
_ARCH_TO_TYPE = {v: k for k, v in _ARCHITECTURES.items()}
# HF defaults when a key is absent (from the transformers config classes).
_DEFAULT_THETA = 10000.0
_DEFAULT_MAX_POSITIONS = {'qwen2': 32768, 'qwen3': 32768, 'llama': 2048}
_DEFAULT_EPS = {'qwen2': 1e-6, 'qwen3': 1e-6, 'llama': 1e-6}
# Qwen3Config's head_dim default (it is independent of hidden_size / num_heads there).
_QWEN3_HEAD_DIM = 128
SUPPORTED_ROPE_TYPES = ('default', 'linear', 'llama3')


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Hyper-parameters of a decoder-only LM (Qwen2/Qwen2.5, Qwen3 and Llama/Llama-3.x families).

  Attributes:
    architecture: 'qwen2', 'qwen3' or 'llama' (the text model of Qwen2-VL / Qwen2.5-VL is
      'qwen2' with `mrope_section` set).
    vocab_size: V, rows of the embedding and LM head.
    hidden_size: d.
    intermediate_size: width of the SwiGLU MLP.
    num_layers: decoder blocks.
    num_heads: query heads H.
    num_kv_heads: key/value heads (GQA when < num_heads; must divide num_heads).
    head_dim: per-head width (HF's `head_dim`, hidden_size // num_heads when absent).
    rope_theta: RoPE base.
    rope_scaling: None (plain RoPE) or a dict with 'rope_type' in SUPPORTED_ROPE_TYPES and its
      keys ('factor'; llama3 also 'low_freq_factor', 'high_freq_factor',
      'original_max_position_embeddings'). Never contains 'rope_theta'.
    rms_norm_eps: epsilon of every RMSNorm.
    tie_word_embeddings: LM head shares the token-embedding matrix.
    attention_bias: q/k/v projections have a bias (always True for Qwen2).
    max_position_embeddings: as in HF (only written back; positions are not clipped).
    attention_out_bias: o_proj has a bias (Llama with attention_bias=True).
    mlp_bias: gate/up/down projections have a bias (Llama's `mlp_bias`).
    qk_norm: per-head RMSNorm over head_dim on q and k after the projection, before RoPE
      (Qwen3; v is not normalised).
    mrope_section: multimodal RoPE (Qwen2-VL): the head_dim // 2 frequencies split into three
      consecutive chunks of these sizes, rotated by the temporal, height and width position
      streams; None for plain 1-D RoPE.
    mrope_interleaved: Qwen3-VL's layout of the three streams: frequencies 1, 4, 7, ... (the
      first 3 * mrope_section[1]) take the height stream, 2, 5, 8, ... (3 * mrope_section[2])
      the width stream, the rest the temporal one.
  """
  architecture: str
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float = _DEFAULT_THETA
  rope_scaling: dict | None = None
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = False
  attention_bias: bool = False
  max_position_embeddings: int = 2048
  attention_out_bias: bool = False
  mlp_bias: bool = False
  qk_norm: bool = False
  mrope_section: tuple[int, ...] | None = None
  mrope_interleaved: bool = False

  def __post_init__(self):
    if self.architecture not in _ARCHITECTURES:
      raise ValueError(f'unsupported architecture {self.architecture!r}; '
                       f'supported: {sorted(_ARCHITECTURES)}')
    check_shape(self)
    if self.mrope_section is not None:
      section = tuple(int(s) for s in self.mrope_section)
      if len(section) != 3 or min(section) < 0 or sum(section) != self.head_dim // 2:
        raise ValueError(f'mrope_section {self.mrope_section} must be 3 sizes summing to '
                         f'head_dim // 2 = {self.head_dim // 2}')
      object.__setattr__(self, 'mrope_section', section)
    if self.rope_scaling is not None:
      rope_type = self.rope_scaling.get('rope_type')
      if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f'unsupported rope_type {rope_type!r}; supported: {SUPPORTED_ROPE_TYPES}')
      needed = {'default': (), 'linear': ('factor',),
                'llama3': ('factor', 'low_freq_factor', 'high_freq_factor',
                           'original_max_position_embeddings')}[rope_type]
      missing = [k for k in needed if k not in self.rope_scaling]
      if missing:
        raise ValueError(f'rope_scaling of type {rope_type!r} lacks {missing}')

  def __hash__(self):
    # rope_scaling is a dict; hash a frozen view so the config can be a static jit argument.
    scaling = None if self.rope_scaling is None else tuple(sorted(self.rope_scaling.items()))
    fields = tuple(getattr(self, f.name) for f in dataclasses.fields(self)
                   if f.name != 'rope_scaling')
    return hash((fields, scaling))

  @property
  def hf_architecture(self) -> str:
    """The transformers class name, e.g. 'Qwen2ForCausalLM'."""
    return _ARCHITECTURES[self.architecture]

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any]) -> 'DecoderConfig':
    """Reads an HF config.json dict in either layout (pre-5 or transformers 5.x).

    Raises:
      ValueError: unsupported `architectures`/`model_type`, a missing required key, or a
        feature this decoder does not implement (sliding-window attention, activations other
        than SiLU, rope types outside SUPPORTED_ROPE_TYPES, partial rotary).
    """
    if not isinstance(hf, Mapping):
      raise ValueError(f'HF config must be a dict, got {type(hf).__name__}')
    architecture = _architecture_of(hf)

    def required(key):
      if hf.get(key) is None:
        raise ValueError(f'HF config ({architecture}) lacks required key {key!r}')
      return hf[key]

    hidden_size = int(required('hidden_size'))
    num_heads = int(required('num_attention_heads'))
    if num_heads <= 0:  # named here: the head width below divides by it
      raise ValueError(f'num_attention_heads must be a positive int, got {num_heads}')
    num_kv_heads = int(hf.get('num_key_value_heads') or num_heads)
    default_head_dim = _QWEN3_HEAD_DIM if architecture == 'qwen3' else hidden_size // num_heads
    head_dim = int(hf.get('head_dim') or default_head_dim)
    hidden_act = hf.get('hidden_act', 'silu')
    if hidden_act != 'silu':
      raise ValueError(f'unsupported hidden_act {hidden_act!r} ({architecture}); only silu')
    if architecture in ('qwen2', 'qwen3'):
      if hf.get('use_sliding_window') or 'sliding_attention' in (hf.get('layer_types') or ()):
        raise ValueError(f'{architecture} config uses sliding-window attention '
                         '(use_sliding_window / layer_types), which this decoder does not '
                         'implement')
    if architecture == 'qwen2':
      # Qwen2 always has q/k/v biases and no o_proj/MLP bias; the config has no key for it.
      attention_bias, attention_out_bias, mlp_bias = True, False, False
    elif architecture == 'qwen3':
      # Qwen3's attention_bias (False in every release) biases q/k/v/o together; no MLP bias.
      attention_bias = attention_out_bias = bool(hf.get('attention_bias', False))
      mlp_bias = False
    else:
      attention_bias = bool(hf.get('attention_bias', False))
      attention_out_bias = attention_bias
      mlp_bias = bool(hf.get('mlp_bias', False))
    rope_theta, rope_scaling = _read_rope(hf, architecture)
    return cls(
        architecture=architecture,
        vocab_size=int(required('vocab_size')),
        hidden_size=hidden_size,
        intermediate_size=int(required('intermediate_size')),
        num_layers=int(required('num_hidden_layers')),
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        rms_norm_eps=float(hf.get('rms_norm_eps') or _DEFAULT_EPS[architecture]),
        tie_word_embeddings=bool(hf.get('tie_word_embeddings', False)),
        attention_bias=attention_bias,
        max_position_embeddings=int(hf.get('max_position_embeddings')
                                    or _DEFAULT_MAX_POSITIONS[architecture]),
        attention_out_bias=attention_out_bias,
        mlp_bias=mlp_bias,
        qk_norm=architecture == 'qwen3',
    )

  def to_hf(self) -> dict[str, Any]:
    """The config.json dict, in transformers 5.x layout (`rope_parameters`) plus the pre-5 keys.

    transformers 5.24 loads it back as `Qwen2ForCausalLM` / `LlamaForCausalLM` with the same
    shapes and RoPE. Raises ValueError for a combination the HF class cannot express.
    """
    if self.mrope_section is not None:
      raise ValueError('a decoder with mrope_section is the text model of a Qwen2-VL checkpoint; '
                       'save the whole model with decomp.models.save_pretrained')
    if self.qk_norm != (self.architecture == 'qwen3'):
      raise ValueError(f'{self.hf_architecture} has qk_norm={self.architecture == "qwen3"}, '
                       f'this config has qk_norm={self.qk_norm}')
    rope_parameters = {'rope_type': 'default', 'rope_theta': float(self.rope_theta)}
    if self.rope_scaling is not None:
      rope_parameters.update(self.rope_scaling)
      rope_parameters['rope_theta'] = float(self.rope_theta)
    hf = {
        'architectures': [self.hf_architecture],
        'model_type': self.architecture,
        'vocab_size': self.vocab_size,
        'hidden_size': self.hidden_size,
        'intermediate_size': self.intermediate_size,
        'num_hidden_layers': self.num_layers,
        'num_attention_heads': self.num_heads,
        'num_key_value_heads': self.num_kv_heads,
        'head_dim': self.head_dim,
        'hidden_act': 'silu',
        'max_position_embeddings': self.max_position_embeddings,
        'rms_norm_eps': self.rms_norm_eps,
        'tie_word_embeddings': self.tie_word_embeddings,
        'rope_parameters': rope_parameters,
    }
    # Also the pre-5 keys, so transformers 4.x (which ignores `rope_parameters` and would
    # silently fall back to theta=10000) reads the same RoPE; 5.x reads both consistently.
    hf['rope_theta'] = float(self.rope_theta)
    hf['rope_scaling'] = None if self.rope_scaling is None else dict(self.rope_scaling)
    if self.architecture == 'qwen2':
      if not self.attention_bias or self.attention_out_bias or self.mlp_bias:
        raise ValueError('Qwen2ForCausalLM has q/k/v biases only: attention_bias must be True '
                         'and attention_out_bias/mlp_bias False')
      hf['use_sliding_window'] = False
    elif self.architecture == 'qwen3':
      if self.attention_out_bias != self.attention_bias or self.mlp_bias:
        raise ValueError('Qwen3ForCausalLM biases q/k/v/o together and never the MLP')
      hf['attention_bias'] = self.attention_bias
      hf['use_sliding_window'] = False
    else:
      if self.attention_out_bias != self.attention_bias:
        raise ValueError('LlamaForCausalLM biases q/k/v/o together: attention_out_bias must '
                         'equal attention_bias')
      hf['attention_bias'] = self.attention_bias
      hf['mlp_bias'] = self.mlp_bias
    return hf


def check_shape(config, extra: tuple[str, ...] = ()) -> None:
  """ValueError unless a decoder config (any family's) has positive int sizes (``extra`` too),
  kv heads dividing the query heads and an even head_dim."""
  for name in ('vocab_size', 'hidden_size', 'intermediate_size', 'num_layers', 'num_heads',
               'num_kv_heads', 'head_dim') + tuple(extra):
    value = getattr(config, name)
    if not isinstance(value, (int, np.integer)) or value <= 0:
      raise ValueError(f'{type(config).__name__}.{name} must be a positive int, got {value!r}')
  if config.num_heads % config.num_kv_heads:
    raise ValueError(f'num_kv_heads={config.num_kv_heads} must divide '
                     f'num_heads={config.num_heads}')
  if config.head_dim % 2:
    raise ValueError(f'head_dim={config.head_dim} must be even for RoPE')


def _architecture_of(hf: Mapping[str, Any]) -> str:
  """'qwen2' | 'qwen3' | 'llama' from `architectures` (preferred) or `model_type`."""
  architectures = hf.get('architectures') or []
  if isinstance(architectures, str):
    architectures = [architectures]
  for name in architectures:
    if name not in _ARCH_TO_TYPE:
      hint = (' (decomp.models.load_pretrained reads every family of '
              'decomp.models.families.FAMILIES)')
      raise ValueError(f'unsupported architecture {name!r} in config.json `architectures`; '
                       f'supported by the text Decoder: {sorted(_ARCH_TO_TYPE)}{hint}')
  model_type = hf.get('model_type')
  if model_type is not None and model_type not in _ARCHITECTURES:
    raise ValueError(f'unsupported model_type {model_type!r}; supported: {sorted(_ARCHITECTURES)}')
  if architectures:
    from_arch = _ARCH_TO_TYPE[architectures[0]]
    if model_type is not None and model_type != from_arch:
      raise ValueError(f'config.json is inconsistent: model_type {model_type!r} but '
                       f'architectures {architectures}')
    return from_arch
  if model_type is None:
    raise ValueError('config.json has neither `architectures` nor `model_type`')
  return model_type


def _read_rope(hf: Mapping[str, Any], architecture: str) -> tuple[float, dict | None]:
  """(rope_theta, rope_scaling without theta) from either config layout.

  transformers' precedence: values inside `rope_parameters` win over top-level `rope_theta`;
  the pre-5 `rope_scaling` dict plays the role of `rope_parameters`, and its type key may be
  spelled 'type' (older Llama-2 era files) or 'rope_type'.
  """
  params = hf.get('rope_parameters')
  if params is None:
    params = hf.get('rope_scaling')
  params = dict(params or {})
  if params and all(isinstance(v, Mapping) or v is None for v in params.values()):
    raise ValueError(f'{architecture} config has per-layer-type rope_parameters '
                     f'{sorted(params)}, which this decoder does not implement')
  partial = params.get('partial_rotary_factor', hf.get('partial_rotary_factor', 1.0))
  if partial not in (1, 1.0, None):
    raise ValueError('partial_rotary_factor != 1 is not supported')
  theta = params.pop('rope_theta', None)
  if theta is None:
    theta = hf.get('rope_theta')
  if theta is None:
    theta = _DEFAULT_THETA
  theta = float(theta)
  if not math.isfinite(theta) or theta <= 0:
    raise ValueError(f'rope_theta must be a positive number, got {theta}')
  rope_type = params.pop('rope_type', None) or params.pop('type', None) or 'default'
  params.pop('type', None)
  params.pop('partial_rotary_factor', None)
  if rope_type not in SUPPORTED_ROPE_TYPES:
    raise ValueError(f'unsupported rope_type {rope_type!r} in {architecture} config; '
                     f'supported: {SUPPORTED_ROPE_TYPES}')
  if rope_type == 'default':
    return theta, None
  scaling = {'rope_type': rope_type}
  if rope_type == 'linear':
    scaling['factor'] = float(params['factor'])
  else:  # llama3
    for key in ('factor', 'low_freq_factor', 'high_freq_factor'):
      if key not in params:
        raise ValueError(f'llama3 rope scaling lacks {key!r}')
      scaling[key] = float(params[key])
    # transformers falls back to max_position_embeddings when it is absent.
    original = params.get('original_max_position_embeddings',
                          hf.get('original_max_position_embeddings',
                                 hf.get('max_position_embeddings')))
    if original is None:
      raise ValueError('llama3 rope scaling lacks original_max_position_embeddings')
    scaling['original_max_position_embeddings'] = int(original)
  return theta, scaling


def mrope_streams(config: DecoderConfig) -> np.ndarray:
  """Which position stream (0 temporal, 1 height, 2 width) rotates each of the head_dim // 2
  frequencies under multimodal RoPE (transformers' Qwen2-VL / Qwen3-VL recomposition)."""
  section = config.mrope_section
  if section is None:
    raise ValueError('mrope_streams needs a config with mrope_section')
  if not config.mrope_interleaved:
    return np.repeat(np.arange(3), section)
  streams = np.zeros(config.head_dim // 2, np.int64)
  streams[1:3 * section[1]:3] = 1
  streams[2:3 * section[2]:3] = 2
  return streams


def rope_inv_freq(config: DecoderConfig) -> np.ndarray:
  """Inverse RoPE frequencies [head_dim // 2] (float32), as transformers computes them."""
  dim = config.head_dim
  exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim
  inv_freq = (1.0 / (config.rope_theta ** exponents)).astype(np.float32)
  scaling = config.rope_scaling
  if scaling is None or scaling['rope_type'] == 'default':
    return inv_freq
  if scaling['rope_type'] == 'linear':
    return (inv_freq / np.float32(scaling['factor'])).astype(np.float32)
  # llama3: long wavelengths divided by `factor`, short ones kept, a smooth blend in between.
  factor = scaling['factor']
  low, high = scaling['low_freq_factor'], scaling['high_freq_factor']
  old_context = scaling['original_max_position_embeddings']
  low_freq_wavelen = old_context / low
  high_freq_wavelen = old_context / high
  wavelen = 2 * math.pi / inv_freq
  scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
  smooth = (old_context / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)
