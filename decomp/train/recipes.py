"""Named configs (``--config NAME``): the playground's, each a function returning a
:class:`~decomp.train.config.TrainConfig`, in one plain dict.

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


NAMED_CONFIGS: dict[str, Callable[[], TrainConfig]] = {
    'playground': playground,
    'playground_quick': playground_quick,
    'playground_multimodal': playground_multimodal,
}


def get_config(name_or_file: str = 'playground') -> TrainConfig:
  """A named config (:data:`NAMED_CONFIGS`) or a ``.py`` / ``.json`` config file."""
  if name_or_file in NAMED_CONFIGS:
    return NAMED_CONFIGS[name_or_file]()
  if name_or_file.endswith(('.py', '.json')):
    return from_file(name_or_file)
  raise config_lib.ConfigError(
      f'unknown config {name_or_file!r}: expected one of {sorted(NAMED_CONFIGS)} or a .py/.json '
      'file')
