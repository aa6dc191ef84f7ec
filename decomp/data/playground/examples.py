"""A picture of the playground for the README: one row per task, query then candidates."""

from __future__ import annotations

import textwrap

import numpy as np

from decomp.data.playground.tasks import Playground, PlaygroundConfig


def render_examples_png(path: str, *, config: PlaygroundConfig | None = None, split="train",
                        docs_per_row: int = 4, scale: float = 1.9) -> str:
  """Draws, for each task, a query and its positive, hard and random negatives, with their text.

  Uses matplotlib (imported here only). Returns ``path``.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  config = config or PlaygroundConfig(negatives=3, hard_ratio=0.67, shuffle_docs=False)
  playground = Playground(config)
  rows = [playground.group(split, i) for i in range(len(config.tasks))]
  cols = 1 + docs_per_row
  fig, axes = plt.subplots(len(rows), cols, figsize=(cols * scale, len(rows) * scale * 1.4))
  axes = np.atleast_2d(axes)
  for r, group in enumerate(rows):
    items = [("query", group.query)] + [
        (kind if label == 0 else "positive", doc)
        for kind, label, doc in zip(group.doc_kinds, group.labels, group.docs)][:docs_per_row]
    for c, ax in enumerate(axes[r]):
      ax.set_xticks([])
      ax.set_yticks([])
      if c >= len(items):
        ax.axis("off")
        continue
      title, item = items[c]
      if item.image is not None:
        ax.imshow(item.image, interpolation="nearest")
      else:
        ax.set_facecolor("#f4f4f4")
      caption = "\n".join(textwrap.wrap(item.text or "", 26))
      if item.image is None:
        ax.text(0.5, 0.5, caption, ha="center", va="center", fontsize=7, wrap=True,
                transform=ax.transAxes)
      else:
        ax.set_xlabel(caption, fontsize=6.5)
      color = {"query": "black", "positive": "green", "hard": "darkorange"}.get(title, "firebrick")
      label = f"{group.task}: query" if title == "query" else title
      ax.set_title(label, fontsize=8, color=color)
  fig.suptitle("decomp playground: query, positive, hard and random negatives per task",
               fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
