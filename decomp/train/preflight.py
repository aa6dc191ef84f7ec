"""Checks of a run that need no compute, made before its workdir is touched.

The config's sections check their own fields when built; these check what a run also needs:
the data splits its evaluation settings will read (present and non-empty, not discovered after
the whole run trained), and a workdir that can hold a run.
"""

from __future__ import annotations

import os

from decomp import _files
from decomp.train import config as config_lib
from decomp.train import logs


def needed_splits(cfg: config_lib.TrainConfig) -> dict[str, str]:
  """The evaluation splits a run reads, with the config setting that reads each."""
  needed = {}
  if cfg.eval_log.eval_every:
    needed['val'] = f'eval_every={cfg.eval_log.eval_every}'
  if cfg.eval_log.final_eval:
    needed['test'] = 'final_eval=true'
  return needed


def check_splits(cfg: config_lib.TrainConfig, data) -> None:
  """Every split the run will evaluate on exists and holds groups (the training split is
  checked when the data is opened). For JSONL data this reads the split files now, once: the
  evaluation later reuses them."""
  for split, reason in needed_splits(cfg).items():
    groups = data.eval_groups(split, 1)
    if not groups:
      where = (f'{os.path.join(cfg.data.source, f"{split}.jsonl")}'
               if cfg.data.source != 'playground' else f'the playground {split} split')
      raise ValueError(f'{where} holds no groups, but {reason} evaluates on it (set '
                       f'{"eval_every=0" if split == "val" else "final_eval=false"} to train '
                       'without it)')


def check_workdir(workdir: str) -> str:
  """The absolute path of a workdir a run can use: named, a directory (or creatable), writable,
  and not a Hugging Face model's directory. Raises ValueError naming what is wrong."""
  if not isinstance(workdir, (str, os.PathLike)) or not str(workdir).strip():
    raise ValueError("workdir '' names no directory: give the run its own directory")
  workdir = os.path.abspath(workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f'workdir {workdir} is a file, not a directory')
  config = os.path.join(workdir, logs.CONFIG_FILE)
  if os.path.isfile(config):
    try:
      data = logs.read_json(config)
    except (OSError, ValueError):
      data = {}
    if isinstance(data, dict) and 'architectures' in data:
      raise ValueError(f'workdir {workdir} holds a Hugging Face model (its config.json names '
                       f'{data["architectures"]}), not a decomp run: pass it as model=DIR and '
                       'give the run a workdir of its own')
  _files.make_writable_dir(workdir, 'workdir')
  return workdir
