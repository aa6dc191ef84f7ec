"""The training engine: ``train(config, workdir)``, its config, logs and checkpoints.

``python -m decomp.train --workdir DIR [--config NAME_OR_FILE] [--set key=value ...]`` is the CLI.

Modules: ``config`` (TrainConfig, presets, overrides, validate), ``mesh`` (device mesh),
``data`` (group sources, batches), ``state`` (tokenizer, reranker spec, sharded init),
``cache`` (built tokenizers and bases), ``step`` (optimiser, jitted update / eval steps),
``loop`` (``train``), ``evaluate`` (ranking metrics), ``logs`` (workdir files and readers),
``checkpoint`` (Orbax, verified restores), ``pretrain`` (the playground base-checkpoint recipe),
``workdir`` (the workdir lock, resume rules), ``preflight`` (checks before the workdir is touched),
``nonfinite`` (the divergence guard), ``errors`` (named failures the CLI prints in one line).
"""

import sys as _sys
import types as _types

from decomp.train.checkpoint import load_state
from decomp.train.config import (TrainConfig, apply_overrides, from_file, get_config, to_dict,
                                 validate)
from decomp.train.logs import EXAMPLE_COLUMNS, STEP_KEYS, read_evals, read_examples, read_steps
from decomp.train.loop import evaluate_workdir, train
from decomp.train.pretrain import base_checkpoint

__all__ = [
    'EXAMPLE_COLUMNS', 'STEP_KEYS', 'TrainConfig', 'apply_overrides', 'base_checkpoint',
    'evaluate_workdir',
    'from_file', 'get_config', 'load_state', 'read_evals', 'read_examples', 'read_steps',
    'to_dict', 'train', 'validate',
]



class _CallableModule(_types.ModuleType):
  """Makes the package itself callable, so ``decomp.train(config, workdir)`` runs training while
  ``decomp.train.config`` & co. stay importable submodules (rebinding ``decomp.train`` to the
  function would break ``import decomp.train.logs as logs``)."""

  def __call__(self, config, workdir, **kwargs):
    return train(config, workdir, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
