"""The playground's world: scenes as tuples of attribute values, and the train/val/test split.

A scene is one small picture: ``count`` copies of one object with a ``shape``, ``colour``,
``size``, ``texture``, placed at a ``position``. It is stored as an int vector ``[6]`` of value
indices in the order of :data:`ATTRIBUTES`; ``num_values[a]`` says how many values attribute
``a`` uses (a difficulty knob: more values -> finer distinctions).

Split rule (disjoint by construction): every (shape, colour) pair belongs to exactly one split,
so no scene is shared. Validation and test pairs are combinations never seen in training, while
every shape and every colour on its own is still seen in training: val/test measure
compositional generalisation. All other attributes vary freely inside each split, so hard
negatives (a scene with one or two attributes changed) exist inside every split.
"""

from __future__ import annotations

import numpy as np

ATTRIBUTES = ("shape", "colour", "size", "position", "count", "texture")

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring", "hexagon", "bar")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "pink", "white", "brown")
COLOUR_RGB = np.array(
    [(220, 40, 40), (40, 180, 60), (50, 90, 235), (235, 215, 40), (150, 60, 205),
     (245, 140, 30), (40, 210, 220), (245, 120, 190), (240, 240, 240), (140, 90, 40)],
    dtype=np.float32)
SIZES = ("small", "medium", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "centre", "top", "bottom",
             "left", "right")
COUNTS = (1, 2, 3)
TEXTURES = ("solid", "striped", "outlined", "checkered")

VALUES = {
    "shape": SHAPES,
    "colour": COLOURS,
    "size": SIZES,
    "position": POSITIONS,
    "count": COUNTS,
    "texture": TEXTURES,
}
MAX_VALUES = tuple(len(VALUES[a]) for a in ATTRIBUTES)
SPLITS = ("train", "val", "test")


def check_num_values(num_values) -> tuple[int, ...]:
  num_values = tuple(int(v) for v in num_values)
  if len(num_values) != len(ATTRIBUTES):
    raise ValueError(f"num_values needs {len(ATTRIBUTES)} entries {ATTRIBUTES}, got {num_values}")
  for name, n, most in zip(ATTRIBUTES, num_values, MAX_VALUES):
    if not 1 <= n <= most:
      raise ValueError(f"num_values[{name!r}] = {n}: must be in 1..{most}")
  return num_values


def all_scenes(num_values) -> np.ndarray:
  """Every scene of the world, ``[num_scenes, 6]`` int32, in lexicographic order."""
  grids = np.meshgrid(*[np.arange(n) for n in num_values], indexing="ij")
  return np.stack([g.reshape(-1) for g in grids], axis=-1).astype(np.int32)


def split_pairs(num_values, *, val_pairs: int, test_pairs: int, seed: int) -> dict[str, set]:
  """Assigns each (shape, colour) pair to a split; every shape and colour keeps a train pair."""
  n_shape, n_colour = num_values[0], num_values[1]
  pairs = [(s, c) for s in range(n_shape) for c in range(n_colour)]
  rng = np.random.default_rng([seed, 7919])
  order = rng.permutation(len(pairs))
  train = set(pairs)
  chosen = {"val": set(), "test": set()}
  wanted = {"val": val_pairs, "test": test_pairs}
  for split in ("test", "val"):
    for i in order:
      if len(chosen[split]) == wanted[split]:
        break
      s, c = pairs[i]
      if (s, c) not in train:
        continue
      shape_left = sum(1 for p in train if p[0] == s)
      colour_left = sum(1 for p in train if p[1] == c)
      if shape_left > 1 and colour_left > 1:
        train.discard((s, c))
        chosen[split].add((s, c))
    if len(chosen[split]) < wanted[split]:
      raise ValueError(
          f"cannot hold out {wanted[split]} (shape, colour) pairs for {split!r} with "
          f"{n_shape} shapes x {n_colour} colours while keeping every shape and colour in train; "
          "use fewer val_pairs/test_pairs or more shapes/colours")
  return {"train": train, **chosen}


def split_pools(num_values, *, val_pairs: int, test_pairs: int, seed: int) -> dict[str, np.ndarray]:
  """The scenes of each split, ``{split: [n_split, 6] int32}``; disjoint and covering the world."""
  scenes = all_scenes(num_values)
  pairs = split_pairs(num_values, val_pairs=val_pairs, test_pairs=test_pairs, seed=seed)
  pools = {}
  for split in SPLITS:
    member = np.zeros(len(scenes), bool)
    for s, c in pairs[split]:
      member |= (scenes[:, 0] == s) & (scenes[:, 1] == c)
    pools[split] = scenes[member]
  return pools


def attribute_differences(scenes: np.ndarray, scene: np.ndarray) -> np.ndarray:
  """How many attributes each of ``scenes [N, 6]`` differs in from ``scene [6]`` -> ``[N]``."""
  return np.sum(scenes != scene[None, :], axis=-1)
