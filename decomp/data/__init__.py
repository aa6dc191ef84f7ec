"""Data for decomp: records, the procedural playground, MRB-style JSONL, batching, tokenizer.

Data never imports models (the reranker reads these records by attribute).
"""

from decomp.data.batching import GroupBatch, batches, pad_groups
from decomp.data.mrb import LoadStats, load_image, load_jsonl, read_jsonl, write_jsonl
from decomp.data.playground import Playground, PlaygroundConfig, render_examples_png
from decomp.data.tokenizer import LABEL_WORDS, SPECIAL_TOKENS, build_tokenizer
from decomp.data.types import TASK_MODALITY, TASKS, Group, Item

__all__ = [
    "Group", "GroupBatch", "Item", "LABEL_WORDS", "LoadStats", "Playground", "PlaygroundConfig",
    "SPECIAL_TOKENS", "TASKS", "TASK_MODALITY", "batches", "build_tokenizer", "load_image",
    "load_jsonl", "pad_groups", "read_jsonl", "render_examples_png", "write_jsonl",
]
