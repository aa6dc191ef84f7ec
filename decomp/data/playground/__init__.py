"""A procedural multimodal retrieval world for reranking experiments (see tasks.py)."""

from decomp.data.playground.analysis import negative_category, pairwise_accuracy
from decomp.data.playground.examples import render_examples_png
from decomp.data.playground.render import RenderStyle, render_page, render_scenes
from decomp.data.playground.tasks import (GroupPlan, Playground, PlaygroundConfig,
                                          hard_negative_differences)
from decomp.data.playground.text import describe, describe_edit, vocabulary
from decomp.data.playground.world import ATTRIBUTES, VALUES, split_pools

__all__ = [
    "ATTRIBUTES", "GroupPlan", "Playground", "PlaygroundConfig", "RenderStyle", "VALUES",
    "describe", "describe_edit", "hard_negative_differences", "negative_category",
    "pairwise_accuracy", "render_examples_png",
    "render_page", "render_scenes", "split_pools", "vocabulary",
]
