"""Tiny random Qwen2-VL / Qwen2.5-VL checkpoints (transformers + torch) and a mixed batch.

The batch exercises what can go wrong: spatial merge 2, two images of different non-square
sizes in one row, a row with no image, a row with one image, left padding; Qwen2.5-VL windows
that do not divide the merged grid, with one full-attention block. Norm weights and every bias
are moved away from their initial ones and zeros, so a dropped norm or bias cannot pass.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

VOCAB = 128
IMAGE, VIDEO, START, END = 120, 121, 118, 119
PATCH, TEMPORAL, MERGE = 2, 2, 2
PATCH_DIM = 3 * TEMPORAL * PATCH * PATCH
# (t, h, w) in patches: merged grids 3x4, 2x5 (row 0) and 4x2 (row 2).
GRIDS = np.array([[1, 6, 8], [1, 4, 10], [1, 8, 4]])


def text_config(**overrides):
  kw = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
            max_position_embeddings=512,
            rope_parameters={'rope_type': 'default', 'rope_theta': 1e4,
                             'mrope_section': [2, 3, 3]})
  kw.update(overrides)
  return kw


def build(variant: str, *, tie: bool, seed: int = 0, vocab_size: int = VOCAB,
          token_ids: tuple[int, int, int, int] = (IMAGE, VIDEO, START, END)):
  """A torch *ForConditionalGeneration with a tiny random config, perturbed norms and biases
  (``token_ids``: the image, video, vision-start and vision-end ids of the tokenizer it reads)."""
  import torch
  from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                            Qwen2VLForConditionalGeneration)
  common_vision = dict(depth=3 if variant == 'qwen2_5_vl' else 2, num_heads=2,
                       patch_size=PATCH, temporal_patch_size=TEMPORAL, spatial_merge_size=MERGE,
                       in_channels=3)
  image, video, start, end = token_ids
  ids = dict(image_token_id=image, video_token_id=video, vision_start_token_id=start,
             vision_end_token_id=end, tie_word_embeddings=tie)
  if variant == 'qwen3_vl':
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
    # Qwen3 text (q/k norms, head_dim 24 != 64 / 4 heads), interleaved M-RoPE [6, 3, 3] (so
    # frequencies 9-11 fall back to the temporal stream), DeepStack into LM layers 0 and 1.
    text = text_config(vocab_size=vocab_size, head_dim=24, num_hidden_layers=3,
                       rope_parameters={'rope_type': 'default', 'rope_theta': 1e4,
                                        'mrope_section': [6, 3, 3], 'mrope_interleaved': True})
    config = Qwen3VLConfig(text_config=text, vision_config=dict(
        hidden_size=32, intermediate_size=48, out_hidden_size=64, num_position_embeddings=16,
        deepstack_visual_indexes=[0, 1], **common_vision), **ids)
    cls = Qwen3VLForConditionalGeneration
  elif variant == 'qwen2_vl':
    config = Qwen2VLConfig(text_config=text_config(vocab_size=vocab_size), vision_config=dict(
        embed_dim=32, mlp_ratio=2, hidden_size=64, **common_vision), **ids)
    cls = Qwen2VLForConditionalGeneration
  else:
    # window 8 px = 2 merged tokens per side; block 1 attends over the whole image.
    config = Qwen2_5_VLConfig(text_config=text_config(vocab_size=vocab_size), vision_config=dict(
        hidden_size=32, intermediate_size=48, out_hidden_size=64, window_size=8,
        fullatt_block_indexes=[1], **common_vision), **ids)
    cls = Qwen2_5_VLForConditionalGeneration
  config._attn_implementation = 'eager'
  torch.manual_seed(seed)
  model = cls(config).eval()
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=gen)
      if name.endswith('bias'):
        param.copy_(0.1 * noise)
      elif 'norm' in name or 'ln_q' in name:
        param.copy_(1.0 + 0.3 * noise)
      else:  # larger than HF's 0.02 init so activations (and mismatches) are not tiny
        param.copy_(0.08 * noise)
  return model


def batch(seed: int = 0):
  """(input_ids, attention_mask, pixel_values, image_grid_thw, mm_token_type_ids), numpy,
  left-padded: row 0 two images, row 1 none, row 2 one image."""
  rng = np.random.default_rng(seed)
  text = lambda n: list(rng.integers(1, 100, size=n))
  tokens = [(int(t) * int(h) * int(w)) // MERGE ** 2 for t, h, w in GRIDS]
  image = lambda k: [START] + [IMAGE] * tokens[k] + [END]
  rows = [text(3) + image(0) + text(2) + image(1) + text(4),
          text(9),
          text(2) + image(2) + text(5)]
  t = max(map(len, rows)) + 1
  ids = np.zeros((len(rows), t), np.int64)
  mask = np.zeros((len(rows), t), np.int64)
  for i, row in enumerate(rows):
    ids[i, t - len(row):], mask[i, t - len(row):] = row, 1
  pixels = rng.normal(size=(int(GRIDS.prod(-1).sum()), PATCH_DIM)).astype(np.float32)
  return ids, mask, pixels, GRIDS.copy(), (ids == IMAGE).astype(np.int64)


def torch_logits(model, ids, mask, pixels, grid, types):
  import torch
  with torch.no_grad():
    out = model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
                pixel_values=torch.as_tensor(pixels), image_grid_thw=torch.as_tensor(grid),
                mm_token_type_ids=torch.as_tensor(types))
  return out.logits.numpy()


def valid_close(ours, theirs, mask, tol=1e-4):
  """ours == theirs within tol at the valid (unpadded) positions; the reference is not tiny."""
  valid = np.asarray(mask, bool)
  assert np.abs(theirs[valid]).std() > 0.05
  np.testing.assert_allclose(np.asarray(ours)[valid], theirs[valid], atol=tol, rtol=0)


# Untied Qwen2-VL, tied Qwen2.5-VL (the published 3B ties, 7B does not), untied Qwen3-VL: both
# heads, all three towers.
@pytest.fixture(scope='module', params=[('qwen2_vl', False), ('qwen2_5_vl', True),
                                        ('qwen3_vl', False)],
                ids=['qwen2_vl-untied', 'qwen2_5_vl-tied', 'qwen3_vl-untied'])
def checkpoint(request, tmp_path_factory):
  variant, tie = request.param
  torch_model = build(variant, tie=tie, seed=len(request.node.name))
  path = str(tmp_path_factory.mktemp(f'{variant}_{int(tie)}'))
  torch_model.save_pretrained(path)
  return path, torch_model


@pytest.fixture(scope='session')
def vl():
  """This module's constants and helpers (test modules cannot import a conftest by name)."""
  return types.SimpleNamespace(**{k: v for k, v in globals().items()
                                  if not k.startswith('_') and k not in ('types', 'pytest')})
