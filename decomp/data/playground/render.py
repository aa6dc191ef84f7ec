"""Vectorised numpy rendering of scenes into small RGB images (thousands per second).

Each scene is drawn as ``count`` copies of one object on a flat background. Variation between two
renders of the same scene (what makes I->I non-trivial) comes from per-render jitter of the
position, size and colour plus pixel noise, all drawn from the caller's generator.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from decomp.data.playground import world

# Object centre of each position, as fractions of the image side (x, y).
_POSITION_XY = np.array(
    [(0.3, 0.3), (0.7, 0.3), (0.3, 0.7), (0.7, 0.7), (0.5, 0.5), (0.5, 0.27), (0.5, 0.73),
     (0.27, 0.5), (0.73, 0.5)], dtype=np.float32)
_SIZE_RADIUS = np.array([0.11, 0.155, 0.2], dtype=np.float32)
# Offsets of the copies, in units of one copy's radius, for count 1, 2, 3 (padded to 3 slots).
_COPY_OFFSETS = np.array(
    [[(0.0, 0.0), (0.0, 0.0), (0.0, 0.0)],
     [(-1.3, 0.0), (1.3, 0.0), (0.0, 0.0)],
     [(-1.4, 0.8), (1.4, 0.8), (0.0, -1.4)]], dtype=np.float32)
_COPY_SCALE = np.array([1.0, 0.8, 0.7], dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class RenderStyle:
  """How images look; the jitter and noise fields are difficulty knobs."""

  image_size: int = 32
  background: tuple[int, int, int] = (28, 28, 32)
  position_jitter: float = 0.03  # std of the object centre, as a fraction of the side
  size_jitter: float = 0.08  # std of the relative radius change
  colour_jitter: float = 12.0  # std of a per-render RGB shift (0..255 units)
  noise: float = 6.0  # std of per-pixel Gaussian noise (0..255 units)


def _shape_mask(shape: int, u, v):
  """Inside-mask of shape id ``shape`` at unit coordinates ``u, v`` (any equal shapes)."""
  au, av = np.abs(u), np.abs(v)
  if shape == 0:  # circle
    return u * u + v * v <= 1.0
  if shape == 1:  # square
    return np.maximum(au, av) <= 0.85
  if shape == 2:  # triangle, apex up
    return (v <= 0.75) & (v >= -0.95) & (au <= (v + 0.95) * 0.58)
  if shape == 3:  # diamond
    return au + av <= 1.0
  if shape == 4:  # cross
    return ((au <= 0.32) & (av <= 1.0)) | ((av <= 0.32) & (au <= 1.0))
  if shape == 5:  # ring
    radius2 = u * u + v * v
    return (radius2 <= 1.0) & (radius2 >= 0.3)
  if shape == 6:  # hexagon
    return np.maximum(au * 0.866 + av * 0.5, av) <= 0.9
  if shape == 7:  # bar
    return (au <= 1.0) & (av <= 0.42)
  raise ValueError(f"unknown shape id {shape}")


def _shape_masks(shape, u, v):
  """Inside-masks for shape ids ``[N]`` at unit coordinates ``u, v [N, K, S, S]``."""
  out = np.zeros(u.shape, bool)
  for i in np.unique(shape):
    rows = shape == i
    out[rows] = _shape_mask(int(i), u[rows], v[rows])
  return out


def render_scenes(scenes: np.ndarray, rng: np.random.Generator,
                  style: RenderStyle = RenderStyle(), image_size: int | None = None) -> np.ndarray:
  """Renders scenes ``[N, 6]`` (attribute value indices) into ``[N, S, S, 3]`` uint8 images."""
  scenes = np.asarray(scenes, dtype=np.int32).reshape(-1, len(world.ATTRIBUTES))
  n = scenes.shape[0]
  size = image_size or style.image_size
  shape, colour, size_id, position, count_id, texture = scenes.T
  copies = count_id + 1  # COUNTS are 1, 2, 3
  scale = _COPY_SCALE[count_id] * _SIZE_RADIUS[size_id]
  scale = scale * np.clip(1.0 + style.size_jitter * rng.standard_normal(n), 0.7, 1.3)
  centre = _POSITION_XY[position] + style.position_jitter * rng.standard_normal((n, 2))
  centres = centre[:, None, :] + _COPY_OFFSETS[count_id] * scale[:, None, None]  # [N, 3, 2]
  valid = np.arange(3)[None, :] < copies[:, None]  # [N, 3]

  grid = (np.arange(size, dtype=np.float32) + 0.5) / size
  x = grid[None, None, None, :]
  y = grid[None, None, :, None]
  r = scale[:, None, None, None]
  u = (x - centres[:, :, 0, None, None]) / r
  v = (y - centres[:, :, 1, None, None]) / r
  u, v = np.broadcast_arrays(u, v)
  inside = _shape_masks(shape, u, v) & valid[:, :, None, None]  # [N, 3, S, S]
  # Outlined objects keep a one-pixel rim: the pixels with a 4-neighbour outside the shape.
  outlined = texture == world.TEXTURES.index("outlined")
  if outlined.any():
    m = inside[outlined]
    padded = np.pad(m, [(0, 0), (0, 0), (1, 1), (1, 1)])
    interior = (padded[..., :-2, 1:-1] & padded[..., 2:, 1:-1] & padded[..., 1:-1, :-2]
                & padded[..., 1:-1, 2:])
    inside[outlined] = m & ~interior
  mask = inside.any(axis=1)  # [N, S, S]

  rgb = world.COLOUR_RGB[colour] + style.colour_jitter * rng.standard_normal((n, 3))
  pix = np.arange(size)
  stripes = ((pix[None, :] + pix[:, None]) // 2) % 2 == 0  # diagonal stripes, period 4 px
  checks = ((pix[None, :] // 2) + (pix[:, None] // 2)) % 2 == 0  # 2 px checkerboard
  striped = (texture == world.TEXTURES.index("striped"))[:, None, None]
  checkered = (texture == world.TEXTURES.index("checkered"))[:, None, None]
  pattern = np.where(striped, stripes[None], np.where(checkered, checks[None], True))
  shade = np.where(pattern, 1.0, 0.35)[..., None]  # [N, S, S, 1]
  fill = rgb[:, None, None, :] * shade
  background = np.asarray(style.background, np.float32)
  image = np.where(mask[..., None], fill, background)
  if style.noise > 0:
    image = image + style.noise * rng.standard_normal(image.shape, dtype=np.float32)
  return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render_page(panels: np.ndarray, rng: np.random.Generator, style: RenderStyle = RenderStyle(),
                grid: int = 2) -> np.ndarray:
  """A "visual document": ``grid x grid`` scenes ``[grid*grid, 6]`` tiled into one image.

  The page has the configured image size; each panel is a smaller render separated by a light
  frame, so the page reads like a poster or a slide with several pictures.
  """
  size = style.image_size
  panel = size // grid
  tiles = render_scenes(panels, rng, style, image_size=panel)
  page = np.full((size, size, 3), 200, np.uint8)
  for i, tile in enumerate(tiles):
    row, col = divmod(i, grid)
    page[row * panel:(row + 1) * panel, col * panel:(col + 1) * panel] = tile
  page[::panel, :] = 200
  page[:, ::panel] = 200
  return page
