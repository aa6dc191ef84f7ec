"""Host-side (numpy) index arithmetic of Qwen2-VL / Qwen2.5-VL: what depends on image sizes.

Everything here is computed before `jit` from concrete `input_ids` / `image_grid_thw`, so the
traced model only sees fixed-shape integer arrays:

- `rope_index`: the [3, B, T] multimodal RoPE positions (transformers' `get_rope_index`);
- `patch_layout`: per vision patch its 2-D rotary position, its frame (full attention is
  restricted to one frame of one image) and its window (Qwen2.5-VL's window attention);
- `bucket_size`: the padded number of patches, so a run compiles a handful of shapes.

Patch order. The processor emits an image's patches frame by frame and, inside a frame,
merge-block by merge-block: patch k of a frame with grid (h, w) and merge size m sits at
(block row, block column, row in block, column in block) = unravel(k, (h/m, w/m, m, m)). The
m*m patches of a block are consecutive, which is what lets the PatchMerger fold them into one
visual token by a reshape.

Windows without a permutation. transformers' Qwen2.5-VL permutes the patches so each window is
contiguous, attends within `cu_window_seqlens` chunks, and undoes the permutation after the
merger. Attention with a mask is permutation-equivariant and the permutation moves whole merge
blocks, so masking on a window id (`patch_layout(...).windows`) gives the same outputs in the
processor's order with no permutation to undo.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = ['PatchLayout', 'bucket_size', 'check_grid', 'patch_layout', 'position_interpolation',
           'rope_index',
           'visual_token_counts']


def check_grid(image_grid_thw, spatial_merge_size: int) -> np.ndarray:
  """image_grid_thw as an int64 [N, 3] array, checked (positive, h and w divisible by merge)."""
  try:
    grid = np.asarray(image_grid_thw)
  except Exception as e:  # a jax tracer: these shapes must be concrete
    raise TypeError('image_grid_thw must be a concrete array (numpy, or jax outside jit); '
                    'compute the layout on the host with QwenVL.prepare') from e
  grid = grid.reshape(-1, 3) if grid.size else np.zeros((0, 3), np.int64)
  if not np.issubdtype(grid.dtype, np.integer):
    raise ValueError(f'image_grid_thw must be integers, got dtype {grid.dtype}')
  grid = grid.astype(np.int64)
  if (grid <= 0).any():
    raise ValueError(f'image_grid_thw entries must be positive, got {grid.tolist()}')
  if (grid[:, 1:] % spatial_merge_size).any():
    raise ValueError(f'image_grid_thw heights/widths must be multiples of spatial_merge_size='
                     f'{spatial_merge_size}, got {grid.tolist()}')
  return grid


def visual_token_counts(grid: np.ndarray, spatial_merge_size: int) -> np.ndarray:
  """Visual tokens per image [N]: t * h * w / merge**2."""
  return grid.prod(-1) // spatial_merge_size ** 2


def rope_index(input_ids, attention_mask, image_grid_thw, *, image_token_id: int,
               spatial_merge_size: int) -> np.ndarray:
  """M-RoPE positions [3, B, T] int32 (temporal, height, width), as transformers' get_rope_index.

  Per row, over its valid tokens only: text shares one counter in all three streams; a run of
  image-pad tokens is one image, taking the next (t, h, w) of `image_grid_thw` (images are
  numbered row-major over the batch) and positions start + (t, row, column) over its merged
  grid; text after the image resumes at start + max(h, w) / merge. Padding gets 0.

  Raises ValueError naming the row and image when the image-pad runs disagree with
  image_grid_thw (count of images, or tokens of one image).
  """
  ids = np.asarray(input_ids)
  if ids.ndim != 2:
    raise ValueError(f'input_ids must be [B, T], got shape {ids.shape}')
  valid = np.ones(ids.shape, bool) if attention_mask is None else np.asarray(attention_mask,
                                                                             bool)
  grid = (np.zeros((0, 3), np.int64) if image_grid_thw is None
          else check_grid(image_grid_thw, spatial_merge_size))
  positions = np.zeros((3,) + ids.shape, np.int64)
  image = 0
  for b in range(ids.shape[0]):
    is_image = ids[b][valid[b]] == image_token_id
    pieces, start, cursor, n = [], 0, 0, len(is_image)
    while cursor < n:
      end = cursor
      while end < n and is_image[end] == is_image[cursor]:
        end += 1
      length = end - cursor
      if not is_image[cursor]:
        pieces.append(np.broadcast_to(np.arange(length) + start, (3, length)))
        start += length
      else:
        if image >= len(grid):
          raise ValueError(f'image-pad tokens of image {image} (row {b}) have no image_grid_thw '
                           f'entry: the batch has {len(grid)} grids')
        t, h, w = (int(x) for x in grid[image])
        gh, gw = h // spatial_merge_size, w // spatial_merge_size
        if length != t * gh * gw:
          raise ValueError(f'row {b}: image {image} has {length} image-pad tokens but '
                           f'image_grid_thw {[t, h, w]} makes {t * gh * gw} visual tokens')
        tt, hh, ww = np.meshgrid(np.arange(t), np.arange(gh), np.arange(gw), indexing='ij')
        pieces.append(np.stack([tt, hh, ww]).reshape(3, -1) + start)
        start += max(h, w) // spatial_merge_size
        image += 1
      cursor = end
    if pieces:
      positions[:, b, valid[b]] = np.concatenate(pieces, axis=1)
  if image != len(grid):
    raise ValueError(f'image_grid_thw has {len(grid)} images but input_ids hold image-pad runs '
                     f'for {image}')
  return positions.astype(np.int32)


class PatchLayout(NamedTuple):
  """Per-patch integer arrays [P] (P = the padded patch count) for the vision tower.

  rows, cols: 2-D rotary positions of each patch in its frame. frames: full-attention segment
  (one per frame of each image). windows: window-attention segment (Qwen2.5-VL; equals frames
  when there are no windows). Padding patches form one extra segment of their own in both, so
  they never mix with real patches.
  """
  rows: np.ndarray
  cols: np.ndarray
  frames: np.ndarray
  windows: np.ndarray
  pos_index: np.ndarray | None = None  # Qwen3-VL: position_interpolation's [P, 4] arrays
  pos_weight: np.ndarray | None = None


def patch_layout(image_grid_thw, *, spatial_merge_size: int, window_merged: int | None = None,
                 num_patches: int | None = None) -> PatchLayout:
  """PatchLayout for the images of image_grid_thw, padded to num_patches (default: no padding).

  window_merged: Qwen2.5-VL's window side in merged tokens (window_size // merge // patch);
  None for Qwen2-VL (no windows).
  """
  m = spatial_merge_size
  grid = check_grid(image_grid_thw, m)
  total = int(grid.prod(-1).sum())
  size = total if num_patches is None else int(num_patches)
  if size < total:
    raise ValueError(f'num_patches={size} is smaller than the {total} patches of image_grid_thw')
  rows, cols = np.zeros(size, np.int32), np.zeros(size, np.int32)
  frames, windows = np.zeros(size, np.int32), np.zeros(size, np.int32)
  offset = frame_id = window_id = 0
  for t, h, w in grid.tolist():
    bh, bw, mh, mw = np.unravel_index(np.arange(h * w), (h // m, w // m, m, m))
    if window_merged is None:
      local_windows, per_frame = np.zeros(h * w, np.int64), 1
    else:
      across = -(-(w // m) // window_merged)
      local_windows = (bh // window_merged) * across + bw // window_merged
      per_frame = -(-(h // m) // window_merged) * across
    for f in range(t):
      span = slice(offset, offset + h * w)
      rows[span], cols[span] = bh * m + mh, bw * m + mw
      frames[span] = frame_id
      windows[span] = window_id + local_windows
      offset += h * w
      frame_id += 1
      window_id += per_frame
  frames[total:] = frame_id
  windows[total:] = window_id
  return PatchLayout(rows, cols, frames, windows)


def bucket_size(n: int, *, minimum: int = 64, growth: float = 2.0, multiple: int = 4) -> int:
  """The smallest bucket >= n on the ladder minimum * growth**k, rounded up to `multiple`.

  Buckets bound the number of shapes `jit` compiles: with the default doubling ladder a run whose
  batches hold between 1 and 4096 patches compiles at most 7 vision shapes, at the price of up
  to 2x padded patches (~2x vision MLP FLOPs and up to 4x the masked attention scores in the
  worst case; half that on average). A finer ladder (growth=1.25) wastes at most 25% for about
  3x as many shapes. `multiple` should be spatial_merge_size**2 so padding adds whole visual
  tokens.
  """
  if n < 0 or minimum <= 0 or growth <= 1 or multiple <= 0:
    raise ValueError(f'bucket_size needs n >= 0, minimum > 0, growth > 1, multiple > 0; got '
                     f'n={n}, minimum={minimum}, growth={growth}, multiple={multiple}')
  size = float(minimum)
  while size < n:
    size *= growth
  return int(math.ceil(math.ceil(size) / multiple) * multiple)


def position_interpolation(image_grid_thw, *, spatial_merge_size: int, num_grid_per_side: int,
                           num_patches: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Qwen3-VL's learned position table resampled to each image's grid (bilinear,
  align_corners=True), as per-patch gather indices [P, 4] into the flattened
  side x side table and weights [P, 4] (float32; zero for padding patches).

  Equals transformers' get_vision_interpolation_indices_and_weights (computed in float32).
  """
  m, side = spatial_merge_size, num_grid_per_side
  grid = check_grid(image_grid_thw, m)
  total = int(grid.prod(-1).sum())
  size = total if num_patches is None else int(num_patches)
  indices, weights = np.zeros((size, 4), np.int32), np.zeros((size, 4), np.float32)

  def taps(index, length):
    src = index.astype(np.float32) * np.float32(side - 1) / np.float32(max(length - 1, 1))
    floor = np.floor(src)
    offsets = np.arange(2)
    tap = np.clip(floor.astype(np.int64)[:, None] + offsets, 0, side - 1)
    weight = np.clip(1 - np.abs(src[:, None] - floor[:, None] - offsets), 0, None)
    return tap, weight.astype(np.float32)

  offset = 0
  for t, h, w in grid.tolist():
    bh, bw, mh, mw = np.unravel_index(np.arange(h * w), (h // m, w // m, m, m))
    h_tap, h_weight = taps(bh * m + mh, h)
    w_tap, w_weight = taps(bw * m + mw, w)
    index = (h_tap[:, :, None] * side + w_tap[:, None, :]).reshape(-1, 4)
    weight = (h_weight[:, :, None] * w_weight[:, None, :]).reshape(-1, 4)
    for _ in range(t):
      indices[offset:offset + h * w], weights[offset:offset + h * w] = index, weight
      offset += h * w
  return indices, weights
