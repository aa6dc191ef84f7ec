"""The training engine: ``train(config, workdir)``, its config, logs and checkpoints.

``python -m decomp.train --workdir DIR [--config NAME_OR_FILE] [--set key=value ...]`` is the CLI;
``decomp.train.train(config, workdir)`` the function; ``decomp.train.Run.open(workdir)`` opens a
trained run (model, parameters, tokenizer, scoring) without its optimizer.

Modules: ``config`` (the sections of TrainConfig), ``overrides`` (``key=value``, files, old
config.json), ``recipes`` (named configs), ``mesh`` (device mesh), ``data`` (group sources,
batches), ``state`` (tokenizer, reranker spec, sharded init), ``run`` (``Run.open``), ``cache``
(built tokenizers), ``step`` (optimiser, jitted update / eval steps), ``loop`` (``train``),
``evaluate`` (ranking metrics), ``logs`` (workdir files and readers), ``checkpoint`` (Orbax,
verified restores), ``workdir`` (the workdir lock, resume rules), ``preflight`` (checks before
the workdir is touched), ``nonfinite`` (the divergence guard), ``errors`` (named failures the CLI
prints in one line).
"""

import importlib

# Loaded on first use, so that importing one module of the engine (``decomp.train.run`` for
# reranking, say) does not import the training loop.
_EXPORTS = {
    'EXAMPLE_COLUMNS': 'logs', 'STEP_KEYS': 'logs', 'read_evals': 'logs',
    'read_examples': 'logs', 'read_steps': 'logs', 'load_state': 'checkpoint',
    'TrainConfig': 'config', 'to_dict': 'config', 'validate': 'config',
    'apply_overrides': 'overrides', 'from_file': 'overrides', 'get_config': 'recipes',
    'evaluate_workdir': 'loop', 'train': 'loop', 'Run': 'run',
}


def __getattr__(name):
  if name not in _EXPORTS:
    raise AttributeError(f"module 'decomp.train' has no attribute {name!r}")
  value = getattr(importlib.import_module(f'decomp.train.{_EXPORTS[name]}'), name)
  globals()[name] = value
  return value


__all__ = sorted(_EXPORTS)
