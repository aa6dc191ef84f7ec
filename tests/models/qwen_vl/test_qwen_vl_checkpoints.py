"""Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoints: every name / config layout in circulation,
save -> transformers (LoRA folded in), and named errors."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

import decomp.models as models

IMAGE = 120  # as in conftest


def test_save_pretrained_loads_back_in_transformers(checkpoint, tmp_path, vl,
                                                   assert_saves_same_tensors):
  from transformers import AutoModelForImageTextToText
  path, torch_model = checkpoint
  model = models.load_pretrained(path)
  saved = assert_saves_same_tensors(model, path)
  # With LoRA adapters on the language model and the vision tower, the saved weights have them
  # folded in (and the model keeps its adapters).
  models.apply_lora(model.decoder, rank=2, alpha=2.0, rngs=nnx.Rngs(0))
  models.apply_vision_lora(model.visual, rank=2, alpha=2.0, targets=models.VISION_LORA_TARGETS,
                           rngs=nnx.Rngs(1))
  assert nnx.to_flat_state(nnx.state(model.visual, nnx.LoRAParam))
  b_matrices = [v for p, v in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))
                if p[-1] == 'lora_b']  # zero-initialised: give them values
  for i, b in enumerate(b_matrices):
    b.set_value(jax.random.normal(jax.random.key(i), b.get_value().shape) * 0.1)
  models.save_pretrained(model, saved)
  reloaded = AutoModelForImageTextToText.from_pretrained(saved).eval()
  assert type(reloaded) is type(torch_model)
  ids, mask, pixels, grid, types = vl.batch()
  ours = np.asarray(model(ids, mask, pixels, grid))
  assert np.abs(ours - vl.torch_logits(torch_model, ids, mask, pixels, grid, types)).max() > 1e-2
  vl.valid_close(ours, vl.torch_logits(reloaded, ids, mask, pixels, grid, types), mask)
  assert models.has_lora(model.decoder)
  # Merging in place gives the same model without adapters.
  models.merge_vision_lora(model.visual)
  models.merge_lora(model.decoder)
  assert not nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))
  np.testing.assert_allclose(model(ids, mask, pixels, grid), ours, atol=1e-5)


def _rewrite(path, target, *, other_names, flat_config, tie_in_text_config):
  """Rewrites transformers 5.24's save in the other layouts in circulation: the other tensor
  names (4.4x `model.*` / `visual.*` <-> 4.5x `model.language_model.*` / `model.visual.*`);
  4.4x config.json (text keys flat at the root, rope_scaling {type: mrope} + top-level
  rope_theta); the tie flag only in text_config."""
  shutil.copytree(path, target)
  with open(os.path.join(target, 'config.json')) as f:
    config = json.load(f)
  if flat_config:
    text = config.pop('text_config')
    rope = text.pop('rope_parameters')
    config.update({k: v for k, v in text.items() if k not in ('model_type', 'dtype')})
    config['rope_theta'] = rope['rope_theta']
    config['rope_scaling'] = {'type': 'mrope', 'mrope_section': rope['mrope_section']}
  if tie_in_text_config:
    config.setdefault('text_config', {})['tie_word_embeddings'] = config.pop(
        'tie_word_embeddings')
  with open(os.path.join(target, 'config.json'), 'w') as f:
    json.dump(config, f)
  if other_names:
    file = os.path.join(target, 'model.safetensors')
    tensors = load_file(file)
    if any(n.startswith('model.visual.') for n in tensors):
      rename = lambda n: n.replace('model.language_model.', 'model.').replace('model.visual.',
                                                                              'visual.')
    else:
      rename = lambda n: ('model.language_model.' + n[6:] if n.startswith('model.') else
                          'model.' + n if n.startswith('visual.') else n)
    renamed = {rename(n): t for n, t in tensors.items()}
    assert set(renamed) != set(tensors)
    save_file(renamed, file, metadata={'format': 'pt'})


@pytest.mark.parametrize('other_names,flat_config,tie_in_text_config',
                         [(True, True, False), (False, False, True)])
def test_every_checkpoint_layout_gives_the_same_model(checkpoint, tmp_path, vl, other_names,
                                                      flat_config, tie_in_text_config):
  path, torch_model = checkpoint
  ids, mask, pixels, grid, types = vl.batch()
  reference = models.load_pretrained(path)
  target = str(tmp_path / 'layout')
  _rewrite(path, target, other_names=other_names, flat_config=flat_config,
           tie_in_text_config=tie_in_text_config)
  other = models.load_pretrained(target)
  assert other.config == reference.config
  np.testing.assert_array_equal(other(ids, mask, pixels, grid), reference(ids, mask, pixels, grid))


def test_named_errors(checkpoint, tmp_path, vl):
  path, _ = checkpoint
  model = models.load_pretrained(path)
  ids, mask, pixels, grid, types = vl.batch()
  short = ids.copy()
  short[0, np.flatnonzero(short[0] == IMAGE)[0]] = 5  # one image-pad token fewer
  with pytest.raises(ValueError, match=r'row 0: image 0 has 11 image-pad tokens but '
                                       r'image_grid_thw \[1, 6, 8\] makes 12'):
    model(short, mask, pixels, grid)
  with pytest.raises(ValueError, match=r'image-pad tokens of image 2 \(row 2\) have no '
                                       'image_grid_thw entry'):
    model(ids, mask, pixels[:-32], grid[:2])
  with pytest.raises(ValueError, match='image_grid_thw has 4 images but input_ids hold '
                                       'image-pad runs for 3'):
    model(ids, mask, np.concatenate([pixels, pixels[:4]]), np.concatenate([grid, [[1, 2, 2]]]))
  with pytest.raises(ValueError, match='pixel_values has shape'):
    model(ids, mask, pixels[:-4], grid)
  with pytest.raises(ValueError, match='both or neither'):
    model(ids, mask, pixels, None)
  # Unsupported architecture: named, with the supported list.
  bad = str(tmp_path / 'bad')
  shutil.copytree(path, bad)
  with open(os.path.join(bad, 'config.json')) as f:
    config = json.load(f)
  with open(os.path.join(bad, 'config.json'), 'w') as f:
    json.dump({**config, 'architectures': ['Gemma3ForConditionalGeneration']}, f)
  with pytest.raises(ValueError, match=r"unsupported architecture 'Gemma3ForConditionalGeneration'"
                                       r".*Qwen2_5_VLForConditionalGeneration"):
    models.load_pretrained(bad)
  # A config that does not describe the weights (one vision block too few).
  config['vision_config']['depth'] -= 1
  with open(os.path.join(bad, 'config.json'), 'w') as f:
    json.dump(config, f)
  with pytest.raises(models.CheckpointError, match=r'tensors the config does not describe.*'
                                                   r'visual\.blocks'):
    models.load_pretrained(bad)
  config['vision_config']['depth'] += 1
  with open(os.path.join(bad, 'config.json'), 'w') as f:
    json.dump(config, f)
  # No vision weights at all.
  file = os.path.join(bad, 'model.safetensors')
  save_file({n: t for n, t in load_file(file).items() if 'visual' not in n}, file,
            metadata={'format': 'pt'})
  with pytest.raises(models.CheckpointError, match='missing vision weights'):
    models.load_pretrained(bad)
