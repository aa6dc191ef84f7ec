"""Named configs (``--config NAME``), each a function returning a
:class:`~decomp.train.config.TrainConfig`, in one plain dict: the playground's, and recipes for
real models (``qwen3_reranker_lora``, ``gmr_lora``: they need ``model=DIR data=DIR``), whose
docstrings give the source of every number.

>>> get_config('playground_quick').model.path
'random'
"""

from __future__ import annotations

from typing import Callable

from decomp.train import config as config_lib
from decomp.train.config import TrainConfig
from decomp.train.overrides import from_file


def playground() -> TrainConfig:
  """The built-in CPU config: the pretrained playground reranker, fully fine-tuned with SFT on
  the T->T playground (calibrated: ~0.5 s/step on one core, test NDCG@10 0.6-0.7 at 200 steps)."""
  return TrainConfig(name='playground')


def playground_quick() -> TrainConfig:
  """A shrunk playground run for tests and smoke runs: seconds per hundred steps on CPU. Every
  task family (images included): the smoke runs exercise all paths."""
  return config_lib.replace(
      TrainConfig(name='playground_quick'),
      model=dict(path='random', hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                 intermediate_size=64, vision_hidden_size=32, vision_layers=1, vision_heads=2,
                 image_size=16, patch_size=8),
      finetune=dict(trains='full'),
      data=dict(negatives=3, batch_size=8, max_length=64, playground={}),
      optim=dict(steps=20, learning_rate=3e-3, warmup_steps=2),
      eval_log=dict(eval_groups=16, test_groups=16, eval_batch_size=8, log_every=1,
                    example_log_every=5, eval_every=10, checkpoint_every=10))


# The multimodal main job's base: the tower pre-trained, then frozen while the LM learns the
# captions and 32 matching questions per group (random negatives) in 3000 steps (~7.5 min on one
# core). Jointly trained, the ViT and projector collapse every image to one token; with
# hard negatives in the questions, or fewer steps, image matching stays near chance
# (docs/calibration.md, "Image families").
MULTIMODAL_BASE = dict(vision_steps=1000, freeze_vision=True, match_per_group=32,
                       match_negatives='random', steps=3000)


def playground_multimodal() -> TrainConfig:
  """The main job (``make demo``): T->T, T->I, I->T and IT->IT on the playground, the LM head
  trained on the frozen features of a base that reads its images (:data:`MULTIMODAL_BASE`),
  each prompt the base's own matching question (the 'playground' prompt preset); 1024 test
  queries per family."""
  return config_lib.replace(
      playground(), name='playground_multimodal',
      finetune=dict(trains='head', cache_features=True), readout=dict(preset='playground'),
      base=MULTIMODAL_BASE,
      data=dict(playground={'tasks': ['t2t', 't2i', 'i2t', 'it2it'], 'num_eval_queries': 1024}))


def reranker_lora() -> TrainConfig:
  """LoRA fine-tuning of a Qwen3-Reranker checkpoint (0.6B/4B/8B) on your data, in its own prompt.

  Needs ``model=DIR`` (the HF checkpoint directory with its tokenizer) and ``data=DIR`` (MRB-style
  JSONL splits, :mod:`decomp.data.mrb`). Where each number comes from:

  * ``prompt=qwen3-reranker``, yes/no label words: the model's published prompt and answer
    format (:data:`decomp.models.presets.PRESETS`), so training starts from the reranker it is.
  * LoRA rank 16 on every linear layer of the decoder, ``learning_rate=1e-4``, bfloat16
    activations: the paper's LoRA recipe (Table 1 of Dai et al. 2025; /work/shared/paper/facts.md),
    carried over; Qwen3-Reranker's own fine-tuning recipe is not published as such.
  * ``lora_alpha=32`` (scale 2), ``negatives=4`` (the paper's probing runs use 4; GMR's final runs
    16), SFT (the objective the paper finds better), ``max_length=1024``, ``batch_size=16``,
    ``steps=1000``, ``warmup_steps=50``, weight decay 0, gradient clip 1: our choices, not
    published. ``learning_rate=1e-3`` (the playground's) took such a run's loss from 2.4 to 7.6
    in three steps (issue 27).
  * ``optim.mu_dtype=bfloat16``: Adam's first moment in bfloat16 (the adapters and the second
    moment stay float32), our choice: a checkpoint holds adapters + moments, and this keeps a
    0.6B run's under 5% of the base (3.7% of its float32 weights, measured: benchmarks/RESULTS.md).
  """
  return config_lib.replace(
      TrainConfig(name='qwen3_reranker_lora', model=config_lib.ModelConfig(
          path='random', dtype='bfloat16')),
      readout=dict(preset='qwen3-reranker'),
      finetune=dict(trains='lora', lora_rank=16, lora_alpha=32.0),
      objective=dict(name='sft'),
      data=dict(negatives=4, batch_size=16, max_length=1024),
      optim=dict(steps=1000, learning_rate=1e-4, warmup_steps=50, mu_dtype='bfloat16'),
      eval_log=dict(eval_every=200, checkpoint_every=200, eval_groups=256, test_groups=0,
                    example_log_every=50))


def gmr_lora() -> TrainConfig:
  """GMR's recipe (Dai et al. 2025, "lychee-rerank-mm"): a Qwen2.5-VL checkpoint (3B/7B) trained
  with SFT through LoRA, in the GMR prompt, on long multimodal lists.

  Needs ``model=DIR`` (a Qwen2.5-VL HF checkpoint directory) and ``data=DIR`` (MRB-style JSONL).
  Where each number comes from:

  * LoRA rank 16, ``learning_rate=1e-4``, bfloat16, the SFT objective, the yes/no readout: the
    paper (Table 1's probing setup; GMR-3B/7B are the SFT models; facts.md).
  * 16 negatives per query: the paper's final training (probing used 4).
  * ``max_length=3200`` tokens per prompt (long prompts: images and documents): the training
    length issue 27 quotes for GMR; not in our copy of the paper's facts, so unverified.
  * ``prompt=gmr``: decomp's rendering of GMR's template (:data:`decomp.models.presets.PRESETS`).
  * ``lora_alpha=32``, ``batch_size=8`` groups a step, ``parallel.doc_chunk=4`` (17 documents of
    3,200 tokens go through the model in chunks of 4, exactly: :mod:`decomp.chunked`),
    ``image_size=448`` (as MonoQwen2-VL reads), adapters on the decoder only
    (``lora_vision=false``), ``steps=2000``, ``warmup_steps=100``: our choices, not published.
  * ``optim.mu_dtype=bfloat16``: as in ``qwen3_reranker_lora`` (a smaller checkpoint).
  * ``parallel.remat=block``: at 3,200 tokens the attention scores of every layer dominate memory
    (docs/models.md's planner table is computed with it). Whether a step fits a device's memory,
    and what to change when it does not, is the planner's answer (``python -m decomp.plan``).
  """
  return config_lib.replace(
      TrainConfig(name='gmr_lora', model=config_lib.ModelConfig(path='random', dtype='bfloat16',
                                                                image_size=448)),
      readout=dict(preset='gmr'),
      finetune=dict(trains='lora', lora_rank=16, lora_alpha=32.0),
      objective=dict(name='sft'),
      data=dict(negatives=16, batch_size=8, max_length=3200),
      optim=dict(steps=2000, learning_rate=1e-4, warmup_steps=100, mu_dtype='bfloat16'),
      parallel=dict(doc_chunk=4, remat='block'),
      eval_log=dict(eval_every=200, checkpoint_every=200, eval_groups=256, test_groups=0,
                    example_log_every=50))


NAMED_CONFIGS: dict[str, Callable[[], TrainConfig]] = {
    'playground': playground,
    'playground_quick': playground_quick,
    'playground_multimodal': playground_multimodal,
    'qwen3_reranker_lora': reranker_lora,  # functions name no model family (test_structure)
    'gmr_lora': gmr_lora,
}

# Recipes of real models on real data: without model=DIR and data=DIR they would train the
# playground's toy model and world under a real recipe's name.
NEEDS_MODEL_AND_DATA = ('qwen3_reranker_lora', 'gmr_lora')


def check_inputs(cfg: TrainConfig) -> None:
  """Refuses a real-model recipe whose ``model`` or ``data`` was not given (ConfigError)."""
  if cfg.name not in NEEDS_MODEL_AND_DATA:
    return
  missing = [f'{key}=DIR ({what})' for key, what, given in (
      ('model', 'an HF checkpoint directory with its tokenizer', not cfg.model.is_random_shape),
      ('data', 'a directory of MRB-style JSONL splits', cfg.data.source != 'playground'))
      if not given]
  if missing:
    raise config_lib.ConfigError(
        f'config {cfg.name!r} trains a real model on real data: give {" and ".join(missing)}, '
        f'e.g. --config {cfg.name} --set model=DIR data=DIR')


def get_config(name_or_file: str = 'playground') -> TrainConfig:
  """A named config (:data:`NAMED_CONFIGS`) or a ``.py`` / ``.json`` config file."""
  if name_or_file in NAMED_CONFIGS:
    return NAMED_CONFIGS[name_or_file]()
  if name_or_file.endswith(('.py', '.json')):
    return from_file(name_or_file)
  raise config_lib.ConfigError(
      f'unknown config {name_or_file!r}: expected one of {sorted(NAMED_CONFIGS)} or a .py/.json '
      'file')
