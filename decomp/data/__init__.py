"""Data for decomp: records, the procedural playground, MRB-style JSONL, tokenizer.

Data never imports models (the reranker reads these records by attribute).
"""

from decomp.data.mrb import LoadStats, load_image, load_jsonl, read_jsonl, write_jsonl
from decomp.data.playground import Playground, PlaygroundConfig, render_examples_png
from decomp.data.tokenizer import LABEL_WORDS, SPECIAL_TOKENS, build_tokenizer
from decomp.data.types import TASK_MODALITY, TASKS, Group, Item

__all__ = [
    "Group", "Item", "LABEL_WORDS", "LoadStats", "Playground", "PlaygroundConfig",
    "SPECIAL_TOKENS", "TASKS", "TASK_MODALITY", "build_tokenizer", "load_image",
    "load_jsonl", "read_jsonl", "render_examples_png", "write_jsonl",
]
