"""Host-side (numpy) index arithmetic of Qwen2-VL / Qwen2.5-VL: what depends on image sizes.

Everything here is computed before `jit` from concrete `input_ids` / `image_grid_thw`, so the
traced model only sees fixed-shape integer arrays:

- `rope_index`: the [3, B, T] multimodal RoPE positions (transformers' `get_rope_index`);
- `patch_layout`: per vision patch its 2-D rotary position, and the attention segments: frames
  (full attention is restricted to one frame of one image) and windows (Qwen2.5-VL);
- `bucket_size`: the padded number of patches, so a run compiles a handful of shapes.

Patch order. The processor emits an image's patches frame by frame and, inside a frame,
merge-block by merge-block: patch k of a frame with grid (h, w) and merge size m sits at
(block row, block column, row in block, column in block) = unravel(k, (h/m, w/m, m, m)). The
m*m patches of a block are consecutive, which is what lets the PatchMerger fold them into one
visual token by a reshape.

Windows without a permutation. transformers' Qwen2.5-VL permutes the patches so each window is
contiguous, attends within `cu_window_seqlens` chunks, and undoes the permutation after the
merger. Here each attention segment (a frame, or a window) is a row of indices into the patches
(`PatchLayout.full` / `.window`): the tower gathers a row, attends within it and scatters the
result back, so the patches stay in the processor's order and there is nothing to undo
(attention within a segment does not depend on the order of its members).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = ['PatchLayout', 'bucket_size', 'check_grid', 'patch_layout', 'position_interpolation',
           'rope_index', 'segment_table', 'visual_token_counts']


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
  """What the vision tower needs besides the pixels, for P (padded) patches.

  rows, cols [P]: 2-D rotary position of each patch in its frame.
  full [S, L]: the patches of each attention segment of the full-attention blocks (one segment
    per frame of each image), as indices into the P patches, padded with P (no patch).
  window [S', L']: the same for Qwen2.5-VL's window-attention blocks (one segment per window);
    equals `full` for towers without windows.
  pos_index, pos_weight [P, 4]: Qwen3-VL's position-table interpolation (else None).

  Attention runs within each row of a table: S * L**2 scores instead of P**2, and a window's
  patches need not be contiguous (no permutation to undo). Padding patches sit in no segment.
  """
  rows: np.ndarray
  cols: np.ndarray
  full: np.ndarray
  window: np.ndarray
  pos_index: np.ndarray | None = None
  pos_weight: np.ndarray | None = None


def segment_table(segments: np.ndarray, size: int, *, bucket: bool = False) -> np.ndarray:
  """[S, L] int32: row s lists (in order) the positions i with segments[i] == s-th segment id,
  padded with `size`; segments holds ids >= 0 for the real patches, -1 for padding.

  bucket: S and L rounded up the doubling ladder of bucket_size (so batches of different image
  sizes share compiled shapes); extra rows are all padding.
  """
  ids, counts = np.unique(segments[segments >= 0], return_counts=True)
  s, length = len(ids), int(counts.max()) if len(counts) else 1
  if bucket:
    s, length = bucket_size(s, minimum=1, multiple=1), bucket_size(length, minimum=4, multiple=1)
  table = np.full((max(s, 1), length), size, np.int32)
  for row, segment in enumerate(ids):
    members = np.flatnonzero(segments == segment)
    table[row, :len(members)] = members
  return table


def patch_layout(image_grid_thw, *, spatial_merge_size: int, window_merged: int | None = None,
                 num_patches: int | None = None, bucket: bool = False) -> PatchLayout:
  """PatchLayout for the images of image_grid_thw, padded to num_patches (default: no padding).

  window_merged: Qwen2.5-VL's window side in merged tokens (window_size // merge // patch);
  None without windows. bucket: bucket the segment tables (see segment_table).
  """
  m = spatial_merge_size
  grid = check_grid(image_grid_thw, m)
  total = int(grid.prod(-1).sum())
  size = total if num_patches is None else int(num_patches)
  if size < total:
    raise ValueError(f'num_patches={size} is smaller than the {total} patches of image_grid_thw')
  rows, cols = np.zeros(size, np.int32), np.zeros(size, np.int32)
  frames, windows = np.full(size, -1, np.int64), np.full(size, -1, np.int64)
  offset = frame_id = window_id = 0
  for t, h, w in grid.tolist():
    bh, bw, mh, mw = np.unravel_index(np.arange(h * w), (h // m, w // m, m, m))
    if window_merged is not None:
      across = -(-(w // m) // window_merged)
      local_windows = (bh // window_merged) * across + bw // window_merged
      per_frame = -(-(h // m) // window_merged) * across
    for _ in range(t):
      span = slice(offset, offset + h * w)
      rows[span], cols[span] = bh * m + mh, bw * m + mw
      frames[span] = frame_id
      if window_merged is not None:
        windows[span] = window_id + local_windows
        window_id += per_frame
      offset += h * w
      frame_id += 1
  full = segment_table(frames, size, bucket=bucket)
  window = full if window_merged is None else segment_table(windows, size, bucket=bucket)
  return PatchLayout(rows, cols, full, window)


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
