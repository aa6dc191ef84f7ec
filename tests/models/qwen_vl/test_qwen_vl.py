"""Qwen2-VL / Qwen2.5-VL / Qwen3-VL parity with transformers' torch models: logits, CL-loss
gradients, M-RoPE positions, rows without images."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import decomp.models as models
from decomp.models.qwen_vl.mrope import bucket_size, rope_index
from decomp.models.qwen_vl import QwenVL
from decomp.models.qwen_vl.hf import vl_hf_tensors

YES = 7
IMAGE, MERGE = 120, 2  # as in conftest


@nnx.jit
def _logits_and_last_hidden(model, inputs):
  return model.logits(inputs), model.hidden_states(inputs)[:, -1]


def test_logits_match_transformers(checkpoint, vl):
  path, torch_model = checkpoint
  model = models.load_pretrained(path)
  assert isinstance(model, QwenVL)
  assert (model.decoder.lm_head is None) == torch_model.config.tie_word_embeddings
  ids, mask, pixels, grid, types = vl.batch()
  expected = vl.torch_logits(torch_model, ids, mask, pixels, grid, types)
  # The public call, with exactly what the processor returns (numpy, mm_token_type_ids too).
  vl.valid_close(model(ids, mask, pixels, grid, mm_token_type_ids=types), expected, mask)
  # The jitted path with the patches padded to a bucket gives the same logits.
  inputs = model.prepare(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(pixels),
                         jnp.asarray(grid), bucket=True)
  assert inputs.pixel_values.shape[0] == bucket_size(len(pixels), multiple=MERGE ** 2) > len(pixels)
  logits, h = _logits_and_last_hidden(model, inputs)
  vl.valid_close(logits, expected, mask)
  # Hidden states, LM-head rows and the normaliser compose to the logits.
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


