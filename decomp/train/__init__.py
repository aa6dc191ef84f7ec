"""The training engine: ``train(config, workdir)``, its config, logs and checkpoints.

``python -m decomp.train --workdir DIR [--config NAME_OR_FILE] [--set key=value ...]`` is the CLI.
"""

from decomp.train.config import TrainConfig, apply_overrides, from_file, get_config, validate
from decomp.train.logs import read_evals, read_examples, read_steps

__all__ = [
    'TrainConfig', 'apply_overrides', 'from_file', 'get_config', 'read_evals', 'read_examples',
    'read_steps', 'validate',
]
