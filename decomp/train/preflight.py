"""Checks of a run that need no compute, made before its workdir is touched.

``config.validate`` checks the config's own keys; these check what a run also needs: a model
shape that builds (named errors instead of a ZeroDivisionError deep in the model), the
divergence policy, and the data splits the config's evaluation settings will read (present and
non-empty, not discovered after the whole run trained).
"""

from __future__ import annotations

import os

from decomp.train import config as config_lib
from decomp.train import nonfinite

# Shape keys of the models the config describes itself ('random', 'playground'); a model
# directory brings its own shapes (checked by DecoderConfig when read).
DECODER_SHAPE = ('hidden_size', 'num_layers', 'num_heads', 'num_kv_heads', 'intermediate_size')
VISION_SHAPE = ('vision_hidden_size', 'vision_layers', 'vision_heads', 'image_size', 'patch_size')


def check_config(cfg: config_lib.TrainConfig) -> None:
  """Raises ValueError naming the config key of a model shape that cannot be built, or of an
  unknown ``on_nonfinite`` policy."""
  def bad(key, message):
    raise ValueError(f'config {key}={getattr(cfg, key)!r}: {message}')

  policy = getattr(cfg, 'on_nonfinite', 'error')
  if policy not in nonfinite.POLICIES:
    raise ValueError(f'config on_nonfinite={policy!r}: expected one of {nonfinite.POLICIES}')
  keys = (DECODER_SHAPE if cfg.model in ('random', 'playground') else ()) + (
      VISION_SHAPE if cfg.vision else ())
  for key in keys:
    value = getattr(cfg, key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      bad(key, 'must be a positive integer')
  if cfg.model in ('random', 'playground'):
    if cfg.hidden_size % cfg.num_heads:
      bad('hidden_size', f'must be divisible by num_heads={cfg.num_heads}')
    if cfg.num_heads % cfg.num_kv_heads:
      bad('num_kv_heads', f'must divide num_heads={cfg.num_heads}')
    if (cfg.hidden_size // cfg.num_heads) % 2:
      bad('hidden_size', f'hidden_size / num_heads = {cfg.hidden_size // cfg.num_heads} must '
                         'be even (the RoPE head width)')
  if cfg.vision and cfg.vision_hidden_size % cfg.vision_heads:
    bad('vision_hidden_size', f'must be divisible by vision_heads={cfg.vision_heads}')


def needed_splits(cfg: config_lib.TrainConfig) -> dict[str, str]:
  """The evaluation splits a run reads, with the config setting that reads each."""
  needed = {}
  if cfg.eval_every:
    needed['val'] = f'eval_every={cfg.eval_every}'
  if cfg.final_eval:
    needed['test'] = 'final_eval=true'
  return needed


def check_splits(cfg: config_lib.TrainConfig, data) -> None:
  """Every split the run will evaluate on exists and holds groups (the training split is
  checked when the data is opened). For JSONL data this reads the split files now, once: the
  evaluation later reuses them."""
  for split, reason in needed_splits(cfg).items():
    groups = data.eval_groups(split, 1)
    if not groups:
      where = (f'{os.path.join(cfg.data, f"{split}.jsonl")}' if cfg.data != 'playground'
               else f'the playground {split} split')
      raise ValueError(f'{where} holds no groups, but {reason} evaluates on it (set '
                       f'{"eval_every=0" if split == "val" else "final_eval=false"} to train '
                       'without it)')
