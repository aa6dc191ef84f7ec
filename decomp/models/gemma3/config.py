"""Gemma3TextConfig: the shape of a Gemma 3 text decoder (`Gemma3ForCausalLM`), read from and
written to HF config.json (transformers 5.x's per-layer-type `rope_parameters`, or the pre-5
`rope_theta` / `rope_local_base_freq` / `rope_scaling` / `sliding_window_pattern`)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np

from decomp.models.config import check_shape

__all__ = ['ARCHITECTURE', 'Gemma3TextConfig', 'LAYER_TYPES', 'inv_freq']

ARCHITECTURE = 'Gemma3ForCausalLM'
MODEL_TYPE = 'gemma3_text'
LAYER_TYPES = ('sliding_attention', 'full_attention')
# transformers' Gemma3TextConfig defaults.
_DEFAULT_GLOBAL_THETA, _DEFAULT_LOCAL_THETA = 1_000_000.0, 10_000.0
_DEFAULT_PATTERN = 6


@dataclasses.dataclass(frozen=True)
class Gemma3TextConfig:
  """Hyper-parameters of a Gemma 3 text decoder.

  Attributes (besides the usual shape): ``layer_types`` ('sliding_attention' |
  'full_attention' per layer; a sliding layer's query sees the ``sliding_window`` latest keys,
  itself included); ``rope_theta`` / ``rope_local_theta`` (full / sliding layers' RoPE base);
  ``rope_scaling_factor`` (linear RoPE scaling of the full layers, 1.0 for none);
  ``query_pre_attn_scalar`` (scores are ``q.k / sqrt(query_pre_attn_scalar)``);
  ``final_logit_softcapping`` (``logits = cap * tanh(logits / cap)`` in ``__call__``; None:
  none); ``attn_logit_softcapping`` (kept for the round trip: transformers 5.24's
  Gemma3Attention does not apply it, so neither does decomp).
  """

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  layer_types: tuple[str, ...]
  sliding_window: int = 4096
  rope_theta: float = _DEFAULT_GLOBAL_THETA
  rope_local_theta: float = _DEFAULT_LOCAL_THETA
  rope_scaling_factor: float = 1.0
  query_pre_attn_scalar: float = 256.0
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = True
  attention_bias: bool = False
  final_logit_softcapping: float | None = None
  attn_logit_softcapping: float | None = None
  max_position_embeddings: int = 131_072

  def __post_init__(self):
    check_shape(self, extra=('sliding_window',))
    layer_types = tuple(self.layer_types)
    if len(layer_types) != self.num_layers or set(layer_types) - set(LAYER_TYPES):
      raise ValueError(f'layer_types must give one of {LAYER_TYPES} per layer '
                       f'({self.num_layers}), got {list(layer_types)}')
    object.__setattr__(self, 'layer_types', layer_types)
    for name in ('rope_theta', 'rope_local_theta', 'rope_scaling_factor',
                 'query_pre_attn_scalar'):
      value = float(getattr(self, name))
      if not math.isfinite(value) or value <= 0:
        raise ValueError(f'Gemma3TextConfig.{name} must be a positive number, got {value}')

  @property
  def hf_architecture(self) -> str:
    return ARCHITECTURE

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any]) -> 'Gemma3TextConfig':
    """Reads a `Gemma3ForCausalLM` config.json dict (either layout).

    Raises ValueError for a missing key or what this decoder does not implement
    (bidirectional attention, activations other than gelu_pytorch_tanh, rope types other than
    default / linear).
    """
    if not isinstance(hf, Mapping):
      raise ValueError(f'HF config must be a dict, got {type(hf).__name__}')
    if hf.get('model_type', MODEL_TYPE) != MODEL_TYPE:
      raise ValueError(f'{ARCHITECTURE} config has model_type {hf.get("model_type")!r}, '
                       f'expected {MODEL_TYPE!r}')

    def required(key):
      if hf.get(key) is None:
        raise ValueError(f'HF config ({ARCHITECTURE}) lacks required key {key!r}')
      return hf[key]

    if hf.get('use_bidirectional_attention'):
      raise ValueError(f'{ARCHITECTURE} with use_bidirectional_attention is not implemented')
    activation = hf.get('hidden_activation') or hf.get('hidden_act') or 'gelu_pytorch_tanh'
    if activation != 'gelu_pytorch_tanh':
      raise ValueError(f'unsupported hidden_activation {activation!r} ({ARCHITECTURE}); only '
                       'gelu_pytorch_tanh')
    num_layers = int(required('num_hidden_layers'))
    hidden_size = int(required('hidden_size'))
    num_heads = int(required('num_attention_heads'))
    layer_types = hf.get('layer_types')
    if layer_types is None:
      pattern = int(hf.get('sliding_window_pattern') or _DEFAULT_PATTERN)
      layer_types = ['sliding_attention' if (i + 1) % pattern else 'full_attention'
                     for i in range(num_layers)]
    full_theta, scaling = _read_rope(hf, 'full_attention', hf.get('rope_theta'),
                                     _DEFAULT_GLOBAL_THETA, hf.get('rope_scaling'))
    local_theta, local_scaling = _read_rope(hf, 'sliding_attention',
                                            hf.get('rope_local_base_freq'), _DEFAULT_LOCAL_THETA,
                                            None)
    if local_scaling != 1.0:
      raise ValueError(f'{ARCHITECTURE}: RoPE scaling of the sliding layers is not implemented')
    optional = lambda key: None if hf.get(key) is None else float(hf[key])
    return cls(
        vocab_size=int(required('vocab_size')), hidden_size=hidden_size,
        intermediate_size=int(required('intermediate_size')), num_layers=num_layers,
        num_heads=num_heads, num_kv_heads=int(hf.get('num_key_value_heads') or num_heads),
        head_dim=int(hf.get('head_dim') or hidden_size // num_heads),
        layer_types=tuple(layer_types), sliding_window=int(hf.get('sliding_window') or 4096),
        rope_theta=full_theta, rope_local_theta=local_theta, rope_scaling_factor=scaling,
        query_pre_attn_scalar=float(hf.get('query_pre_attn_scalar') or 256),
        rms_norm_eps=float(hf.get('rms_norm_eps') or 1e-6),
        tie_word_embeddings=bool(hf.get('tie_word_embeddings', True)),
        attention_bias=bool(hf.get('attention_bias', False)),
        final_logit_softcapping=optional('final_logit_softcapping'),
        attn_logit_softcapping=optional('attn_logit_softcapping'),
        max_position_embeddings=int(hf.get('max_position_embeddings') or 131_072))

  def to_hf(self) -> dict[str, Any]:
    """config.json in transformers 5.x layout; transformers 5.24 loads it as Gemma3ForCausalLM."""
    full = {'rope_type': 'default', 'rope_theta': float(self.rope_theta)}
    if self.rope_scaling_factor != 1.0:
      full = {'rope_type': 'linear', 'factor': float(self.rope_scaling_factor),
              'rope_theta': float(self.rope_theta)}
    return {
        'architectures': [ARCHITECTURE], 'model_type': MODEL_TYPE,
        'vocab_size': self.vocab_size, 'hidden_size': self.hidden_size,
        'intermediate_size': self.intermediate_size, 'num_hidden_layers': self.num_layers,
        'num_attention_heads': self.num_heads, 'num_key_value_heads': self.num_kv_heads,
        'head_dim': self.head_dim, 'hidden_activation': 'gelu_pytorch_tanh',
        'layer_types': list(self.layer_types), 'sliding_window': self.sliding_window,
        'rope_parameters': {'full_attention': full,
                            'sliding_attention': {'rope_type': 'default',
                                                  'rope_theta': float(self.rope_local_theta)}},
        # transformers' strict config types it int (all releases: 256 or head_dim).
        'query_pre_attn_scalar': (int(self.query_pre_attn_scalar)
                                  if float(self.query_pre_attn_scalar).is_integer()
                                  else self.query_pre_attn_scalar),
        'rms_norm_eps': self.rms_norm_eps,
        'tie_word_embeddings': self.tie_word_embeddings, 'attention_bias': self.attention_bias,
        'final_logit_softcapping': self.final_logit_softcapping,
        'attn_logit_softcapping': self.attn_logit_softcapping,
        'max_position_embeddings': self.max_position_embeddings,
    }


def _read_rope(hf: Mapping[str, Any], layer_type: str, legacy_theta, default_theta: float,
               legacy_scaling) -> tuple[float, float]:
  """(theta, linear scaling factor) of one layer type: transformers 5's
  ``rope_parameters[layer_type]`` wins over the pre-5 keys, as in Gemma3TextConfig."""
  params = dict((hf.get('rope_parameters') or {}).get(layer_type) or legacy_scaling or {})
  theta = params.get('rope_theta', legacy_theta)
  theta = float(default_theta if theta is None else theta)
  rope_type = params.get('rope_type') or params.get('type') or 'default'
  if rope_type == 'default':
    return theta, 1.0
  if rope_type == 'linear':
    return theta, float(params['factor'])
  raise ValueError(f'unsupported rope_type {rope_type!r} for {layer_type} layers of '
                   f'{ARCHITECTURE}; supported: default, linear')


def inv_freq(config: Gemma3TextConfig, layer_type: str) -> np.ndarray:
  """Inverse RoPE frequencies ``[head_dim // 2]`` float32 of one layer type."""
  theta = config.rope_theta if layer_type == 'full_attention' else config.rope_local_theta
  dim = config.head_dim
  exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim
  freq = (1.0 / (theta ** exponents)).astype(np.float32)
  if layer_type == 'full_attention' and config.rope_scaling_factor != 1.0:
    freq = (freq / np.float32(config.rope_scaling_factor)).astype(np.float32)
  return freq
