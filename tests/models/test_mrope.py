"""Host-side layout arithmetic against transformers' vision_utils: rotary positions, frame and
window segments, the Qwen3-VL position-table interpolation."""

import numpy as np
import pytest

from decomp.models.qwen_vl.mrope import patch_layout, position_interpolation, segment_table

GRIDS = np.array([[1, 6, 8], [2, 4, 10], [1, 16, 12], [1, 2, 2]])


def _segments(table, size):
  return {frozenset(int(i) for i in row if i < size) for row in table} - {frozenset()}


def test_rows_cols_frames_and_windows_match_transformers():
  import torch
  from transformers import vision_utils as vu
  grid = torch.as_tensor(GRIDS)
  total = int(GRIDS.prod(-1).sum())
  window_merged = 2  # window_size 8 px / merge 2 / patch 2
  layout = patch_layout(GRIDS, spatial_merge_size=2, window_merged=window_merged,
                        num_patches=total + 8, bucket=True)
  positions = vu.get_vision_position_ids(grid, 2).numpy()
  np.testing.assert_array_equal(layout.rows[:total], positions[:, 0])
  np.testing.assert_array_equal(layout.cols[:total], positions[:, 1])
  cu = vu.get_vision_cu_seqlens(grid).tolist()
  assert _segments(layout.full, total + 8) == {frozenset(range(a, b))
                                                 for a, b in zip(cu, cu[1:])}
  index, cu_windows = vu.get_vision_window_index(grid, spatial_merge_size=2, window_size=8,
                                                 patch_size=2)
  # transformers: merge units in window order, each window a chunk of cu_window_seqlens.
  order = (index.numpy()[:, None] * 4 + np.arange(4)).reshape(-1)
  cu_windows = cu_windows.tolist()
  theirs = {frozenset(order[a:b].tolist()) for a, b in zip(cu_windows, cu_windows[1:])}
  assert _segments(layout.window, total + 8) == theirs
  # Bucketed tables: power-of-two shapes, padding rows point at no patch.
  for table in (layout.full, layout.window):
    assert all(n & (n - 1) == 0 for n in table.shape)


def test_segment_table_pads_with_size():
  table = segment_table(np.array([0, 0, 1, -1, 1, 1]), 6)
  np.testing.assert_array_equal(table, [[0, 1, 6], [2, 4, 5]])
  assert segment_table(np.array([0, 0, 1, -1, 1, 1]), 6, bucket=True).shape == (2, 4)


def test_position_interpolation_matches_transformers():
  import torch
  from transformers import vision_utils as vu
  grid = torch.as_tensor(GRIDS)
  index, weight = position_interpolation(GRIDS, spatial_merge_size=2, num_grid_per_side=6)
  theirs_index, theirs_weight = vu.get_vision_interpolation_indices_and_weights(
      grid, num_grid_per_side=6, mode='bilinear', align_corners=True, spatial_merge_size=2)
  np.testing.assert_array_equal(index, theirs_index.numpy())
  np.testing.assert_allclose(weight, theirs_weight.numpy(), rtol=0, atol=1e-7)
  with pytest.raises(ValueError, match='smaller than'):
    patch_layout(GRIDS, spatial_merge_size=2, num_patches=10)
