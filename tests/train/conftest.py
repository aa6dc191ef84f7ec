"""Shared fixtures of the training tests: a private cache dir (tokenizer, base checkpoints)."""

import os

import pytest


@pytest.fixture(scope='session', autouse=True)
def decomp_cache(tmp_path_factory):
  """Points $DECOMP_CACHE at a per-session directory (subprocesses inherit it)."""
  path = str(tmp_path_factory.mktemp('decomp_cache'))
  old = os.environ.get('DECOMP_CACHE')
  os.environ['DECOMP_CACHE'] = path
  yield path
  if old is None:
    os.environ.pop('DECOMP_CACHE', None)
  else:
    os.environ['DECOMP_CACHE'] = old


@pytest.fixture
def assert_resumes_exactly():
  """``check(cfg, reference_workdir, last_step)``: a copy of the finished run with its last
  checkpoint and results deleted (a crash before them) retrains to the same per-step losses."""
  import shutil

  from decomp.train import logs
  from decomp.train.loop import train

  def check(cfg, reference: str, last_step: int) -> None:
    crashed = reference.rstrip(os.sep) + '-crashed'
    shutil.copytree(reference, crashed)
    shutil.rmtree(os.path.join(crashed, 'checkpoints', str(last_step)))
    os.remove(os.path.join(crashed, 'results.json'))
    train(cfg, crashed)
    assert ([r['loss'] for r in logs.read_steps(crashed)]
            == [r['loss'] for r in logs.read_steps(reference)])

  return check


@pytest.fixture(scope='module')
def tiny_checkpoint_dir(tmp_path_factory):
  """``save(model_class, config_class, **config) -> directory``: a random transformers causal LM
  over the playground's tokenizer (vocabulary + 8 spare rows), saved with that tokenizer."""
  from decomp.train import recipes
  from decomp.train import state as state_lib

  def save(model_class, config_class, **config) -> str:
    import torch
    tokenizer = state_lib.resolve_tokenizer(recipes.get_config('playground'))
    torch.manual_seed(0)
    model = model_class(config_class(vocab_size=len(tokenizer) + 8, **config))
    path = str(tmp_path_factory.mktemp(model_class.__name__))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path

  return save


@pytest.fixture
def checkpoint_run_config():
  """``make(path, *overrides)``: a short LoRA run of the playground's T->T data on the
  checkpoint at ``path`` (6 steps, checkpoints every 3)."""
  from decomp.train import overrides as overrides_lib
  from decomp.train import recipes

  def make(path, *overrides):
    return overrides_lib.apply_overrides(recipes.get_config('playground'), [
        f'model={path}', 'steps=6', 'batch_size=4', 'eval_batch_size=4', 'num_devices=1',
        'mesh={"data": 1}', 'negatives=3', 'eval_every=0',
        'checkpoint_every=3', 'keep_checkpoints=3', 'test_groups=8', 'eval_groups=8',
        'example_log_every=3', 'quiet=true', 'finetune=lora', 'lora_rank=4', 'max_length=48',
        'playground={"tasks": ["t2t"], "num_eval_queries": 8}', *overrides])

  return make
