"""`python -m decomp.train --set model=<Qwen-VL dir>` trains a local Qwen2-VL / Qwen2.5-VL /
Qwen3-VL checkpoint on JSONL data with images: the engine's readout equals the model's own
forward pass (`decomp.models.load_pretrained`, itself checked against transformers in
tests/models/qwen_vl), and a run trains, resumes bit-exactly and draws its figures."""

import os
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from decomp.train import config as config_lib
from decomp.train import overrides as overrides_lib
from decomp.train import recipes
from decomp.train import data as data_lib
from decomp.train import logs
from decomp.train import mesh as mesh_lib
from decomp.train import state as state_lib
from decomp.train import step as step_lib
from decomp.train.loop import train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPECIAL = ['<|vision_start|>', '<|vision_end|>', '<|image_pad|>', '<|video_pad|>']


def _hf_config(variant: str, vocab: dict, vocab_size: int) -> dict:
  """A tiny config.json (patch 2, merge 2: an 8 px image is 16 patches, 4 visual tokens)."""
  text = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
              max_position_embeddings=512,
              rope_parameters={'rope_type': 'default', 'rope_theta': 1e4,
                               'mrope_section': [2, 3, 3]})
  common = dict(depth=2, num_heads=2, patch_size=2, temporal_patch_size=2, spatial_merge_size=2,
                in_channels=3)
  if variant == 'qwen2_5_vl':  # 4 px windows (one merged token): block 0 windowed, 1 full
    vision = dict(hidden_size=32, intermediate_size=48, out_hidden_size=64, window_size=4,
                  fullatt_block_indexes=[1], **common)
  elif variant == 'qwen2_vl':
    vision = dict(embed_dim=32, mlp_ratio=2, hidden_size=64, **common)
  else:  # Qwen3 text (head_dim 24 != 64 / 4), interleaved M-RoPE, DeepStack into layers 0, 1
    text.update(head_dim=24, rope_parameters={'rope_type': 'default', 'rope_theta': 1e4,
                                              'mrope_section': [6, 3, 3],
                                              'mrope_interleaved': True})
    vision = dict(hidden_size=32, intermediate_size=48, out_hidden_size=64,
                  num_position_embeddings=16, deepstack_visual_indexes=[0, 1], **common)
  from decomp.models.qwen_vl import VL_ARCHITECTURES
  return {'architectures': [VL_ARCHITECTURES[variant]], 'model_type': variant,
          'text_config': text, 'vision_config': vision,
          'image_token_id': vocab['<|image_pad|>'], 'video_token_id': vocab['<|video_pad|>'],
          'vision_start_token_id': vocab['<|vision_start|>'],
          'vision_end_token_id': vocab['<|vision_end|>'], 'tie_word_embeddings': False}


def make_vl_checkpoint(path: str, variant: str, seed: int = 0) -> str:
  """A random tiny Qwen-VL checkpoint with the playground's words + Qwen's vision tokens."""
  from decomp.models import save_pretrained
  from decomp.models.qwen_vl import QwenVL, QwenVLConfig
  tokenizer = state_lib.resolve_tokenizer(recipes.get_config('playground'))
  tokenizer.add_special_tokens({'additional_special_tokens': SPECIAL})
  config = QwenVLConfig.from_hf(_hf_config(variant, tokenizer.get_vocab(), len(tokenizer) + 8))
  model = QwenVL(config, rngs=nnx.Rngs(seed))
  # Norm scales away from 1 and larger weights, so a dropped norm or a wrong position shows.
  rng = np.random.default_rng(seed)
  for _, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    value = np.asarray(variable.get_value())
    variable.set_value(jax.numpy.asarray(
        value + 0.05 * rng.standard_normal(value.shape).astype(value.dtype)))
  save_pretrained(model, path)
  tokenizer.save_pretrained(path)
  return path


def make_image_data(path: str) -> str:
  """MRB-style JSONL splits mixing image and text documents (T->I, I->T, T->T)."""
  from decomp.data import mrb
  from decomp.data.playground import Playground, PlaygroundConfig
  world = Playground(PlaygroundConfig(seed=3, negatives=5, tasks=('t2i', 'i2t', 't2t')))
  os.makedirs(path, exist_ok=True)
  for split, count in (('train', 12), ('val', 6), ('test', 6)):
    mrb.write_jsonl(world.groups(split, 0, count), os.path.join(path, f'{split}.jsonl'))
  return path


@pytest.fixture(scope='module')
def image_data(tmp_path_factory):
  return make_image_data(str(tmp_path_factory.mktemp('vl_data')))


def _cfg(model, data, *overrides):
  return overrides_lib.apply_overrides(recipes.get_config('playground'), [
      f'model={model}', f'data={data}', 'image_size=8', 'steps=4', 'batch_size=4',
      'eval_batch_size=4', 'num_devices=1', 'mesh={"data": 1}', 'negatives=3', 'eval_every=0',
      'checkpoint_every=2', 'keep_checkpoints=3', 'test_groups=0', 'example_log_every=1',
      'quiet=true', 'max_length=64', *overrides])


# Qwen2-VL's tower is checked against transformers in tests/models/qwen_vl; the engine's path
# (vmapped tower, splice, positions) is the same code for it as for Qwen2.5-VL.
@pytest.mark.parametrize('variant', ['qwen2_5_vl', 'qwen3_vl'])
def test_engine_readout_is_the_models_forward(variant, image_data, tmp_path):
  """The reranker the engine builds from a VL checkpoint scores a training batch (image and
  text documents, left padding, M-RoPE positions from the data) with the logits the VL model
  itself gives the same prompts at their last token."""
  from decomp.models import load_pretrained
  model_dir = make_vl_checkpoint(str(tmp_path / variant), variant)
  cfg = _cfg(model_dir, image_data, 'finetune=full')  # the gmr prompt: tests/models/test_presets
  tokenizer = state_lib.resolve_tokenizer(cfg)
  shapes = state_lib.data_shapes(cfg, tokenizer)
  data = data_lib.make_data(cfg, tokenizer, shapes.image_input)
  batch, _ = data.train_batch(0, 4)
  assert batch['pixel_values'].shape[-2:] == (16, 3 * 2 * 2 * 2)
  assert batch['image_valid'].any() and not batch['image_valid'].all()
  mesh = mesh_lib.make_mesh({'data': 1}, jax.devices()[:1])
  objective = config_lib.make_objective(cfg)
  run = state_lib.build_model_state(cfg, mesh, tokenizer, objective)
  params, frozen = run.initialize()
  reranker = nnx.merge(run.graphdef, params, frozen)
  out = jax.jit(lambda b: step_lib.model_readout(reranker, b))(batch)

  vl = load_pretrained(model_dir)
  b, n, t = batch['input_ids'].shape
  ids = batch['input_ids'].reshape(b * n, t)
  mask = batch['attention_mask'].reshape(b * n, t)
  valid = batch['image_valid'].reshape(b * n, 2)
  pixels = batch['pixel_values'].reshape((b * n, 2) + batch['pixel_values'].shape[-2:])
  flat_pixels = pixels[valid].reshape(-1, pixels.shape[-1])
  grid = np.tile([[1, 4, 4]], (int(valid.sum()), 1))
  logits = np.asarray(vl(ids, mask, flat_pixels, grid))[:, -1]
  yes_no = logits[:, list(run.spec.label_ids[:2])].reshape(b, n, 2)
  np.testing.assert_allclose(np.asarray(out.yes), yes_no[..., 0], atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(out.no), yes_no[..., 1], atol=1e-4, rtol=1e-4)
  # The images matter: blanking them moves the scores of the documents that have one.
  blank = dict(batch, pixel_values=np.zeros_like(batch['pixel_values']))
  moved = np.abs(np.asarray(jax.jit(lambda b: step_lib.model_readout(reranker, b))(blank).yes)
                 - np.asarray(out.yes))
  has_image = batch['image_valid'].any(-1)
  assert (moved[has_image] > 1e-4).all() and (moved[~has_image] < 1e-5).all()


def test_a_qwen2_5_vl_checkpoint_trains_resumes_and_draws_figures(image_data, tmp_path,
                                                                 assert_resumes_exactly):
  model_dir = make_vl_checkpoint(str(tmp_path / 'qwen2_5_vl'), 'qwen2_5_vl')
  cfg = _cfg(model_dir, image_data, 'finetune=lora', 'lora_rank=4', 'lora_vision=true',
             'prompt=gmr', 'test_groups=6', 'max_length=128')
  reference = str(tmp_path / 'reference')
  results = train(cfg, reference)
  records = logs.read_steps(reference)
  assert len(records) == 4 and np.isfinite([r['loss'] for r in records]).all()
  assert set(results['test']['sft']['per_task']) == {'t2i', 'i2t', 't2t'}
  assert_resumes_exactly(cfg, reference, 4)
  sys.path.insert(0, os.path.join(ROOT, 'figures'))
  import make_all
  paths = make_all.make_all(reference, str(tmp_path / 'figures'))
  assert len(paths) >= 3 and all(os.path.getsize(p) > 1000 for p in paths)


def test_bad_vl_settings_get_named_errors(image_data, tmp_path):
  model_dir = make_vl_checkpoint(str(tmp_path / 'qwen2_vl'), 'qwen2_vl')
  objective = config_lib.make_objective(_cfg(model_dir, image_data))
  mesh = mesh_lib.make_mesh({'data': 1}, jax.devices()[:1])

  def build(*overrides):
    cfg = _cfg(model_dir, image_data, *overrides)
    config_lib.validate(cfg)
    state_lib.build_model_state(cfg, mesh, state_lib.resolve_tokenizer(cfg), objective)

  with pytest.raises(ValueError, match=r'image_size=6: .* multiple of patch_size x '
                                       r'spatial_merge_size = 4'):
    build('image_size=6')
  with pytest.raises(ValueError, match='lora_vision=True: LoRA settings apply to trains=lora'):
    build('finetune=full', 'lora_vision=true')
  with pytest.raises(ValueError, match="config readout.preset='qwen9': expected '' .*one of"):
    build('prompt=qwen9')
  with pytest.raises(ValueError, match="preset 'monoqwen2-vl' reads its own label words"):
    build('prompt=monoqwen2-vl', 'label_words=["yes", "no"]', 'label_words=["a", "b"]')
  build('prompt=monoqwen2-vl', 'finetune=head')  # its True/False: this tokenizer lowercases
