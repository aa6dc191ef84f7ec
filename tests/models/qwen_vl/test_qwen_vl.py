"""Qwen2-VL / Qwen2.5-VL parity with transformers' torch models: logits, CL-loss gradients,
M-RoPE positions, checkpoint layouts, save -> transformers, and named errors."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

import decomp.models as models
from decomp.models.mrope import bucket_size, rope_index
from decomp.models.qwen_vl import QwenVL
from decomp.models.qwen_vl_hf import vl_hf_tensors

YES = 7
IMAGE, MERGE = 120, 2  # as in conftest


# Untied Qwen2-VL, tied Qwen2.5-VL (the published 3B ties, 7B does not): both heads, both towers.
@pytest.fixture(scope='module', params=[('qwen2_vl', False), ('qwen2_5_vl', True),
                                        ('qwen3_vl', False)],
                ids=['qwen2_vl-untied', 'qwen2_5_vl-tied', 'qwen3_vl-untied'])
def checkpoint(request, tmp_path_factory, vl):
  variant, tie = request.param
  torch_model = vl.build(variant, tie=tie, seed=len(request.node.name))
  path = str(tmp_path_factory.mktemp(f'{variant}_{int(tie)}'))
  torch_model.save_pretrained(path)
  return path, torch_model


@nnx.jit
def _logits(model, inputs):
  return model.logits(inputs)


def _valid_close(ours, theirs, mask, tol=1e-4):
  valid = np.asarray(mask, bool)
  assert np.abs(theirs[valid]).std() > 0.05
  np.testing.assert_allclose(np.asarray(ours)[valid], theirs[valid], atol=tol, rtol=0)


def test_logits_match_transformers(checkpoint, vl):
  path, torch_model = checkpoint
  model = models.load_pretrained(path)
  assert isinstance(model, QwenVL)
  assert (model.decoder.lm_head is None) == torch_model.config.tie_word_embeddings
  ids, mask, pixels, grid, types = vl.batch()
  expected = vl.torch_logits(torch_model, ids, mask, pixels, grid, types)
  # The public call, with exactly what the processor returns (numpy, mm_token_type_ids too).
  _valid_close(model(ids, mask, pixels, grid, mm_token_type_ids=types), expected, mask)
  # The jitted path with the patches padded to a bucket gives the same logits.
  inputs = model.prepare(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(pixels),
                         jnp.asarray(grid), bucket=True)
  assert inputs.pixel_values.shape[0] == bucket_size(len(pixels), multiple=MERGE ** 2) > len(pixels)
  _valid_close(_logits(model, inputs), expected, mask)
  # Hidden states, LM-head rows and the normaliser compose to the logits.
  h = nnx.jit(lambda m, x: m.hidden_states(x)[:, -1])(model, inputs)
  rows = model.lm_head_rows(jnp.asarray([YES, 3]))
  np.testing.assert_allclose(h @ rows.T, expected[:, -1, [YES, 3]], atol=1e-4)
  np.testing.assert_allclose(model.log_normalizer(h),
                             jax.nn.logsumexp(expected[:, -1], axis=-1), atol=1e-4)


def test_rope_index_equals_get_rope_index(checkpoint, vl):
  import torch
  path, torch_model = checkpoint
  ids, mask, pixels, grid, types = vl.batch(seed=3)
  theirs, _ = torch_model.model.get_rope_index(
      torch.as_tensor(ids), torch.as_tensor(types), torch.as_tensor(grid),
      attention_mask=torch.as_tensor(mask))
  ours = rope_index(ids, mask, grid, image_token_id=IMAGE, spatial_merge_size=MERGE)
  np.testing.assert_array_equal(ours, theirs.numpy())


def _cl_loss_torch(torch_model, ids, mask, pixels, grid, types):
  import torch
  out = torch_model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
                    pixel_values=torch.as_tensor(pixels), image_grid_thw=torch.as_tensor(grid),
                    mm_token_type_ids=torch.as_tensor(types))
  return -torch.log_softmax(out.logits[:, -1, YES], dim=0)[0]


def test_cl_loss_gradients_match_transformers(checkpoint, vl):
  """The CL loss (row 0 positive among the batch's rows, read at the last token) backpropagates
  through every parameter, vision tower included, as in torch."""
  path, torch_model = checkpoint
  model = models.load_pretrained(path)
  ids, mask, pixels, grid, types = vl.batch()
  torch_model.zero_grad()
  loss_t = _cl_loss_torch(torch_model, ids, mask, pixels, grid, types)
  loss_t.backward()
  inputs = model.prepare(ids, mask, pixels, grid)

  def loss_fn(m):
    h = m.hidden_states(inputs)[:, -1]
    yes = (h @ m.lm_head_rows(jnp.asarray([YES])).T)[:, 0]
    return -jax.nn.log_softmax(yes)[0]

  loss, grads = nnx.jit(nnx.value_and_grad(loss_fn))(model)
  np.testing.assert_allclose(loss, loss_t.item(), rtol=1e-5)
  nnx.update(model, grads)  # the model now holds its gradients, so they get HF names
  ours = {name: np.asarray(g) for name, g in vl_hf_tensors(model)}
  # torch's module names are the 5.x ones; checkpoints (and vl_hf_tensors) of Qwen2(.5)-VL use
  # the 4.4x ones.
  saved_name = lambda n: n if n in ours else n.replace('model.language_model.', 'model.').replace(
      'model.visual.', 'visual.')
  theirs = {saved_name(name): p.grad.numpy() for name, p in torch_model.named_parameters()}
  assert set(ours) == set(theirs)
  assert any('visual.' in n for n in theirs)
  for name, g_t in theirs.items():
    norm = np.linalg.norm(g_t)
    assert norm > 0, name
    assert np.linalg.norm(ours[name] - g_t) <= 1e-3 * norm, name


def test_save_pretrained_loads_back_in_transformers(checkpoint, tmp_path, vl):
  from transformers import AutoModelForImageTextToText
  path, torch_model = checkpoint
  model = models.load_pretrained(path)
  saved = str(tmp_path / 'saved')
  models.save_pretrained(model, saved)
  original = load_file(os.path.join(path, 'model.safetensors'))
  written = load_file(os.path.join(saved, 'model.safetensors'))
  assert set(written) == set(original)
  for name in original:
    np.testing.assert_array_equal(written[name], original[name], err_msg=name)
  # With LoRA adapters on the language model, the saved weights have them folded in.
  models.apply_lora(model.decoder, rank=2, rngs=nnx.Rngs(0))
  for layer in model.decoder.layers:
    b = layer.self_attn.q_proj.lora_b
    b[...] = jax.random.normal(jax.random.key(1), b[...].shape) * 0.5
  models.save_pretrained(model, saved)
  reloaded = AutoModelForImageTextToText.from_pretrained(saved).eval()
  assert type(reloaded) is type(torch_model)
  ids, mask, pixels, grid, types = vl.batch()
  ours = np.asarray(model(ids, mask, pixels, grid))
  assert np.abs(ours - vl.torch_logits(torch_model, ids, mask, pixels, grid, types)).max() > 1e-2
  _valid_close(ours, vl.torch_logits(reloaded, ids, mask, pixels, grid, types), mask)


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


def test_text_only_batch_and_rows_without_images(checkpoint, vl):
  import torch
  path, torch_model = checkpoint
  model = models.load_pretrained(path)
  ids, mask, pixels, grid, types = vl.batch()
  row = 1  # the text-only row: the same logits alone (no images, no padding) as in the batch
  valid = mask[row] == 1
  alone = np.asarray(model(ids[row:row + 1, valid], None))
  np.testing.assert_allclose(alone[0], np.asarray(model(ids, mask, pixels, grid))[row, valid],
                             atol=1e-4)
  with torch.no_grad():
    expected = torch_model(input_ids=torch.as_tensor(ids[row:row + 1, valid])).logits.numpy()
  np.testing.assert_allclose(alone, expected, atol=1e-4)


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
