"""A ViT image encoder (SigLIP or CLIP layout) and the LLaVA projector into the LM's embeddings.

Images enter the reranker LLaVA-style: pixels -> :class:`VisionEncoder` -> patch features
``[N, P, d_v]`` -> :class:`Projector` -> ``[N, P, d_lm]``, and the projected features replace the
embeddings of the ``<image>`` placeholder tokens of the prompt (see ``decomp.models.reranker``).

Anything with the :class:`ImageEncoder` shape can stand in for the ViT (Qwen2.5-VL's own tower is
the intended next one), so the reranker never looks inside the encoder.

Output convention (matches transformers' ``hidden_states`` tuple, which LLaVA indexes):

* ``feature_layer=None``: the model's ``last_hidden_state`` -- for SigLIP the last layer's output
  after ``post_layernorm``; for CLIP the last layer's output (CLIP's ``post_layernorm`` belongs to
  the pooled CLS vector only, so it is not applied).
* ``feature_layer=k`` (e.g. ``-2``, LLaVA's choice): ``hidden_states[k]``, where
  ``hidden_states[0]`` is the embedding output (after CLIP's ``pre_layrnorm``) and
  ``hidden_states[i]`` the output of layer ``i``; no final norm.
* CLIP's CLS token is dropped unless ``keep_cls=True`` (LLaVA's ``feature_select_strategy =
  "default"``), so ``num_patches == (image_size // patch_size) ** 2`` for both families.

(Over 400 lines: the SigLIP/CLIP tower, its projector, its preprocessing and its Hugging Face
loader read one format and are kept together.)
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
from typing import Any, Protocol, Sequence, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from decomp.models.remat import remat_name, rematerialized
from decomp.models.sharding import Rules, shard_model

Array = jax.Array

SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# transformers' defaults, for full-model configs whose ``vision_config`` stores only overrides.
_DEFAULTS = {
    "siglip": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                   num_attention_heads=12, num_channels=3, image_size=224, patch_size=16,
                   hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6),
    "clip": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
                 hidden_act="quick_gelu", layer_norm_eps=1e-5),
}
_MODEL_TYPES = {
    "siglip": "siglip", "siglip_vision_model": "siglip",
    "clip": "clip", "clip_vision_model": "clip",
}
_ACTIVATIONS = {
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
}


@runtime_checkable
class ImageEncoder(Protocol):
  """What the reranker needs from an image encoder: pixels -> a fixed number of feature vectors.

  ``__call__(pixel_values [N, H, W, 3] float, already normalised) -> [N, num_patches,
  hidden_size]``.
  """

  num_patches: int
  hidden_size: int

  def __call__(self, pixel_values: Array) -> Array:
    ...


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """Shape of a SigLIP or CLIP ViT; ``family`` is ``'siglip'`` or ``'clip'``."""

  family: str = "siglip"
  hidden_size: int = 32
  intermediate_size: int = 64
  num_layers: int = 2
  num_heads: int = 4
  image_size: int = 32
  patch_size: int = 8
  num_channels: int = 3
  hidden_act: str = "gelu_pytorch_tanh"
  layer_norm_eps: float = 1e-6

  def __post_init__(self):
    if self.family not in _DEFAULTS:
      raise ValueError(f"VisionConfig.family must be 'siglip' or 'clip', got {self.family!r}")
    for name in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "image_size",
                 "patch_size"):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"VisionConfig.{name} must be a positive int, got {value!r}")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"VisionConfig: hidden_size {self.hidden_size} is not divisible by "
                       f"num_heads {self.num_heads}")
    if self.image_size % self.patch_size:
      raise ValueError(f"VisionConfig: image_size {self.image_size} is not a multiple of "
                       f"patch_size {self.patch_size}")
    if self.hidden_act not in _ACTIVATIONS:
      raise ValueError(f"VisionConfig: unsupported hidden_act {self.hidden_act!r} "
                       f"(supported: {sorted(_ACTIVATIONS)})")
    if self.num_channels != 3:
      raise ValueError(f"VisionConfig: only RGB (num_channels=3) is supported, got "
                       f"{self.num_channels}")

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid ** 2

  @property
  def image_mean(self) -> tuple[float, float, float]:
    return SIGLIP_MEAN if self.family == "siglip" else CLIP_MEAN

  @property
  def image_std(self) -> tuple[float, float, float]:
    return SIGLIP_STD if self.family == "siglip" else CLIP_STD

  @classmethod
  def from_hf_dict(cls, raw: dict[str, Any], *, source: str = "config") -> "VisionConfig":
    """From a HF ``config.json`` dict: a standalone vision config or a full SigLIP/CLIP/LLaVA one.

    A full model's ``vision_config`` sub-dict is used; missing keys take transformers' defaults
    for the family.
    """
    outer_type = raw.get("model_type")
    sub = raw.get("vision_config", raw)
    if not isinstance(sub, dict):
      raise ValueError(f"{source}: 'vision_config' is not a dict")
    model_type = sub.get("model_type") or outer_type
    family = _MODEL_TYPES.get(model_type)
    if family is None:
      raise ValueError(
          f"{source}: unsupported vision model_type {model_type!r}; decomp loads SigLIP "
          f"(siglip, siglip_vision_model) and CLIP (clip, clip_vision_model) vision towers")
    merged = dict(_DEFAULTS[family])
    merged.update({k: v for k, v in sub.items() if k in merged})
    return cls(family=family, hidden_size=merged["hidden_size"],
               intermediate_size=merged["intermediate_size"],
               num_layers=merged["num_hidden_layers"], num_heads=merged["num_attention_heads"],
               image_size=merged["image_size"], patch_size=merged["patch_size"],
               num_channels=merged["num_channels"], hidden_act=merged["hidden_act"],
               layer_norm_eps=merged["layer_norm_eps"])

  @classmethod
  def from_pretrained(cls, path: str) -> "VisionConfig":
    """Reads ``<path>/config.json`` (or ``path`` itself when it is the json file)."""
    file = path if path.endswith(".json") else os.path.join(path, "config.json")
    if not os.path.isfile(file):
      raise FileNotFoundError(f"no vision config: {file} does not exist")
    try:
      with open(file) as f:
        raw = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{file}: not valid JSON ({e})") from e
    return cls.from_hf_dict(raw, source=file)


def _param(init, key, shape, names, param_dtype) -> nnx.Param:
  return nnx.Param(init(key, shape, param_dtype), out_sharding=names, eager_sharding=False)


class _LayerNorm(nnx.Module):
  """LayerNorm with scale and bias, computed in float32."""

  def __init__(self, dim: int, eps: float, *, param_dtype):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype), out_sharding=("vision_embed",),
                           eager_sharding=False)
    self.bias = nnx.Param(jnp.zeros((dim,), param_dtype), out_sharding=("vision_embed",),
                          eager_sharding=False)

  def __call__(self, x: Array) -> Array:
    dtype = x.dtype
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(dtype)


# Public name: the Qwen2-VL tower (decomp.models.qwen_vl.vision) uses the same LayerNorm.
LayerNorm = _LayerNorm


class _Dense(nnx.Module):
  """``y = x @ kernel + bias`` with ``kernel [d_in, d_out]`` (torch's weight transposed)."""

  def __init__(self, d_in: int, d_out: int, names: tuple, *, use_bias: bool = True, dtype,
               param_dtype, rngs: nnx.Rngs):
    self.dtype = dtype
    init = jax.nn.initializers.lecun_normal()
    self.kernel = _param(init, rngs.params(), (d_in, d_out), names, param_dtype)
    self.bias = (nnx.Param(jnp.zeros((d_out,), param_dtype), out_sharding=(names[1],),
                           eager_sharding=False) if use_bias else None)

  def __call__(self, x: Array) -> Array:
    y = x.astype(self.dtype) @ self.kernel[...].astype(self.dtype)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class _HeadsIn(nnx.Module):
  """q/k/v projection ``[..., d] -> [..., heads, head_dim]``; kernel ``[d, heads, head_dim]``.

  Heads are an axis of the parameter (not a reshape of a ``[d, d]`` kernel) so that sharding on
  'heads' never has to split a sharded activation dimension.
  """

  def __init__(self, d: int, heads: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.dtype = dtype
    init = jax.nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
    self.kernel = _param(init, rngs.params(), (d, heads, d // heads),
                         ("vision_embed", "heads", None), param_dtype)
    self.bias = nnx.Param(jnp.zeros((heads, d // heads), param_dtype), out_sharding=("heads", None),
                          eager_sharding=False)

  def __call__(self, x: Array) -> Array:
    y = jnp.einsum("...d,dhc->...hc", x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    return y + self.bias[...].astype(self.dtype)


class _HeadsOut(nnx.Module):
  """Attention output projection ``[..., heads, head_dim] -> [..., d]``."""

  def __init__(self, d: int, heads: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.dtype = dtype
    init = jax.nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
    self.kernel = _param(init, rngs.params(), (heads, d // heads, d),
                         ("heads", None, "vision_embed"), param_dtype)
    self.bias = nnx.Param(jnp.zeros((d,), param_dtype), out_sharding=("vision_embed",),
                          eager_sharding=False)

  def __call__(self, x: Array) -> Array:
    y = jnp.einsum("...hc,hcd->...d", x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    return y + self.bias[...].astype(self.dtype)


class _EncoderLayer(nnx.Module):
  """Pre-LN transformer block: x + MHA(LN(x)), then x + MLP(LN(x)); bidirectional attention."""

  def __init__(self, config: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    d, f, h = config.hidden_size, config.intermediate_size, config.num_heads
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.head_dim = d // h
    self.act = config.hidden_act
    self.layer_norm1 = _LayerNorm(d, config.layer_norm_eps, param_dtype=param_dtype)
    self.q_proj = _HeadsIn(d, h, **kw)
    self.k_proj = _HeadsIn(d, h, **kw)
    self.v_proj = _HeadsIn(d, h, **kw)
    self.out_proj = _HeadsOut(d, h, **kw)
    self.layer_norm2 = _LayerNorm(d, config.layer_norm_eps, param_dtype=param_dtype)
    self.fc1 = _Dense(d, f, ("vision_embed", "mlp"), **kw)
    self.fc2 = _Dense(f, d, ("mlp", "vision_embed"), **kw)

  def _attention(self, x: Array) -> Array:
    q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # [N, P, heads, head_dim]
    logits = jnp.einsum("nqhc,nkhc->nhqk", q, k, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(logits / math.sqrt(self.head_dim), axis=-1).astype(v.dtype)
    return self.out_proj(jnp.einsum("nhqk,nkhc->nqhc", probs, v))

  def __call__(self, x: Array) -> Array:
    x = x + self._attention(self.layer_norm1(x))
    return x + self.fc2(_ACTIVATIONS[self.act](self.fc1(self.layer_norm2(x))))


def _run_layer(layer: _EncoderLayer, x: Array) -> Array:
  return layer(x)


class VisionEncoder(nnx.Module):
  """SigLIP / CLIP ViT: ``pixel_values [N, H, W, 3]`` (normalised) -> ``[N, num_patches, d_v]``.

  The patch convolution (stride = kernel = patch) is a reshape + matmul. See the module docstring
  for ``feature_layer`` and ``keep_cls``.
  """

  def __init__(self, config: VisionConfig, *, feature_layer: int | None = None,
               keep_cls: bool = False, dtype=jnp.float32, param_dtype=jnp.float32,
               remat: str | bool = "none", rngs: nnx.Rngs):
    if feature_layer is not None and not -config.num_layers - 1 <= feature_layer <= config.num_layers:
      raise ValueError(f"feature_layer {feature_layer} is outside the encoder's "
                       f"{config.num_layers + 1} hidden states")
    self.config = config
    self.feature_layer = feature_layer
    self.keep_cls = keep_cls and config.family == "clip"
    self.dtype = dtype
    self.remat = remat_name(remat)  # per layer (decomp.models.remat)
    self.hidden_size = config.hidden_size
    self.num_patches = config.num_patches + (1 if self.keep_cls else 0)
    d, p = config.hidden_size, config.patch_size
    is_clip = config.family == "clip"
    self.patch_embedding = _Dense(p * p * config.num_channels, d, (None, "vision_embed"),
                                  use_bias=not is_clip, dtype=dtype, param_dtype=param_dtype,
                                  rngs=rngs)
    num_positions = config.num_patches + (1 if is_clip else 0)
    self.position_embedding = _param(jax.nn.initializers.normal(1 / math.sqrt(d)), rngs.params(),
                                     (num_positions, d), (None, "vision_embed"), param_dtype)
    if is_clip:
      self.class_embedding = _param(jax.nn.initializers.normal(1.0), rngs.params(), (d,),
                                    ("vision_embed",), param_dtype)
      self.pre_layrnorm = _LayerNorm(d, config.layer_norm_eps, param_dtype=param_dtype)
    else:
      self.class_embedding = None
      self.pre_layrnorm = None
    self.layers = nnx.List([
        _EncoderLayer(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        for _ in range(config.num_layers)])
    self.post_layernorm = _LayerNorm(d, config.layer_norm_eps, param_dtype=param_dtype)

  @classmethod
  def from_config(cls, config: VisionConfig, rngs: nnx.Rngs, **kwargs) -> "VisionEncoder":
    """A randomly initialised encoder (the playground's tiny towers; no checkpoint)."""
    return cls(config, rngs=rngs, **kwargs)

  def _patchify(self, pixel_values: Array) -> Array:
    """``[N, H, W, C] -> [N, P, p*p*C]``, patches row-major like torch's conv + flatten."""
    cfg = self.config
    if pixel_values.ndim != 4 or pixel_values.shape[1:] != (cfg.image_size, cfg.image_size,
                                                            cfg.num_channels):
      raise ValueError(
          f"pixel_values must be [N, {cfg.image_size}, {cfg.image_size}, {cfg.num_channels}] "
          f"(NHWC, preprocessed), got {tuple(pixel_values.shape)}")
    n, g, p, c = pixel_values.shape[0], cfg.grid, cfg.patch_size, cfg.num_channels
    x = pixel_values.reshape(n, g, p, g, p, c).transpose(0, 1, 3, 2, 4, 5)
    # torch's conv weight is [d, C, p, p]; the loader stores it as [(p, p, C), d] to match.
    return x.reshape(n, g * g, p * p * c)

  def __call__(self, pixel_values: Array, *, feature_layer: int | None | str = "default",
               keep_cls: bool | None = None) -> Array:
    """Patch features ``[N, num_patches, d_v]`` (``dtype``); arguments override the defaults."""
    feature_layer = self.feature_layer if feature_layer == "default" else feature_layer
    keep_cls = self.keep_cls if keep_cls is None else (keep_cls and self.class_embedding is not None)
    x = self._patchify(pixel_values.astype(self.dtype))
    x = self.patch_embedding(x)
    if self.class_embedding is not None:
      cls_tok = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
      x = jnp.concatenate([cls_tok, x], axis=1)
    x = x + self.position_embedding[...].astype(x.dtype)[None]
    if self.pre_layrnorm is not None:
      x = self.pre_layrnorm(x)
    num_layers = len(self.layers)
    stop = num_layers if feature_layer is None else feature_layer % (num_layers + 1)
    run = rematerialized(_run_layer, self.remat)
    for layer in self.layers[:stop]:
      x = run(layer, x)
    if feature_layer is None and self.class_embedding is None:
      x = self.post_layernorm(x)
    if self.class_embedding is not None and not keep_cls:
      x = x[:, 1:]
    return x


class Projector(nnx.Module):
  """LLaVA's 2-layer MLP ``d_v -> d_lm -> d_lm`` with GELU: ``[..., d_v] -> [..., d_lm]``."""

  def __init__(self, vision_dim: int, lm_dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.linear_1 = _Dense(vision_dim, lm_dim, ("vision_embed", "mlp"), **kw)
    self.linear_2 = _Dense(lm_dim, lm_dim, ("mlp", "embed"), **kw)

  def __call__(self, features: Array) -> Array:
    return self.linear_2(jax.nn.gelu(self.linear_1(features), approximate=False))


def image_preprocess(images: np.ndarray | Sequence[np.ndarray], *, mean: Sequence[float] = SIGLIP_MEAN,
                     std: Sequence[float] = SIGLIP_STD, size: int) -> np.ndarray:
  """uint8 images ``[N, H, W, 3]`` (or a list of ``[H, W, 3]``) -> float32 ``[N, size, size, 3]``.

  Resizes (bilinear, antialiased) to ``size x size`` when needed, rescales by 1/255 and
  normalises with ``mean``/``std`` (SigLIP: 0.5/0.5; CLIP: ``CLIP_MEAN``/``CLIP_STD``; a
  ``VisionConfig`` has both as ``image_mean``/``image_std``).
  """
  if isinstance(images, np.ndarray) and images.ndim == 3:
    raise ValueError(f"image_preprocess wants a batch [N, H, W, 3], got one image "
                     f"{images.shape}; wrap it in a list")
  out = np.empty((len(images), size, size, 3), np.float32)
  for i, image in enumerate(images):
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f"image {i}: expected [H, W, 3] RGB, got shape {image.shape}")
    x = image.astype(np.float32)
    if image.shape[:2] != (size, size):
      with jax.default_device(jax.devices("cpu")[0]):
        x = np.asarray(jax.image.resize(x, (size, size, 3), "linear", antialias=True))
    out[i] = x
  out *= 1 / 255
  out -= np.asarray(mean, np.float32)
  out /= np.asarray(std, np.float32)
  return out


# ---------------------------------------------------------------------------------------------
# Loading a HF checkpoint.


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file  # local: only the loader needs it

  files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
  if not files:
    raise FileNotFoundError(f"no *.safetensors file in {path}")
  tensors: dict[str, np.ndarray] = {}
  for file in files:
    try:
      loaded = load_file(file)
    except Exception as e:  # safetensors raises its own error types for corrupt headers/data
      raise ValueError(f"{file}: corrupt or unreadable safetensors file ({e})") from e
    tensors.update(loaded)
  return tensors


def _find_prefix(tensors: dict[str, np.ndarray], path: str) -> str:
  """The key prefix before ``embeddings.patch_embedding.weight`` of the vision tower.

  '' for transformers-5 standalone vision models, 'vision_model.' for full SigLIP/CLIP models and
  older standalone ones, 'vision_tower.vision_model.' (and similar) for LLaVA checkpoints.
  """
  anchor = "embeddings.patch_embedding.weight"
  found = [k[: -len(anchor)] for k in tensors
           if k.endswith(anchor) and "text_model" not in k]
  if len(found) != 1:
    raise ValueError(f"{path}: expected exactly one vision tower tensor '*{anchor}', found "
                     f"{found or 'none'}")
  return found[0]


def _hf_tensor_map(config: VisionConfig) -> dict[str, tuple[str, Any]]:
  """decomp parameter path -> (HF key without prefix, numpy transform into decomp's layout)."""
  p, c = config.patch_size, config.num_channels
  h, hd = config.num_heads, config.hidden_size // config.num_heads
  t = lambda w: w.T  # torch Linear is [out, in]
  heads_in = lambda w: w.T.reshape(w.shape[1], h, hd) if w.ndim == 2 else w.reshape(h, hd)
  heads_out = lambda w: w.T.reshape(h, hd, w.shape[0])
  patch = lambda w: w.transpose(2, 3, 1, 0).reshape(p * p * c, -1)  # [d, C, p, p] -> [(p,p,C), d]
  same = lambda w: w
  m = {
      "patch_embedding.kernel": ("embeddings.patch_embedding.weight", patch),
      "position_embedding": ("embeddings.position_embedding.weight", same),
      "post_layernorm.scale": ("post_layernorm.weight", same),
      "post_layernorm.bias": ("post_layernorm.bias", same),
  }
  if config.family == "clip":
    m["class_embedding"] = ("embeddings.class_embedding", same)
    m["pre_layrnorm.scale"] = ("pre_layrnorm.weight", same)
    m["pre_layrnorm.bias"] = ("pre_layrnorm.bias", same)
  else:
    m["patch_embedding.bias"] = ("embeddings.patch_embedding.bias", same)
  for i in range(config.num_layers):
    src = f"encoder.layers.{i}."
    for ln in ("layer_norm1", "layer_norm2"):
      m[f"layers.{i}.{ln}.scale"] = (f"{src}{ln}.weight", same)
      m[f"layers.{i}.{ln}.bias"] = (f"{src}{ln}.bias", same)
    for name in ("q_proj", "k_proj", "v_proj"):
      m[f"layers.{i}.{name}.kernel"] = (f"{src}self_attn.{name}.weight", heads_in)
      m[f"layers.{i}.{name}.bias"] = (f"{src}self_attn.{name}.bias", heads_in)
    m[f"layers.{i}.out_proj.kernel"] = (f"{src}self_attn.out_proj.weight", heads_out)
    m[f"layers.{i}.out_proj.bias"] = (f"{src}self_attn.out_proj.bias", same)
    for name in ("fc1", "fc2"):
      m[f"layers.{i}.{name}.kernel"] = (f"{src}mlp.{name}.weight", t)
      m[f"layers.{i}.{name}.bias"] = (f"{src}mlp.{name}.bias", same)
  return m


def _path_str(path: tuple) -> str:
  return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def load_vision_pretrained(path: str, *, dtype=jnp.float32, param_dtype=None,
                           feature_layer: int | None = None, keep_cls: bool = False,
                           mesh: jax.sharding.Mesh | None = None,
                           rules: Rules | None = None) -> VisionEncoder:
  """Loads a SigLIP or CLIP vision tower from a local HF directory (config.json + safetensors).

  Works for standalone ``SiglipVisionModel``/``CLIPVisionModel`` saves and for full
  ``SiglipModel``/``CLIPModel`` (or LLaVA) saves, whose vision tensors carry a key prefix.
  ``param_dtype`` defaults to float32 (like the decoder's loader). With ``mesh`` (and ``rules``),
  parameters are placed by their logical names (``decomp.models.sharding``; ``'vision_embed'``
  is replicated unless the rules name it).
  """
  config = VisionConfig.from_pretrained(path)
  param_dtype = jnp.float32 if param_dtype is None else param_dtype
  abstract = nnx.eval_shape(lambda: VisionEncoder(
      config, feature_layer=feature_layer, keep_cls=keep_cls, dtype=dtype,
      param_dtype=param_dtype, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  tensors = _read_safetensors(path)
  prefix = _find_prefix(tensors, path)
  mapping = _hf_tensor_map(config)
  flat = nnx.to_flat_state(state)
  leaves = []
  for key, variable in flat:
    name = _path_str(key)
    if name not in mapping:
      raise AssertionError(f"internal: no HF tensor for decomp parameter {name}")
    hf_name, transform = mapping[name]
    full = prefix + hf_name
    if full not in tensors:
      raise ValueError(f"{path}: missing tensor {full!r} (needed for {name})")
    value = transform(np.asarray(tensors[full]))
    if tuple(value.shape) != tuple(variable.shape):
      raise ValueError(f"{path}: tensor {full!r} has shape {tensors[full].shape}, expected one "
                       f"that maps to {tuple(variable.shape)} for config {config}")
    leaves.append((key, variable.replace(jnp.asarray(value, dtype=param_dtype))))
  encoder = nnx.merge(graphdef, nnx.from_flat_state(leaves))
  if mesh is not None:
    shard_model(encoder, mesh, rules)
  return encoder
