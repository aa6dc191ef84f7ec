"""The real-model recipes (``--config qwen3_reranker_lora`` / ``gmr_lora``): the published numbers,
each with its source in the docstring, and a clear refusal without ``model=DIR data=DIR``."""

import pytest

from decomp.train import overrides as overrides_lib
from decomp.train import recipes
from decomp.train.__main__ import main
from decomp.train.knobs import ConfigError


def test_gmr_lora_is_the_papers_recipe():
  cfg = recipes.get_config('gmr_lora')
  assert (cfg.finetune.trains, cfg.finetune.lora_rank, cfg.optim.learning_rate) == ('lora', 16, 1e-4)
  assert (cfg.data.negatives, cfg.data.max_length, cfg.model.dtype) == (16, 3200, 'bfloat16')
  assert (cfg.readout.preset, cfg.objective.name) == ('gmr', 'sft')
  qwen3 = recipes.get_config('qwen3_reranker_lora')
  assert (qwen3.readout.preset, qwen3.finetune.trains, qwen3.optim.learning_rate) == (
      'qwen3-reranker', 'lora', 1e-4)
  for name in ('gmr_lora', 'qwen3_reranker_lora'):  # every number has a source
    recipe = recipes.NAMED_CONFIGS[name]
    doc = ' '.join(recipe.__doc__.split())
    assert 'the paper' in doc and 'our choices, not published' in doc, recipe.__name__


@pytest.mark.parametrize('name', ['qwen3_reranker_lora', 'gmr_lora'])
def test_a_real_recipe_needs_a_model_and_data(name, tmp_path):
  cfg = recipes.get_config(name)
  with pytest.raises(ConfigError, match=r'give model=DIR .* and data=DIR'):
    recipes.check_inputs(cfg)
  with pytest.raises(ConfigError, match=r'give data=DIR \(a directory of MRB-style JSONL'):
    recipes.check_inputs(overrides_lib.apply_overrides(cfg, [f'model={tmp_path}']))
  recipes.check_inputs(overrides_lib.apply_overrides(cfg, [f'model={tmp_path}',
                                                           f'data={tmp_path}']))
  recipes.check_inputs(recipes.get_config('playground_quick'))  # the playground needs neither


def test_the_cli_refuses_a_real_recipe_in_one_line(tmp_path, capsys):
  assert main(['--workdir', str(tmp_path / 'run'), '--config', 'gmr_lora']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "config 'gmr_lora' trains a real model" in err[0], err
  assert not (tmp_path / 'run').exists()
