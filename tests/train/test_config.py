"""The config's sections: every bad value refused by name before any work (one ``error:`` line,
exit 2, the workdir untouched), the documented override forms, old config.json files migrated,
and field metadata deciding what may change on resume and evaluation."""

import json
import os

import pytest

from decomp.train import config as config_lib
from decomp.train import overrides as overrides_lib
from decomp.train import recipes
from decomp.train.__main__ import main


def _cli(capsys, workdir, *overrides, config='playground_quick'):
  rc = main(['--workdir', str(workdir), '--config', config, '--quiet', '--set', *overrides])
  err = capsys.readouterr().err.strip().splitlines()
  return rc, err


@pytest.mark.parametrize('override, message', [
    ('end_learning_rate_factor=-3', 'optim.end_learning_rate_factor=-3.0: must be >= 0'),
    ('b1=2', 'optim.b1=2.0: must be < 1'),
    ('b2=1.5', 'optim.b2=1.5: must be < 1'),
    ('weight_decay=-1', 'optim.weight_decay=-1.0: must be >= 0'),
    ('lora_alpha=0', 'finetune.lora_alpha=0.0: must be > 0'),
    ('lora_alpha=nan', 'finetune.lora_alpha=nan: must be a finite number'),
    ('eval_list_size=1', 'eval_log.eval_list_size=1: a list of one document'),
    ('learning_rate=nan', 'optim.learning_rate=nan: must be a finite number'),
    ('learning_rate=inf', 'optim.learning_rate=inf: must be a finite number'),
    ('temperature=nan', 'objective.temperature=nan: must be a finite number'),
    ('seed=-1', 'seed=-1: must be >= 0'),
    ('lora_rank=8', 'LoRA settings apply to trains=lora only'),
    ('pretrain_steps=5', "base.steps=5: the playground base's recipe applies to model=playground"),
    ('playground.hard_ratio=lots', "data.playground.hard_ratio: cannot read 'lots' as a number"),
    ('mesh.data=0', 'parallel.mesh=.*positive integer or -1'),
])
def test_bad_values_are_refused_before_any_work(capsys, tmp_path, override, message):
  extra = ('finetune=lora',) if override.startswith('lora_alpha') else ()
  rc, err = _cli(capsys, tmp_path / 'run', *extra, override)
  assert rc == 2 and len(err) == 1 and err[0].startswith('error: config ')
  assert pytest.importorskip('re').search(message, err[0]), err[0]
  assert not os.path.exists(tmp_path / 'run')  # nothing written: the corrected command works


@pytest.mark.parametrize('make, message', [
    (lambda p: '', "workdir '' names no directory"),
    (lambda p: (p / 'file').write_text('x') and str(p / 'file'), 'is a file, not a directory'),
    (lambda p: (p.joinpath('hf').mkdir() or (p / 'hf' / 'config.json').write_text(
        json.dumps({'architectures': ['Qwen3ForCausalLM']}))) and str(p / 'hf'),
     'holds a Hugging Face model'),
])
def test_unusable_workdirs_are_refused_by_name(capsys, tmp_path, make, message):
  rc, err = _cli(capsys, make(tmp_path), 'steps=1')
  assert rc == 2 and len(err) == 1 and message in err[0], err


def test_documented_override_forms_keep_working():
  cfg = overrides_lib.apply_overrides(recipes.get_config('playground_quick'), [
      'length_buckets=32,64', 'playground.tasks=t2t,i2t', 'model=random', 'data=playground',
      'prompt=playground', 'finetune=lora', 'steps=3', 'negatives=2', 'batch_size=4',
      'max_length=64', 'learning_rate=3e-4', 'train_lm_head=true', 'mesh.data=2',
      'optim.b2=0.99', 'weight_kwargs.tau=0.5'])
  assert cfg.data.length_buckets == (32, 64) and cfg.data.playground['tasks'] == ['t2t', 'i2t']
  assert (cfg.readout.preset, cfg.finetune.trains, cfg.optim.steps) == ('playground',
                                                                        'lora+lm_head', 3)
  assert (cfg.data.negatives, cfg.data.batch_size, cfg.optim.learning_rate) == (2, 4, 3e-4)
  assert cfg.parallel.mesh['data'] == 2 and cfg.optim.b2 == 0.99
  assert cfg.objective.weight_kwargs == {'tau': 0.5}


def test_a_flat_config_json_of_earlier_versions_migrates(tmp_path):
  """A config.json written before sections (a published sweep's) reads as the same run."""
  flat = {'name': 'playground', 'model': 'playground', 'finetune': 'head', 'train_lm_head': False,
          'cache_features': True, 'prompt': 'playground', 'pretrain_steps': 3000,
          'pretrain_freeze_vision': True, 'base_seed': 0, 'steps': 200, 'learning_rate': 0.001,
          'mesh': {'data': -1, 'model': 1}, 'playground': {'tasks': ['t2t']}, 'label_words':
          ['yes', 'no'], 'eval_batch_size': 16, 'quiet': True, 'objective': 'sft', 'weight': 'cl'}
  path = tmp_path / 'config.json'
  path.write_text(json.dumps(flat))
  cfg = overrides_lib.from_file(str(path))
  assert (cfg.finetune.trains, cfg.finetune.cache_features, cfg.readout.preset) == (
      'head', True, 'playground')
  assert (cfg.base.steps, cfg.base.freeze_vision, cfg.objective.weight) == (3000, True, 'cl')
  assert overrides_lib.from_dict(config_lib.to_dict(cfg)) == cfg  # the nested form round-trips
  lm = dict(flat, finetune='lora', train_lm_head=True, cache_features=False)
  path.write_text(json.dumps(lm))
  assert overrides_lib.from_file(str(path)).finetune.trains == 'lora+lm_head'


def test_field_metadata_says_what_may_change():
  resume = config_lib.free_on_resume()
  assert {'eval_log.quiet', 'eval_log.eval_every', 'optim.on_nonfinite', 'name'} <= resume
  assert 'optim.steps' not in resume and 'optim.learning_rate' not in resume
  evaluation = config_lib.free_on_evaluation()
  assert {'eval_log.eval_batch_size', 'parallel.mesh', 'eval_log.test_groups'} <= evaluation
  assert 'objective.name' not in evaluation


def test_sections_name_no_field_twice_under_one_short_key():
  """Every short key resolves to one field: the ones two sections share go through the legacy
  table (steps, learning_rate, batch_size, seed)."""
  for key, path in (('steps', 'optim.steps'), ('learning_rate', 'optim.learning_rate'),
                    ('batch_size', 'data.batch_size'), ('seed', 'seed'),
                    ('pretrain_steps', 'base.steps'), ('model', 'model.path')):
    assert overrides_lib.resolve_key(key)[0] == path


def test_docs_config_table_lists_every_moved_field():
  """docs/config.md says where each flat key went; the table is the migration's own."""
  text = open(os.path.join(os.path.dirname(__file__), '..', '..', 'docs', 'config.md')).read()
  for key, path in overrides_lib.LEGACY_KEYS.items():
    assert f'| `{key}` | `{path}` |' in text, key
  for name, section in config_lib.SECTIONS.items():
    assert f'| `{name}` |' in text
