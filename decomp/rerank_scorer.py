"""Scoring (instruction, query, document) pairs with a model: :func:`load_scorer` opens a training
workdir or a model directory as a :class:`PairScorer`, which sorts pairs by prompt length into
token-sized batches padded to a short ladder of lengths
(:func:`~decomp.batching.plan_batches`) on every local device. :mod:`decomp.rerank` re-exports
all of it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np

from decomp.batching import plan_batches
from decomp.data.types import Group, Item


class Scorer(Protocol):
  """Scores (instruction, query, document) triples; higher means more relevant."""

  image_size: int | None  # images are read at this side (None: the model reads no images)

  def score(self, instructions: Sequence[str], queries: Sequence[Any],
            documents: Sequence[Any]) -> np.ndarray:
    ...


def as_item(x) -> Item:
  """A str, an image array or an Item as an :class:`~decomp.data.Item`."""
  if isinstance(x, Item):
    return x
  if isinstance(x, str):
    return Item(text=x)
  if isinstance(x, np.ndarray):
    return Item(image=x)
  raise TypeError(f"a query or document must be a str, an image array or an Item, got "
                  f"{type(x).__name__}")


def _pair_groups(instructions, queries, documents) -> list[Group]:
  """One single-document group per pair: the encoders of decomp read groups."""
  return [Group(query_id=str(i), task="", instruction=ins, query=as_item(q), docs=(as_item(d),),
                labels=(0,), doc_ids=("",), doc_kinds=("",))
          for i, (ins, q, d) in enumerate(zip(instructions, queries, documents))]


@dataclasses.dataclass
class ScoredBatch:
  """One batch of :meth:`PairScorer.batches`: the pairs' positions in the call, their scores,
  their tokens (padding excluded) and how many of them were cut to ``max_length``."""
  indices: np.ndarray
  scores: np.ndarray
  tokens: int = 0
  truncated: int = 0


@dataclasses.dataclass
class PairScorer:
  """A jitted scorer: ``encode(groups, lengths) -> arrays [B, 1, T]`` then
  ``score_fn(arrays) -> [B, 1]``.

  With ``prompt_lengths`` (the untruncated length of each pair's prompt) the pairs are sorted by
  length and batched by :func:`~decomp.batching.plan_batches` (``lengths`` is then ``(T,)``);
  without it every batch holds ``batch_size`` pairs at the encoder's own length (``lengths``
  None).
  """

  encode: Callable[[list[Group], Sequence[int] | None], Mapping[str, np.ndarray]]
  score_fn: Callable[[Mapping[str, np.ndarray]], Any]
  batch_size: int = 32
  image_size: int | None = None
  description: str = ""
  max_length: int = 512
  prompt_lengths: Callable[[list[Group]], Sequence[int]] | None = None
  rows_multiple: int = 1  # batches split over this many devices
  step: int | None = None  # the checkpoint step scored with (a workdir's)

  def batches(self, instructions, queries, documents) -> Iterator[ScoredBatch]:
    """Scores the pairs batch by batch (see the class docstring), longest prompts first."""
    if not len(instructions) == len(queries) == len(documents):
      raise ValueError(f"score: {len(instructions)} instructions, {len(queries)} queries and "
                       f"{len(documents)} documents")
    groups = _pair_groups(instructions, queries, documents)
    if self.prompt_lengths is None or not groups:
      lengths = None
      plan = [(np.arange(s, min(s + self.batch_size, len(groups))), None, self.batch_size)
              for s in range(0, len(groups), self.batch_size)]
    else:
      lengths = np.asarray(self.prompt_lengths(groups), np.int64)
      plan = plan_batches(lengths, max_length=self.max_length, batch_size=self.batch_size,
                          multiple=self.rows_multiple)
    for indices, length, rows in plan:
      chunk = [groups[i] for i in indices]
      chunk += [chunk[-1]] * (rows - len(chunk))
      arrays = self.encode(chunk, None if length is None else (length,))
      scores = np.asarray(self.score_fn(arrays), np.float32).reshape(-1)[:len(indices)]
      if lengths is None:
        yield ScoredBatch(indices, scores)
      else:
        mine = lengths[indices]
        yield ScoredBatch(indices, scores, int(np.minimum(mine, self.max_length).sum()),
                          int((mine > self.max_length).sum()))

  def score(self, instructions, queries, documents) -> np.ndarray:
    out = np.zeros((len(documents),), np.float32)
    for batch in self.batches(instructions, queries, documents):
      out[batch.indices] = batch.scores
    return out


def check_batch_size(batch_size) -> None:
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive integer (pairs per batch at max_length), "
                     f"got {batch_size!r}")


def load_scorer(path: str, preset: str | None = None, *, batch_size: int = 32,
                score: str | None = None, step: int | None = None,
                max_length: int = 512, allow_code: bool = False, dtype: str | None = None,
                image_size: int | None = None) -> PairScorer:
  """A :class:`Scorer` for a training workdir or a Hugging Face / base-checkpoint directory.

  Both open as a :class:`decomp.train.Run` (``Run.open`` / ``Run.from_model_dir``): the same
  prompt encoder and forward pass as training's evaluation, on every local device (the data
  axis of the mesh).

  Args:
    path: a decomp workdir (its latest intact checkpoint, or ``step``) or a model directory
      (``config.json`` + safetensors + tokenizer).
    preset: a prompt preset of :data:`decomp.models.presets.PRESETS` for a model directory
      (None: decomp's own template); a workdir carries its own.
    batch_size: pairs per batch at ``max_length`` (batches of shorter prompts hold more:
      :func:`~decomp.batching.plan_batches`).
    score: ``'sft'`` ranks by ``z_y - z_n`` (P(yes)'s logit), ``'cl'`` by ``z_y``; default the
      workdir's evaluation score, ``'sft'`` for a model directory.
    max_length: tokens per prompt of a model directory (a workdir uses its own); longer prompts
      lose document text from the end (then query text; never the template's tail).
    allow_code: run objective code a workdir's config names outside the installed packages
      (docs/trust.md).
    dtype: activation dtype (``'bfloat16'``: faster where the device has bf16 units); None: a
      workdir's own, ``'float32'`` for a model directory.
    image_size: the side images are read at by a model with a vision tower (a multiple of its
      patch x merge size; None: a workdir's own, 32 for a model directory).
  """
  import jax

  from decomp import rerank_inputs
  from decomp.train import mesh as mesh_lib
  from decomp.train.run import Run

  check_batch_size(batch_size)
  if score not in (None, "sft", "cl"):
    raise ValueError(f"score must be 'sft' or 'cl', got {score!r}")
  rerank_inputs.check_model_path(path, preset, step)
  if rerank_inputs.is_workdir(path):
    overrides = ["mesh.data=-1", "num_devices=0"] + ([f"model.dtype={dtype}"] if dtype else [])
    if image_size is not None:
      overrides.append(f"model.image_size={image_size}")
    run = Run.open(path, step, overrides=overrides, allow_code=allow_code)
    description = f"{path} (step {run.step}, score {score or run.score})"
  else:
    run = Run.from_model_dir(path, preset=preset or "", max_length=max_length, score=score,
                             dtype=dtype or "float32", image_size=image_size)
    description = f"{path} (preset {preset or 'decomp'}, score {run.score})"
  score = score or run.score
  scores = run.scores_fn()
  mesh = run.mesh
  put = lambda arrays: {k: jax.device_put(v, mesh_lib.batch_sharding(mesh, v.ndim))
                        for k, v in arrays.items()}
  return PairScorer(
      encode=lambda groups, lengths: put(run.encoder.encode(groups, 1, lengths=lengths)),
      score_fn=lambda arrays: scores(run.params, run.frozen, arrays)[score],
      batch_size=batch_size, image_size=run.image_size, description=description,
      max_length=run.config.data.max_length, prompt_lengths=run.encoder.prompt_lengths,
      rows_multiple=mesh_lib.data_parallel_size(mesh), step=run.step if run.workdir else None)
