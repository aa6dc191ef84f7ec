"""The playground: determinism, split disjointness, hard negatives, task wiring, rendering."""

import dataclasses

import numpy as np
import pytest

from decomp.data import types
from decomp.data.playground import render, text, world
from decomp.data.playground.tasks import (Playground, PlaygroundConfig,
                                          hard_negative_differences)

SMALL = PlaygroundConfig(num_eval_queries=3)
TASKS = SMALL.tasks


def _same_group(a: types.Group, b: types.Group):
  assert (a.query_id, a.task, a.instruction, a.modality) == (b.query_id, b.task, b.instruction,
                                                              b.modality)
  assert (tuple(a.labels), tuple(a.doc_ids), tuple(a.doc_kinds)) == (
      tuple(b.labels), tuple(b.doc_ids), tuple(b.doc_kinds))
  for x, y in zip((a.query,) + tuple(a.docs), (b.query,) + tuple(b.docs)):
    assert x.text == y.text
    assert (x.image is None) == (y.image is None)
    if x.image is not None:
      np.testing.assert_array_equal(x.image, y.image)


def test_same_seed_same_data_and_random_access():
  a, b = Playground(SMALL), Playground(SMALL)
  forward = a.groups("train", 0, 12)
  # b computes them in reverse order, one at a time: random access must not depend on history.
  backward = [b.group("train", i) for i in reversed(range(12))][::-1]
  for x, y in zip(forward, backward):
    _same_group(x, y)
  for x, y in zip(a.groups("test"), b.groups("test")):
    _same_group(x, y)
  other = Playground(dataclasses.replace(SMALL, seed=1)).group("train", 0)
  assert other.query.text != forward[0].query.text or other.doc_ids != forward[0].doc_ids


def test_split_sizes_and_bounds():
  p = Playground(SMALL)
  assert p.num_groups("val") == p.num_groups("test") == 3 * len(TASKS)
  assert p.num_groups("train") is None
  assert len(p.groups("val")) == 3 * len(TASKS)
  with pytest.raises(IndexError, match="test group 18"):
    p.group("test", 18)
  assert p.group("train", 10**9).task == TASKS[10**9 % len(TASKS)]
  with pytest.raises(ValueError, match="unknown split"):
    p.group("dev", 0)


def _scene_set(a):
  return {tuple(int(v) for v in row) for row in np.asarray(a).reshape(-1, 6)}


def test_splits_are_disjoint_and_test_holds_out_combinations():
  p = Playground(SMALL)
  pools = {k: _scene_set(v) for k, v in p.pools.items()}
  assert not pools["train"] & pools["val"] and not pools["train"] & pools["test"]
  assert not pools["val"] & pools["test"]
  assert len(pools["train"]) + len(pools["val"]) + len(pools["test"]) == int(
      np.prod(SMALL.num_values))
  pairs = {k: {(s[0], s[1]) for s in v} for k, v in pools.items()}
  assert len(pairs["test"]) == SMALL.test_pairs and len(pairs["val"]) == SMALL.val_pairs
  assert not pairs["test"] & pairs["train"]
  # Held-out combinations: every test shape and colour is seen in training, never together.
  assert {s for s, _ in pairs["test"]} <= {s for s, _ in pairs["train"]}
  assert {c for _, c in pairs["test"]} <= {c for _, c in pairs["train"]}
  # Every scene any group of a split shows (queries, documents, page panels) is in its pool.
  for split in ("train", "val", "test"):
    for i in range(12 if split == "train" else p.num_groups(split)):
      plan = p.plan(split, i)
      shown = _scene_set(plan.target) | _scene_set(plan.doc_scenes)
      if plan.source is not None:
        shown |= _scene_set(plan.source)
      for page in plan.doc_panels or ():
        shown |= _scene_set(page)
      assert shown <= pools[split], (split, i)


@pytest.mark.parametrize("diffs", [1, 2, (1, 2)])
def test_hard_negatives_differ_in_the_stated_number_of_attributes(diffs):
  config = dataclasses.replace(SMALL, hard_attribute_diffs=diffs, negatives=10, hard_ratio=0.5)
  allowed = {diffs} if isinstance(diffs, int) else set(diffs)
  p = Playground(config)
  for i in range(18):
    plan = p.plan("train", i)
    kinds = list(plan.doc_kinds)
    assert kinds.count("positive") == 1 and kinds.count("hard") == 5 and kinds.count("random") == 5
    d = hard_negative_differences(plan)
    assert d and set(d) <= allowed, (plan.task, d)
    for scene, kind, label in zip(plan.doc_scenes, plan.doc_kinds, plan.labels):
      same = bool(np.all(scene == plan.target))
      assert label == (kind == "positive")
      if plan.task != "t2vd":  # a page's doc scene is its key panel, checked separately
        assert same == (kind == "positive")


def test_list_size_ratio_and_several_positives():
  config = dataclasses.replace(SMALL, negatives=31, hard_ratio=0.25, positives=2)
  g = Playground(config).group("train", 1)
  assert len(g.docs) == 33 and sum(g.labels) == 2
  assert list(g.doc_kinds).count("hard") == 8  # 7.75 -> 8
  odd = Playground(dataclasses.replace(SMALL, negatives=9, hard_ratio=0.5)).plan("train", 0)
  assert list(odd.doc_kinds).count("hard") == 5  # 4.5 rounds half up
  assert g.task == "t2i"
  pos = [d.image for d, l in zip(g.docs, g.labels) if l]
  assert not np.array_equal(pos[0], pos[1])  # two renders of the same scene
  unshuffled = Playground(dataclasses.replace(config, shuffle_docs=False)).group("train", 1)
  assert list(unshuffled.labels[:2]) == [1, 1]
  assert list(g.labels[:2]) != [1, 1] or list(g.labels) != list(unshuffled.labels)


def test_tasks_have_their_modalities_and_instructions():
  p = Playground(SMALL)
  expected = {"t2t": ("T", "T"), "t2i": ("T", "I"), "i2t": ("I", "T"), "i2i": ("I", "I"),
              "it2it": ("IT", "IT"), "t2vd": ("T", "I")}
  for i, task in enumerate(TASKS):
    g = p.group("val", i)
    assert g.task == task and g.modality == types.TASK_MODALITY[task]
    assert (g.query.modality, g.docs[0].modality) == expected[task]
    assert g.instruction == text.INSTRUCTIONS[task][0]
    for item in (g.query,) + tuple(g.docs):
      if item.image is not None:
        assert item.image.shape == (32, 32, 3) and item.image.dtype == np.uint8
      if item.text is not None:
        assert len(item.text.split()) <= 24


def _canonical(scene):
  v = {a: world.VALUES[a][int(i)] for a, i in zip(world.ATTRIBUTES, scene)}
  count = {1: "a", 2: "two", 3: "three"}[v["count"]]
  singular, plural = text.SHAPE_WORDS[v["shape"]][0]
  shape = singular if v["count"] == 1 else plural
  words = f"{count} {v['size']} {v['colour']} {v['texture']} {shape} " + \
      text.POSITION_WORDS[v["position"]][0]
  return words.replace("a orange", "an orange")


def test_text_documents_describe_their_scenes():
  # With synonyms and paraphrases off every description is the canonical one, built here
  # independently from the plan's scenes.
  config = dataclasses.replace(SMALL, synonym_rate=0.0, paraphrase_rate=0.0)
  p = Playground(config)
  for i in range(12):
    plan, g = p.plan("train", i), p.group("train", i)
    if g.task in ("t2t", "t2i", "t2vd"):
      assert g.query.text == _canonical(plan.target)
    if g.task in ("t2t", "i2t", "it2it"):
      assert [d.text for d in g.docs] == [_canonical(s) for s in plan.doc_scenes]
  # With them on, the positive of t2t is usually a different string from the query.
  p = Playground(dataclasses.replace(SMALL, synonym_rate=0.6, paraphrase_rate=0.8))
  t2t = [p.group("train", 6 * i) for i in range(10)]
  differ = sum(g.query.text != g.docs[list(g.labels).index(1)].text for g in t2t)
  assert differ >= 8


def test_it2it_edits_one_attribute_and_keeps_the_source_as_hard_negative():
  p = Playground(SMALL)
  for i in range(4, 60, len(TASKS)):
    plan = p.plan("train", i)
    assert plan.task == "it2it"
    changed = np.flatnonzero(plan.source != plan.target)
    assert len(changed) == 1 and world.ATTRIBUTES[changed[0]] == plan.edited
    hard = [s for s, k in zip(plan.doc_scenes, plan.doc_kinds) if k == "hard"]
    assert any(np.array_equal(s, plan.source) for s in hard)


def test_t2vd_pages_hold_their_scene():
  p = Playground(SMALL)
  for i in range(5, 60, len(TASKS)):
    plan = p.plan("train", i)
    for page, scene, kind in zip(plan.doc_panels, plan.doc_scenes, plan.doc_kinds):
      has_target = any(np.array_equal(panel, plan.target) for panel in page)
      assert has_target == (kind == "positive")
      assert any(np.array_equal(panel, scene) for panel in page)


def test_renderer_draws_the_stated_attributes():
  style = render.RenderStyle(position_jitter=0, size_jitter=0, colour_jitter=0, noise=0)
  rng = np.random.default_rng(0)
  shape = {s: i for i, s in enumerate(world.SHAPES)}
  red, blue = world.COLOURS.index("red"), world.COLOURS.index("blue")
  # shape, colour, size (large), position (centre), count (1), texture (solid)
  big = dataclasses.replace(style, image_size=64)
  circle = render.render_scenes(np.array([[shape["circle"], red, 2, 4, 0, 0]]), rng, big)[0]
  square = render.render_scenes(np.array([[shape["square"], blue, 2, 4, 0, 0]]), rng, big)[0]
  np.testing.assert_array_equal(circle[32, 32], world.COLOUR_RGB[red])
  np.testing.assert_array_equal(circle[0, 0], style.background)
  # Large: r = 0.2 * 64 = 12.8 px. Pixel (42, 42) is 10.5 px off-centre on both axes: inside
  # the square (half side 0.85 r = 10.9 px), outside the circle (distance 14.8 px).
  np.testing.assert_array_equal(square[42, 42], world.COLOUR_RGB[blue])
  np.testing.assert_array_equal(circle[42, 42], style.background)
  # Top-left position puts the object in the top-left quadrant.
  top_left = render.render_scenes(np.array([[0, red, 1, 0, 0, 0]]), rng, style)[0]
  fg = np.argwhere(np.any(top_left != style.background, axis=-1))
  assert fg.max() < 16
  # Three copies cover more pixels than one; outlined covers fewer than solid.
  one, three, outlined = render.render_scenes(
      np.array([[0, red, 1, 4, 0, 0], [0, red, 1, 4, 2, 0], [1, red, 2, 4, 0, 2]]), rng, style)
  area = lambda im: int(np.any(im != style.background, axis=-1).sum())
  assert _components(one, style) == 1 and _components(three, style) == 3
  # Copies stay separate blobs for every shape and size (count is readable from the image).
  # (An outlined ring has two rims, so it is left out.)
  scenes = np.array([[s, red, z, p, c, t] for s in range(8) for z in range(3) for p in (0, 4)
                     for c in range(3) for t in range(4) if not (s == 5 and t == 2)])
  for scene, im in zip(scenes, render.render_scenes(scenes, rng, style)):
    assert _components(im, style) == scene[4] + 1, scene
  solid = render.render_scenes(np.array([[1, red, 2, 4, 0, 0]]), rng, style)[0]
  assert area(outlined) < 0.7 * area(solid)


def _components(image, style):
  """Number of 8-connected foreground blobs (a tiny flood fill, independent of the renderer)."""
  fg = np.any(image != style.background, axis=-1)
  seen = np.zeros_like(fg)
  blobs = 0
  for start in zip(*np.nonzero(fg)):
    if seen[start]:
      continue
    blobs += 1
    stack = [start]
    while stack:
      y, x = stack.pop()
      if not (0 <= y < fg.shape[0] and 0 <= x < fg.shape[1]) or seen[y, x] or not fg[y, x]:
        continue
      seen[y, x] = True
      stack += [(y + dy, x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
  return blobs


def test_bad_configs_are_named():
  with pytest.raises(ValueError, match="negatives"):
    PlaygroundConfig(negatives=0)
  with pytest.raises(ValueError, match="unknown task"):
    PlaygroundConfig(tasks=("t2x",))
  with pytest.raises(ValueError, match="shape"):
    PlaygroundConfig(num_values=(9, 6, 3, 5, 2, 3))
  with pytest.raises(ValueError, match="hold out"):
    Playground(PlaygroundConfig(num_values=(2, 2, 3, 5, 2, 3), test_pairs=3))


def test_render_examples_png(tmp_path):
  from decomp.data.playground import render_examples_png
  path = render_examples_png(str(tmp_path / "p.png"))
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_too_few_hard_candidates_are_filled_with_random_negatives():
  config = PlaygroundConfig(num_values=(3, 3, 1, 3, 1, 1), val_pairs=2, test_pairs=2,
                            negatives=5, hard_ratio=1.0, hard_attribute_diffs=1,
                            num_eval_queries=2)
  p = Playground(config)
  pool = p.pools["val"]
  for i in range(p.num_groups("val")):
    plan = p.plan("val", i)
    available = int(np.sum(np.sum(pool != plan.target, axis=1) == 1))
    kinds = list(plan.doc_kinds)
    assert kinds.count("hard") == min(5, available) < 5
    assert kinds.count("random") == 5 - kinds.count("hard")
    assert set(hard_negative_differences(plan)) <= {1}


def _plans(count=64, **kwargs):
  from decomp.data.playground import Playground as World
  world_ = World(PlaygroundConfig(tasks=("t2t",), negatives=7, positives=kwargs.pop("positives", 1),
                                  **kwargs))
  return [world_.plan("test", i) for i in range(count)]


def test_pairwise_accuracy_reads_what_a_model_tells_apart():
  """A scorer that sees only colour is perfect on colour-only negatives and at chance (ties) on
  every other single attribute; inverted scores are always wrong, constant ones at 0.5."""
  from decomp.data.playground import analysis
  plans = _plans(positives=2)
  colour = world.ATTRIBUTES.index("colour")
  sees_colour = np.array([[-float(scene[colour] != p.target[colour]) for scene in p.doc_scenes]
                          for p in plans], dtype=float)
  result = analysis.pairwise_accuracy(sees_colour, plans)
  assert result["colour"]["accuracy"] == 1.0
  for name in ("shape", "size", "position", "count", "texture"):
    if name in result:
      assert result[name]["accuracy"] == 0.5, name
  assert 0.5 < result["random"]["accuracy"] < 1.0
  # Every (positive, negative) pair is counted exactly once.
  assert sum(r["pairs"] for r in result.values()) == len(plans) * 2 * 7
  labels = np.array([p.labels for p in plans], dtype=float)
  assert all(r["accuracy"] == 0.0 for r in analysis.pairwise_accuracy(-labels, plans).values())
  assert all(r["accuracy"] == 0.5
             for r in analysis.pairwise_accuracy(np.zeros_like(labels), plans).values())
  with pytest.raises(ValueError, match="expected \\[64 lists"):
    analysis.pairwise_accuracy(labels[:10], plans)
  # Labels evaluated with the scores must be the plans' (same lists, same document order).
  assert analysis.pairwise_accuracy(sees_colour, plans, labels)["colour"]["accuracy"] == 1.0
  with pytest.raises(ValueError, match="are not the plan's"):
    analysis.pairwise_accuracy(sees_colour, plans, labels[::-1])


def test_negative_categories_follow_the_plan():
  from decomp.data.playground import analysis
  for plan in _plans(16, hard_attribute_diffs=(1,)):
    for doc, (label, kind) in enumerate(zip(plan.labels, plan.doc_kinds)):
      if label:
        continue
      category = analysis.negative_category(plan, doc)
      if kind == "random":
        assert category == analysis.RANDOM
      else:  # one attribute differs: the category names it
        assert category in world.ATTRIBUTES
        changed = world.ATTRIBUTES.index(category)
        assert plan.doc_scenes[doc][changed] != plan.target[changed]


def test_oracle_teacher_scores_minus_the_differing_attributes():
  """``oracle_teacher``: a teacher for MarginMSE / kd that scores each document by minus the
  number of attributes its scene differs in from the target (0 for a positive); off by default."""
  assert Playground(SMALL).group("train", 0).teacher_scores is None
  p = Playground(dataclasses.replace(SMALL, oracle_teacher=True, tasks=("t2t",)))
  for i in range(4):
    plan, group = p.plan("train", i), p.group("train", i)
    assert group.teacher_scores == tuple(-float(np.sum(s != plan.target))
                                         for s in plan.doc_scenes)
    for score, kind in zip(group.teacher_scores, group.doc_kinds):
      assert (score == 0) == (kind == "positive")
      if kind == "hard":
        assert score in (-1.0, -2.0)  # hard_attribute_diffs (1, 2)
