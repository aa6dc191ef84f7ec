"""The ViT encoder against transformers' PyTorch SigLIP/CLIP, plus loader errors and preprocessing."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from decomp.models import vision

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=32, patch_size=8)


def _build(kind: str, directory: str):
  torch.manual_seed(0)
  if kind == "siglip":
    model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**TINY))
  elif kind == "clip":
    model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**TINY))
  elif kind == "siglip_full":
    model = transformers.SiglipModel(transformers.SiglipConfig(
        vision_config=TINY, text_config=dict(hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=1, num_attention_heads=4,
                                             vocab_size=64)))
  elif kind == "clip_full":
    model = transformers.CLIPModel(transformers.CLIPConfig(
        vision_config=TINY, text_config=dict(hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=1, num_attention_heads=4,
                                             vocab_size=64), projection_dim=16))
  else:
    raise AssertionError(kind)
  # Random weights everywhere (HF zero-initialises biases and LayerNorm shifts), so that a
  # mis-mapped bias or norm cannot hide.
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  model.eval()
  model.save_pretrained(directory)
  return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  root = tmp_path_factory.mktemp("vision")
  out = {}
  for kind in ("siglip", "clip", "siglip_full", "clip_full"):
    directory = str(root / kind)
    out[kind] = (_build(kind, directory), directory)
  return out


def _reference(model, pixels_nhwc):
  vision_model = getattr(model, "vision_model", model)
  with torch.no_grad():
    out = vision_model(torch.from_numpy(pixels_nhwc.transpose(0, 3, 1, 2)),
                       output_hidden_states=True)
  return out.last_hidden_state.numpy(), [h.numpy() for h in out.hidden_states]


@pytest.mark.parametrize("kind", ["siglip", "clip", "siglip_full", "clip_full"])
def test_parity_with_transformers(checkpoints, kind):
  model, directory = checkpoints[kind]
  pixels = np.random.default_rng(1).normal(size=(3, 32, 32, 3)).astype(np.float32)
  last, hidden = _reference(model, pixels)
  is_clip = kind.startswith("clip")
  encoder = vision.load_vision_pretrained(directory, dtype=jnp.float32)
  assert encoder.config.family == ("clip" if is_clip else "siglip")
  assert encoder.num_patches == 16 and encoder.hidden_size == 32

  ours = np.asarray(encoder(jnp.asarray(pixels)))
  expected = last[:, 1:] if is_clip else last  # CLS dropped by default
  assert ours.shape == expected.shape == (3, 16, 32)
  np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)

  # LLaVA's penultimate-layer features, and the CLS-keeping variant for CLIP.
  penultimate = np.asarray(encoder(jnp.asarray(pixels), feature_layer=-2, keep_cls=True))
  np.testing.assert_allclose(penultimate, hidden[-2] if is_clip else hidden[-2], atol=1e-4, rtol=0)
  first = np.asarray(encoder(jnp.asarray(pixels), feature_layer=0, keep_cls=True))
  np.testing.assert_allclose(first, hidden[0], atol=1e-4, rtol=0)


def test_loaded_encoder_jits_and_differentiates(checkpoints):
  _, directory = checkpoints["siglip"]
  encoder = vision.load_vision_pretrained(directory, feature_layer=-2)
  pixels = jnp.asarray(np.random.default_rng(2).normal(size=(2, 32, 32, 3)), jnp.float32)

  @nnx.jit
  def loss(enc, x):
    return jnp.sum(enc(x) ** 2)

  grads = nnx.grad(loss)(encoder, pixels)
  leaves = jax.tree.leaves(nnx.state(grads, nnx.Param))
  assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  # The unused post-LN gets no gradient with penultimate features; the patch kernel does.
  assert float(jnp.abs(grads.patch_embedding.kernel[...]).sum()) > 0


def test_load_on_a_mesh(checkpoints):
  _, directory = checkpoints["clip"]
  mesh = jax.make_mesh((2, 4), ("data", "model"), (jax.sharding.AxisType.Auto,) * 2)
  encoder = vision.load_vision_pretrained(directory, mesh=mesh)
  assert encoder.layers[0].fc1.kernel[...].sharding.spec == jax.sharding.PartitionSpec(
      None, "model")
  assert encoder.layers[0].q_proj.kernel[...].sharding.spec == jax.sharding.PartitionSpec(
      None, "model", None)
  pixels = jnp.asarray(np.random.default_rng(3).normal(size=(2, 32, 32, 3)), jnp.float32)
  plain = vision.load_vision_pretrained(directory)
  np.testing.assert_allclose(np.asarray(nnx.jit(lambda e, x: e(x))(encoder, pixels)),
                             np.asarray(plain(pixels)), atol=1e-5)


def test_config_from_full_model_dict_uses_family_defaults():
  cfg = vision.VisionConfig.from_hf_dict({"model_type": "clip", "vision_config": {"hidden_size": 1024, "num_attention_heads": 16}})
  assert (cfg.family, cfg.hidden_size, cfg.patch_size, cfg.hidden_act, cfg.num_layers) == (
      "clip", 1024, 32, "quick_gelu", 12)
  cfg = vision.VisionConfig.from_hf_dict({"model_type": "siglip_vision_model"})
  assert (cfg.family, cfg.patch_size, cfg.layer_norm_eps) == ("siglip", 16, 1e-6)


def test_bad_checkpoints_give_clear_errors(checkpoints, tmp_path):
  _, good = checkpoints["siglip"]
  with open(os.path.join(good, "config.json")) as f:
    config = json.load(f)

  # Unsupported model type.
  bad = tmp_path / "bad_type"
  bad.mkdir()
  (bad / "config.json").write_text(json.dumps({**config, "model_type": "vit"}))
  with pytest.raises(ValueError, match="unsupported vision model_type 'vit'"):
    vision.load_vision_pretrained(str(bad))

  # Shape mismatch: config says hidden 64, tensors are 32 wide.
  mismatch = tmp_path / "mismatch"
  mismatch.mkdir()
  (mismatch / "config.json").write_text(json.dumps({**config, "hidden_size": 64}))
  os.symlink(os.path.join(good, "model.safetensors"), mismatch / "model.safetensors")
  with pytest.raises(ValueError, match="has shape"):
    vision.load_vision_pretrained(str(mismatch))

  # Missing tensor.
  from safetensors.numpy import load_file, save_file
  tensors = load_file(os.path.join(good, "model.safetensors"))
  del tensors["encoder.layers.1.mlp.fc2.bias"]
  missing = tmp_path / "missing"
  missing.mkdir()
  (missing / "config.json").write_text(json.dumps(config))
  save_file(tensors, str(missing / "model.safetensors"))
  with pytest.raises(ValueError, match=r"missing tensor 'encoder\.layers\.1\.mlp\.fc2\.bias'"):
    vision.load_vision_pretrained(str(missing))

  # Corrupt file.
  corrupt = tmp_path / "corrupt"
  corrupt.mkdir()
  (corrupt / "config.json").write_text(json.dumps(config))
  (corrupt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
  with pytest.raises(ValueError, match="corrupt or unreadable safetensors"):
    vision.load_vision_pretrained(str(corrupt))

  # No weights, no config.
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match="config.json"):
    vision.load_vision_pretrained(str(empty))
  (empty / "config.json").write_text(json.dumps(config))
  with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
    vision.load_vision_pretrained(str(empty))


def test_wrong_pixel_shape_is_named():
  encoder = vision.VisionEncoder.from_config(vision.VisionConfig(), nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"pixel_values must be \[N, 32, 32, 3\]"):
    encoder(jnp.zeros((1, 3, 32, 32)))


def test_image_preprocess_matches_formula_and_resizes():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
  out = vision.image_preprocess(images, mean=vision.CLIP_MEAN, std=vision.CLIP_STD, size=32)
  expected = (images / 255.0 - np.array(vision.CLIP_MEAN)) / np.array(vision.CLIP_STD)
  np.testing.assert_allclose(out, expected, atol=1e-5)
  # A constant 64x48 image stays constant after resizing to 32x32.
  flat = np.full((1, 64, 48, 3), 51, np.uint8)
  out = vision.image_preprocess(list(flat), size=32)
  assert out.shape == (1, 32, 32, 3)
  np.testing.assert_allclose(out, (51 / 255 - 0.5) / 0.5, atol=1e-5)
  with pytest.raises(ValueError, match="expected \\[H, W, 3\\]"):
    vision.image_preprocess([np.zeros((4, 4), np.uint8)], size=4)


def test_projector_shapes_and_logical_names():
  proj = vision.Projector(32, 48, rngs=nnx.Rngs(0))
  assert proj(jnp.ones((2, 5, 32))).shape == (2, 5, 48)
  specs = nnx.get_partition_spec(nnx.state(proj, nnx.Param))
  assert tuple(specs.linear_1.kernel.get_value()) == ("vision_embed", "mlp")
  assert tuple(specs.linear_2.kernel.get_value()) == ("mlp", "embed")
  assert isinstance(vision.VisionEncoder.from_config(vision.VisionConfig(), nnx.Rngs(0)),
                    vision.ImageEncoder)
