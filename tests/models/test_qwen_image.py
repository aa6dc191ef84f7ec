"""QwenImageProcessor (numpy + PIL) against transformers' Qwen2VLImageProcessor, PIL backend."""

import numpy as np
import pytest
from PIL import Image

from decomp.models.qwen_vl.mrope import bucket_size
from decomp.models.qwen_vl.image import QwenImageProcessor, smart_resize


def _images():
  rng = np.random.default_rng(0)
  rgb = lambda h, w: rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
  rgba = rng.integers(0, 256, size=(45, 61, 4), dtype=np.uint8)
  return [Image.fromarray(rgb(50, 70)),            # rounds to 56 x 84
          Image.fromarray(rgb(300, 120)),          # larger than max_pixels below: shrunk
          Image.fromarray(rgb(20, 33)),            # smaller than min_pixels: enlarged
          Image.fromarray(rgba, mode='RGBA'),      # transparency composited on white
          Image.fromarray(rgb(64, 64)[..., 0], mode='L'),  # grayscale
          rgb(90, 40)]                             # a uint8 array, HWC


@pytest.mark.parametrize('kwargs', [{}, {'min_pixels': 28 * 28 * 4, 'max_pixels': 28 * 28 * 20}],
                         ids=['defaults', 'min-max-pixels'])
def test_matches_transformers_pil_processor(kwargs):
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
  theirs = Qwen2VLImageProcessorPil(**kwargs)(_images(), return_tensors='np')
  ours = QwenImageProcessor(**kwargs)(_images())
  np.testing.assert_array_equal(ours['image_grid_thw'], theirs['image_grid_thw'])
  assert ours['pixel_values'].dtype == np.float32
  assert ours['pixel_values'].shape == theirs['pixel_values'].shape
  np.testing.assert_allclose(ours['pixel_values'], theirs['pixel_values'], atol=1e-6, rtol=0)
  if kwargs:  # the 300 x 120 image exceeds max_pixels and is resized, not refused
    t, h, w = ours['image_grid_thw'][1]
    assert h * w * 14 * 14 <= kwargs['max_pixels']
  processor = QwenImageProcessor(**kwargs)
  tokens = [processor.num_visual_tokens(*np.asarray(im).shape[:2]) for im in _images()]
  np.testing.assert_array_equal(tokens, ours['image_grid_thw'].prod(-1) // 4)


def test_smart_resize_matches_transformers():
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as theirs
  rng = np.random.default_rng(1)
  for h, w in rng.integers(10, 3000, size=(200, 2)):
    assert smart_resize(int(h), int(w)) == theirs(int(h), int(w))
    assert smart_resize(int(h), int(w), max_pixels=28 * 28 * 64) == theirs(
        int(h), int(w), max_pixels=28 * 28 * 64)
  with pytest.raises(ValueError, match='aspect ratio'):
    smart_resize(10, 3000)


def test_bucket_size():
  assert [bucket_size(n) for n in (0, 1, 64, 65, 200, 4096)] == [64, 64, 64, 128, 256, 4096]
  assert bucket_size(65, growth=1.25, multiple=4) == 80
  assert all(bucket_size(n, multiple=4) % 4 == 0 and bucket_size(n) >= n for n in range(500))
  with pytest.raises(ValueError):
    bucket_size(5, growth=1.0)
