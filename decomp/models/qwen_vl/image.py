"""Qwen2-VL / Qwen2.5-VL image preprocessing in numpy + PIL (no torch), equal to transformers'
`Qwen2VLImageProcessor` with the PIL backend.

Per image: RGB (transparency composited on white) -> `smart_resize` (both sides multiples of
patch * merge = 28, pixel count within [min_pixels, max_pixels], aspect ratio kept; an image
larger than max_pixels is shrunk, never an error) -> PIL bicubic resize of the uint8 image ->
x / 255 (float64, then float32) -> (x - CLIP mean) / CLIP std -> patches: the frame repeated
`temporal_patch_size` times, cut into patch x patch squares ordered merge block by merge block
(see decomp.models.qwen_vl.mrope), each flattened as (channel, time, row, column).

Output (as the processor's): `pixel_values` [sum of h*w patches, 3 * 2 * 14 * 14] float32 and
`image_grid_thw` [N, 3] int64 with t = 1 per image.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image

from decomp.models.vision import CLIP_MEAN, CLIP_STD

__all__ = ['QwenImageProcessor', 'smart_resize', 'to_rgb']

MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 1280


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
  """(height, width) rounded to multiples of `factor` with min_pixels <= h * w <= max_pixels.

  >>> smart_resize(100, 250)
  (112, 252)
  >>> smart_resize(2000, 3000, max_pixels=28 * 28 * 256)
  (364, 532)
  """
  if max(height, width) / min(height, width) > 200:
    raise ValueError(f'absolute aspect ratio must be smaller than 200, got '
                     f'{max(height, width) / min(height, width)}')
  h_bar = round(height / factor) * factor
  w_bar = round(width / factor) * factor
  if h_bar * w_bar > max_pixels:
    beta = math.sqrt((height * width) / max_pixels)
    h_bar = max(factor, math.floor(height / beta / factor) * factor)
    w_bar = max(factor, math.floor(width / beta / factor) * factor)
  elif h_bar * w_bar < min_pixels:
    beta = math.sqrt(min_pixels / (height * width))
    h_bar = math.ceil(height * beta / factor) * factor
    w_bar = math.ceil(width * beta / factor) * factor
  return h_bar, w_bar


def to_rgb(image) -> np.ndarray:
  """[H, W, 3] uint8 from a PIL image (any mode; alpha composited on white) or a uint8 array
  [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]."""
  if isinstance(image, Image.Image):
    if 'A' in image.getbands() or image.info.get('transparency') is not None:
      rgba = image.convert('RGBA')
      white = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
      return np.array(Image.alpha_composite(white, rgba).convert('RGB'))
    return np.array(image.convert('RGB'))
  array = np.asarray(image)
  if array.dtype != np.uint8:
    raise ValueError(f'image arrays must be uint8 [H, W(, C)], got dtype {array.dtype} (pass PIL '
                     'images or uint8 pixels)')
  if array.ndim == 2:
    array = array[..., None]
  if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
    raise ValueError(f'image arrays must be [H, W] or [H, W, 1|3|4], got shape {array.shape}')
  if array.shape[-1] == 1:
    return np.repeat(array, 3, axis=-1)
  if array.shape[-1] == 4:
    return to_rgb(Image.fromarray(array, mode='RGBA'))
  return array


@dataclasses.dataclass(frozen=True)
class QwenImageProcessor:
  """Qwen2VLImageProcessor (PIL backend) without torch. Call on a list of images."""
  min_pixels: int = MIN_PIXELS
  max_pixels: int = MAX_PIXELS
  patch_size: int = 14
  temporal_patch_size: int = 2
  merge_size: int = 2
  image_mean: tuple[float, ...] = CLIP_MEAN
  image_std: tuple[float, ...] = CLIP_STD

  @classmethod
  def from_pretrained(cls, path: str | os.PathLike) -> 'QwenImageProcessor':
    """From a checkpoint's preprocessor_config.json (min/max_pixels or
    size.{shortest,longest}_edge); the defaults when the file is absent."""
    file = os.path.join(os.fspath(path), 'preprocessor_config.json')
    if not os.path.isfile(file):
      return cls()
    with open(file, encoding='utf-8') as f:
      raw: dict[str, Any] = json.load(f)
    size = raw.get('size') or {}
    kw = dict(min_pixels=raw.get('min_pixels', size.get('shortest_edge', MIN_PIXELS)),
              max_pixels=raw.get('max_pixels', size.get('longest_edge', MAX_PIXELS)))
    for key in ('patch_size', 'temporal_patch_size', 'merge_size'):
      if key in raw:
        kw[key] = int(raw[key])
    for key in ('image_mean', 'image_std'):
      if key in raw:
        kw[key] = tuple(float(x) for x in raw[key])
    return cls(**kw)

  def resized_size(self, height: int, width: int) -> tuple[int, int]:
    """(height, width) the image is resized to."""
    return smart_resize(height, width, self.patch_size * self.merge_size, self.min_pixels,
                        self.max_pixels)

  def num_visual_tokens(self, height: int, width: int) -> int:
    """Image-pad tokens an image of this size takes in the prompt."""
    h, w = self.resized_size(height, width)
    return (h // self.patch_size) * (w // self.patch_size) // self.merge_size ** 2

  def patchify(self, image: np.ndarray) -> tuple[np.ndarray, int, int]:
    """[3, H, W] float32 -> (patches [gh * gw, 3 * T * p * p], gh, gw)."""
    p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
    c, h, w = image.shape
    gh, gw = h // p, w // p
    patches = image.reshape(c, gh // m, m, p, gw // m, m, p).transpose(1, 4, 2, 5, 0, 3, 6)
    patches = np.broadcast_to(patches[:, :, :, :, :, None], patches.shape[:5] + (t, p, p))
    return patches.reshape(gh * gw, c * t * p * p), gh, gw

  def __call__(self, images: Sequence[Any]) -> dict[str, np.ndarray]:
    """{'pixel_values': [sum h*w, 3*T*p*p] float32, 'image_grid_thw': [N, 3] int64}."""
    if isinstance(images, (Image.Image, np.ndarray)):
      images = [images]
    mean = np.asarray(self.image_mean, np.float32)
    std = np.asarray(self.image_std, np.float32)
    all_patches, grids = [], []
    for image in images:
      rgb = to_rgb(image)
      h, w = self.resized_size(*rgb.shape[:2])
      rgb = np.array(Image.fromarray(rgb).resize((w, h), resample=Image.BICUBIC))
      x = (rgb.astype(np.float64) * (1 / 255)).astype(np.float32)
      x = (x - mean) / std
      patches, gh, gw = self.patchify(np.ascontiguousarray(x.transpose(2, 0, 1)))
      all_patches.append(patches)
      grids.append([1, gh, gw])
    if not all_patches:
      raise ValueError('QwenImageProcessor needs at least one image')
    return {'pixel_values': np.concatenate(all_patches, axis=0),
            'image_grid_thw': np.asarray(grids, np.int64)}

  def fixed_size_patches(self, images: Sequence[Any], size: int) -> np.ndarray:
    """[N, (size / patch)**2, 3*T*p*p] float32: every image resized (PIL bicubic) to exactly
    size x size, then normalised and cut as `__call__` does (image_grid_thw (1, size/p, size/p)
    for all).

    What the training engine feeds a native Qwen vision tower: one image shape per run keeps
    the batch a fixed-shape array that shards along the batch like the text (the processor's
    aspect-preserving `smart_resize` would give every image its own patch count).
    """
    factor = self.patch_size * self.merge_size
    if size % factor:
      raise ValueError(f'image size {size} must be a multiple of patch_size * merge_size = '
                       f'{factor}')
    mean = np.asarray(self.image_mean, np.float32)
    std = np.asarray(self.image_std, np.float32)
    out = []
    for image in images:
      rgb = to_rgb(image)
      if rgb.shape[:2] != (size, size):
        rgb = np.array(Image.fromarray(rgb).resize((size, size), resample=Image.BICUBIC))
      x = (rgb.astype(np.float64) * (1 / 255)).astype(np.float32)
      out.append(self.patchify(np.ascontiguousarray(((x - mean) / std).transpose(2, 0, 1)))[0])
    if not out:
      return np.zeros((0, (size // self.patch_size) ** 2,
                       3 * self.temporal_patch_size * self.patch_size ** 2), np.float32)
    return np.stack(out)
