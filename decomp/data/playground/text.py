"""Descriptions, edits and instructions: templates and synonyms over a small closed vocabulary.

Text matching in the playground is never string equality: a scene can be described with several
templates (``paraphrase_rate``) and each value with several synonyms (``synonym_rate``). Every
word the playground can produce is listed by :func:`vocabulary`, which the tokenizer is built
from.
"""

from __future__ import annotations

import re

import numpy as np

from decomp.data.playground import world

# Synonyms per value; the first is the canonical word. Shapes carry (singular, plural).
SHAPE_WORDS = {
    "circle": [("circle", "circles"), ("disc", "discs"), ("round blob", "round blobs")],
    "square": [("square", "squares"), ("box", "boxes"), ("block", "blocks")],
    "triangle": [("triangle", "triangles"), ("wedge", "wedges"), ("pyramid", "pyramids")],
    "diamond": [("diamond", "diamonds"), ("rhombus", "rhombuses"), ("lozenge", "lozenges")],
    "cross": [("cross", "crosses"), ("plus sign", "plus signs"), ("plus", "pluses")],
    "ring": [("ring", "rings"), ("hoop", "hoops"), ("donut", "donuts")],
    "hexagon": [("hexagon", "hexagons"), ("hex", "hexes"), ("honeycomb cell", "honeycomb cells")],
    "bar": [("bar", "bars"), ("rectangle", "rectangles"), ("strip", "strips")],
}
COLOUR_WORDS = {
    "red": ["red", "crimson", "scarlet"],
    "green": ["green", "emerald", "lime"],
    "blue": ["blue", "azure", "cobalt"],
    "yellow": ["yellow", "golden", "lemon"],
    "purple": ["purple", "violet", "lilac"],
    "orange": ["orange", "tangerine", "amber"],
    "cyan": ["cyan", "turquoise", "teal"],
    "pink": ["pink", "rose", "salmon"],
    "white": ["white", "ivory", "snowy"],
    "brown": ["brown", "chocolate", "tan"],
}
SIZE_WORDS = {
    "small": ["small", "tiny", "little"],
    "medium": ["medium", "moderate", "average"],
    "large": ["large", "big", "huge"],
}
POSITION_WORDS = {
    "top left": ["in the top left", "at the upper left", "in the top left corner"],
    "top right": ["in the top right", "at the upper right", "in the top right corner"],
    "bottom left": ["in the bottom left", "at the lower left", "in the bottom left corner"],
    "bottom right": ["in the bottom right", "at the lower right", "in the bottom right corner"],
    "centre": ["in the centre", "in the middle", "at the center"],
    "top": ["at the top", "near the top edge", "in the upper middle"],
    "bottom": ["at the bottom", "near the bottom edge", "in the lower middle"],
    "left": ["on the left", "near the left edge", "at the left side"],
    "right": ["on the right", "near the right edge", "at the right side"],
}
COUNT_WORDS = {1: ["a", "one", "a single"], 2: ["two", "a pair of", "2"], 3: ["three", "a trio of",
                                                                               "3"]}
TEXTURE_WORDS = {
    "solid": ["solid", "filled", "plain"],
    "striped": ["striped", "stripy", "lined"],
    "outlined": ["outlined", "hollow", "empty"],
    "checkered": ["checkered", "chequered", "checked"],
}

# Description templates; slots: count, size, colour, texture, shape, position, be (is / are).
TEMPLATES = (
    "{count} {size} {colour} {texture} {shape} {position}",
    "{position} there {be} {count} {size} {texture} {shape} coloured {colour}",
    "{count} {shape} , {size} , {colour} and {texture} , {position}",
    "an image showing {count} {texture} {colour} {shape} of {size} size {position}",
    "{count} {colour} {shape} {position} , {texture} and {size}",
)

# Edits for the fused IT->IT task: the query image plus one of these describes the target.
EDIT_TEMPLATES = {
    "shape": ("the same but as {shape}", "turn {it} into {shape}"),
    "colour": ("the same but {colour}", "make {it} {colour}", "now coloured {colour}"),
    "size": ("the same but {size}", "make {it} {size}", "now {size}"),
    "position": ("the same but {position}", "move {it} so {it_is} {position}"),
    "count": ("the same but {count} {shape}", "now {count} {shape}"),
    "texture": ("the same but {texture}", "make {it} {texture}"),
}

INSTRUCTIONS = {
    "t2t": ("Find the description that matches the given description.",
            "Retrieve a caption that paraphrases the query."),
    "t2i": ("Find the image that matches the given description.",
            "Retrieve the picture described by the query."),
    "i2t": ("Find the caption that describes the given image.",
            "Retrieve a description of the query picture."),
    "i2i": ("Find the image that shows the same scene as the given image.",
            "Retrieve another picture of the same scene."),
    "it2it": ("Apply the edit to the given image and find the matching image with its caption.",
              "Retrieve the picture and caption that result from the requested change."),
    "t2vd": ("Find the page that contains the described picture.",
             "Retrieve the document whose panels include the query scene."),
}

# Words a reranker prompt commonly wraps around the playground's text (see decomp.models).
PROMPT_WORDS = (
    "Query : Document : Instruction : Candidate : Image : Text : Answer yes or no . "
    "Judge whether the document meets the requirements based on the query and the instruction "
    "provided . Note that the answer can only be \" yes \" or \" no \" . Is the candidate "
    "relevant to the query ? Does it match ? You are a helpful assistant that ranks documents "
    "for a search engine given an image a text a question please respond with one word")


def _pick(options, rng, rate):
  """The canonical option with probability ``1 - rate``, otherwise a random other one."""
  if len(options) == 1 or rng.random() >= rate:
    return options[0]
  return options[1 + int(rng.integers(len(options) - 1))]


def _article(words: str) -> str:
  """Fixes 'a' before a vowel ('a orange' -> 'an orange')."""
  return re.sub(r"\ba ([aeiou])", r"an \1", words)


def _value_words(scene, rng, synonym_rate):
  shape, colour, size, position, count, texture = (
      world.VALUES[a][int(i)] for a, i in zip(world.ATTRIBUTES, scene))
  singular, plural = _pick(SHAPE_WORDS[shape], rng, synonym_rate)
  return {
      "count": _pick(COUNT_WORDS[count], rng, synonym_rate),
      "size": _pick(SIZE_WORDS[size], rng, synonym_rate),
      "colour": _pick(COLOUR_WORDS[colour], rng, synonym_rate),
      "texture": _pick(TEXTURE_WORDS[texture], rng, synonym_rate),
      "shape": singular if count == 1 else plural,
      "position": _pick(POSITION_WORDS[position], rng, synonym_rate),
      "be": "is" if count == 1 else "are",
      "it": "it" if count == 1 else "them",
      "it_is": "it is" if count == 1 else "they are",
  }


def describe(scene, rng: np.random.Generator, *, synonym_rate: float = 0.3,
             paraphrase_rate: float = 0.5) -> str:
  """A description of a scene ``[6]`` (<= ~16 words); varied by the two rates."""
  words = _value_words(scene, rng, synonym_rate)
  template = _pick(TEMPLATES, rng, paraphrase_rate)
  return _article(template.format(**words))


def describe_edit(target, changed: str, rng: np.random.Generator, *,
                  synonym_rate: float = 0.3) -> str:
  """The edit text that turns a scene into ``target [6]`` by changing attribute ``changed``."""
  words = _value_words(target, rng, synonym_rate)
  if changed == "shape":
    words["shape"] = _article(("a " if words["be"] == "is" else "") + words["shape"])
  template = EDIT_TEMPLATES[changed][int(rng.integers(len(EDIT_TEMPLATES[changed])))]
  return _article(template.format(**words))


def instruction(task: str, rng: np.random.Generator | None = None) -> str:
  """The task's canonical instruction, or a random phrasing when ``rng`` is given."""
  options = INSTRUCTIONS[task]
  return options[0] if rng is None else options[int(rng.integers(len(options)))]


_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
  """Lower-cased words and single punctuation marks, as the word-level tokenizer splits text."""
  return _WORD.findall(text.lower())


def vocabulary() -> list[str]:
  """Every word the playground can say (descriptions, edits, instructions) plus prompt words."""
  texts = list(TEMPLATES) + [t for ts in EDIT_TEMPLATES.values() for t in ts]
  texts += [t for ts in INSTRUCTIONS.values() for t in ts]
  texts += [w for ws in COLOUR_WORDS.values() for w in ws]
  texts += [w for ws in SIZE_WORDS.values() for w in ws]
  texts += [w for ws in POSITION_WORDS.values() for w in ws]
  texts += [w for ws in COUNT_WORDS.values() for w in ws]
  texts += [w for ws in TEXTURE_WORDS.values() for w in ws]
  texts += [w for pairs in SHAPE_WORDS.values() for pair in pairs for w in pair]
  texts += ["an as is are it them they", PROMPT_WORDS]
  vocab = set()
  for text in texts:
    vocab.update(w for w in words(re.sub(r"\{\w+\}", " ", text)))
  vocab.update(str(i) for i in range(10))
  vocab.update(chr(c) for c in range(ord("a"), ord("z") + 1))
  vocab.update(list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"))
  return sorted(vocab)
