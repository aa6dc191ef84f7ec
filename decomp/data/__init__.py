"""Data for decomp: records, the procedural playground, MRB-style JSONL, BEIR collections, TREC
runs and qrels, FlagEmbedding JSONL, tokenizer.

Data never imports models (the reranker reads these records by attribute).
"""

from decomp.data.beir import Collection, load_beir, rerank_groups, training_groups
from decomp.data.flag import load_flag, read_flag
from decomp.data.mrb import (MAX_IMAGE_PIXELS, ImageTooLarge, LoadStats, load_image, load_jsonl,
                              read_jsonl, write_jsonl)
from decomp.data.playground import Playground, PlaygroundConfig, render_examples_png
from decomp.data.reading import DataProblem, Problems
from decomp.data.tokenizer import LABEL_WORDS, SPECIAL_TOKENS, build_tokenizer
from decomp.data.trec import read_qrels, read_run, write_run
from decomp.data.types import TASK_MODALITY, TASKS, Group, Item

__all__ = [
    "Collection", "DataProblem", "ImageTooLarge", "MAX_IMAGE_PIXELS", "Problems", "load_beir",
    "load_flag", "read_flag", "read_qrels", "read_run", "rerank_groups", "training_groups",
    "write_run",
    "Group", "Item", "LABEL_WORDS", "LoadStats", "Playground", "PlaygroundConfig",
    "SPECIAL_TOKENS", "TASKS", "TASK_MODALITY", "build_tokenizer", "load_image",
    "load_jsonl", "read_jsonl", "render_examples_png", "write_jsonl",
]
