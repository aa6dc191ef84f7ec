"""Task families and candidate lists: ``Playground(config).group(split, index) -> Group``.

Every group is a pure function of ``(config, split, index)``: its task, query scene, negatives,
wording and pixels all come from generators seeded with ``(seed, split, index)``, so training can
resume at any index and hosts can shard indices without talking to each other.

Tasks (query -> document), MRB grouping in parentheses:

* ``t2t``  description -> paraphrased description of the same scene (single)
* ``i2i``  image -> the same scene rendered again (other jitter and noise) (single)
* ``t2i``  description -> image (cross); ``i2t`` image -> caption (cross)
* ``t2vd`` description -> "visual document": a page of ``page_grid**2`` small panels, relevant
  if one panel shows the described scene (cross)
* ``it2it`` image + edit text ("the same but blue") -> image + caption of the edited scene;
  the unedited scene is always among the hard negatives when there is one (fused)

Negatives: ``negatives * hard_ratio`` rounded half up hard ones (scenes of the same split that differ
from the target scene in exactly ``d`` attributes, ``d`` in ``hard_attribute_diffs``) and the rest
random scenes of the split. If a split has too few hard candidates the shortfall is filled with
random negatives, which are labelled ``'random'`` in ``doc_kinds`` (never mislabelled).
"""

from __future__ import annotations

import dataclasses
import functools
import numpy as np

from decomp.data import types
from decomp.data.playground import render, text, world

_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


@dataclasses.dataclass(frozen=True)
class PlaygroundConfig:
  """Everything that defines a playground; the difficulty knobs are marked (knob)."""

  seed: int = 0
  tasks: tuple[str, ...] = ("t2t", "t2i", "i2t", "i2i", "it2it", "t2vd")
  # (knob) values used per attribute, in world.ATTRIBUTES order:
  # shape (<=8), colour (<=10), size (<=3), position (<=9), count (<=3), texture (<=4).
  num_values: tuple[int, ...] = (6, 6, 3, 5, 2, 3)
  val_pairs: int = 4  # (shape, colour) pairs only in validation
  test_pairs: int = 6  # (shape, colour) pairs only in test: the held-out combinations
  num_eval_queries: int = 64  # queries per task in val and in test (train is unbounded)
  negatives: int = 7  # (knob) negatives per query, 1..31 (list size = positives + negatives)
  hard_ratio: float = 0.5  # (knob) fraction of negatives that are hard (the paper: 1:1)
  hard_attribute_diffs: tuple[int, ...] = (1, 2)  # (knob) a hard negative differs in d of these
  positives: int = 1  # relevant documents per query (renders / captions of the target scene)
  synonym_rate: float = 0.1  # (knob) chance of a non-canonical synonym per value
  paraphrase_rate: float = 0.3  # (knob) chance of a non-canonical description template
  paraphrase_instructions: bool = False  # vary the instruction wording per query
  image_size: int = 32
  position_jitter: float = 0.03  # (knob) render-to-render variation, fraction of the side
  size_jitter: float = 0.08  # (knob)
  colour_jitter: float = 12.0  # (knob) 0..255 units
  noise: float = 6.0  # (knob) pixel noise std, 0..255 units
  page_grid: int = 2  # t2vd pages hold page_grid x page_grid panels
  shuffle_docs: bool = True  # else positives first; shuffled avoids rewarding tie order
  # Teacher scores for the distillation weights (kd, margin_mse): an oracle that scores each
  # document by minus the number of attributes its scene differs in from the query's target.
  oracle_teacher: bool = False

  def __post_init__(self):
    diffs = self.hard_attribute_diffs
    if isinstance(diffs, int):
      diffs = (diffs,)
    object.__setattr__(self, "hard_attribute_diffs", tuple(sorted(set(int(d) for d in diffs))))
    object.__setattr__(self, "tasks", tuple(self.tasks))
    object.__setattr__(self, "num_values", world.check_num_values(self.num_values))
    for task in self.tasks:
      if task not in types.TASK_MODALITY:
        raise ValueError(f"unknown task {task!r}; known: {sorted(types.TASK_MODALITY)}")
    if not self.tasks:
      raise ValueError("PlaygroundConfig.tasks is empty")
    if not 1 <= self.negatives <= 63:
      raise ValueError(f"negatives={self.negatives}: must be in 1..63")
    if not 0.0 <= self.hard_ratio <= 1.0:
      raise ValueError(f"hard_ratio={self.hard_ratio}: must be in [0, 1]")
    if not self.hard_attribute_diffs or not all(
        1 <= d <= len(world.ATTRIBUTES) for d in self.hard_attribute_diffs):
      raise ValueError(f"hard_attribute_diffs={diffs}: each must be in 1..{len(world.ATTRIBUTES)}")
    if self.positives < 1:
      raise ValueError(f"positives={self.positives}: must be >= 1")
    if self.image_size < 8 or self.image_size % self.page_grid:
      raise ValueError(f"image_size={self.image_size}: must be >= 8 and divisible by page_grid")

  @property
  def style(self) -> render.RenderStyle:
    return render.RenderStyle(image_size=self.image_size, position_jitter=self.position_jitter,
                              size_jitter=self.size_jitter, colour_jitter=self.colour_jitter,
                              noise=self.noise)

  @property
  def list_size(self) -> int:
    return self.positives + self.negatives


@dataclasses.dataclass(frozen=True)
class GroupPlan:
  """The scenes behind one group, before any wording or pixels (what tests and analyses read).

  ``doc_scenes[i]`` is the scene document ``i`` shows (for a t2vd page: the panel the page was
  built around; all panels are in ``doc_panels[i]``).
  """

  split: str
  index: int
  task: str
  target: np.ndarray  # [6] the scene the query asks for
  source: np.ndarray | None  # [6] it2it: the scene in the query image, one attribute off
  edited: str | None  # it2it: the attribute the edit changes
  doc_scenes: np.ndarray  # [n, 6]
  doc_panels: tuple[np.ndarray, ...] | None  # t2vd: [page_grid**2, 6] per document
  labels: tuple[int, ...]
  doc_kinds: tuple[str, ...]


class Playground:
  """Deterministic random access to reranking groups of the procedural world."""

  def __init__(self, config: PlaygroundConfig = PlaygroundConfig()):
    self.config = config
    self.pools = world.split_pools(config.num_values, val_pairs=config.val_pairs,
                                   test_pairs=config.test_pairs, seed=config.seed)
    for split, pool in self.pools.items():
      if len(pool) < config.negatives + 1:
        raise ValueError(f"split {split!r} has {len(pool)} scenes, fewer than negatives + 1")

  def num_groups(self, split: str) -> int | None:
    """Groups in a split: fixed for 'val' and 'test', None (unbounded) for 'train'."""
    self._check_split(split)
    if split == "train":
      return None
    return self.config.num_eval_queries * len(self.config.tasks)

  def _check_split(self, split):
    if split not in _SPLIT_CODE:
      raise ValueError(f"unknown split {split!r}; use one of {tuple(_SPLIT_CODE)}")

  def _rngs(self, split, index, stream):
    return np.random.default_rng([self.config.seed, _SPLIT_CODE[split], index, stream])

  def plan(self, split: str, index: int) -> GroupPlan:
    """The scenes of group ``index`` of ``split`` (pure function of config, split, index)."""
    self._check_split(split)
    index = int(index)
    size = self.num_groups(split)
    if index < 0 or (size is not None and index >= size):
      raise IndexError(f"{split} group {index} out of range (size {size})")
    cfg = self.config
    rng = self._rngs(split, index, 0)
    pool = self.pools[split]
    task = cfg.tasks[index % len(cfg.tasks)]
    target = pool[int(rng.integers(len(pool)))]
    diffs = world.attribute_differences(pool, target)

    source, edited, first_hard = None, None, []
    if task == "it2it":
      near = np.flatnonzero(diffs == 1)
      if len(near) == 0:
        raise ValueError(f"{split} group {index}: no scene one attribute away from the target "
                         "in this split; use more attribute values or fewer held-out pairs")
      pick = int(near[rng.integers(len(near))])
      source = pool[pick]
      edited = world.ATTRIBUTES[int(np.flatnonzero(source != target)[0])]
      if 1 in cfg.hard_attribute_diffs:
        first_hard = [pick]

    n_hard = int(np.floor(cfg.negatives * cfg.hard_ratio + 0.5))  # half up: 7 x 0.5 -> 4
    hard = list(first_hard[:n_hard])
    candidates = np.flatnonzero(np.isin(diffs, cfg.hard_attribute_diffs))
    candidates = candidates[~np.isin(candidates, hard)]
    take = min(n_hard - len(hard), len(candidates))
    hard += [int(i) for i in rng.choice(candidates, size=take, replace=False)]
    others = np.flatnonzero(diffs > 0)
    others = others[~np.isin(others, hard)]
    n_random = cfg.negatives - len(hard)
    random = [int(i) for i in rng.choice(others, size=n_random, replace=False)]

    doc_scenes = np.concatenate([np.repeat(target[None], cfg.positives, 0),
                                 pool[hard].reshape(-1, 6), pool[random].reshape(-1, 6)])
    labels = [1] * cfg.positives + [0] * cfg.negatives
    kinds = ["positive"] * cfg.positives + ["hard"] * len(hard) + ["random"] * len(random)
    order = rng.permutation(len(labels)) if cfg.shuffle_docs else np.arange(len(labels))
    doc_scenes = doc_scenes[order]
    labels = tuple(labels[i] for i in order)
    kinds = tuple(kinds[i] for i in order)

    panels = None
    if task == "t2vd":
      fillers = np.flatnonzero(diffs > 0)
      n_panels = cfg.page_grid ** 2
      panels = []
      for scene, kind in zip(doc_scenes, kinds):
        page = pool[rng.choice(fillers, size=n_panels, replace=False)]
        if kind != "random":  # random pages are all fillers; others hold their scene somewhere
          page[int(rng.integers(n_panels))] = scene
        else:
          scene[:] = page[0]
        panels.append(page)
      panels = tuple(panels)
    return GroupPlan(split=split, index=index, task=task, target=target, source=source,
                     edited=edited, doc_scenes=doc_scenes, doc_panels=panels, labels=labels,
                     doc_kinds=kinds)

  def group(self, split: str, index: int) -> types.Group:
    """Group ``index`` of ``split`` with its wording and pixels (pure function)."""
    cfg = self.config
    plan = self.plan(split, index)
    words = self._rngs(split, index, 1)
    pixels = self._rngs(split, index, 2)
    style = cfg.style
    task = plan.task
    say = functools.partial(text.describe, rng=words, synonym_rate=cfg.synonym_rate,
                            paraphrase_rate=cfg.paraphrase_rate)

    # One vectorised render for every image of the group, in a fixed order.
    image_scenes = []
    if task in ("i2t", "i2i"):
      image_scenes.append(plan.target)
    if task == "it2it":
      image_scenes.append(plan.source)
    if task in ("t2i", "i2i", "it2it"):
      image_scenes.extend(plan.doc_scenes)
    images = list(render.render_scenes(np.array(image_scenes), pixels, style)) if image_scenes else []

    if task in ("t2t", "t2i", "t2vd"):
      query = types.Item(text=say(plan.target))
    elif task in ("i2t", "i2i"):
      query = types.Item(image=images.pop(0))
    else:  # it2it
      edit = text.describe_edit(plan.target, plan.edited, words, synonym_rate=cfg.synonym_rate)
      query = types.Item(text=edit, image=images.pop(0))

    docs = []
    for i, scene in enumerate(plan.doc_scenes):
      if task in ("t2t", "i2t"):
        docs.append(types.Item(text=say(scene)))
      elif task in ("t2i", "i2i"):
        docs.append(types.Item(image=images[i]))
      elif task == "it2it":
        docs.append(types.Item(text=say(scene), image=images[i]))
      else:  # t2vd
        docs.append(types.Item(image=render.render_page(plan.doc_panels[i], pixels, style,
                                                        grid=cfg.page_grid)))
    query_id = f"{split}-{index}"
    instruction = text.instruction(task, words if cfg.paraphrase_instructions else None)
    return types.Group(
        query_id=query_id, task=task, instruction=instruction, query=query, docs=tuple(docs),
        labels=plan.labels, doc_ids=tuple(f"{query_id}-d{i}" for i in range(len(docs))),
        doc_kinds=plan.doc_kinds, modality=types.TASK_MODALITY[task],
        teacher_scores=tuple(-float(np.sum(scene != plan.target)) for scene in plan.doc_scenes)
        if cfg.oracle_teacher else None)

  def groups(self, split: str, start: int = 0, count: int | None = None) -> list[types.Group]:
    """Groups ``start .. start+count-1``; ``count=None`` means to the end of val/test."""
    if count is None:
      size = self.num_groups(split)
      if size is None:
        raise ValueError("train is unbounded: give groups('train', start, count) a count")
      count = size - start
    return [self.group(split, i) for i in range(start, start + count)]


def hard_negative_differences(plan: GroupPlan) -> list[int]:
  """How many attributes each hard negative differs in from the target (for checks)."""
  return [int(np.sum(scene != plan.target))
          for scene, kind in zip(plan.doc_scenes, plan.doc_kinds) if kind == "hard"]
