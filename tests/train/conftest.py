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


@pytest.fixture(scope='module', autouse=True)
def compilation_cache(tmp_path_factory):
  """A persistent XLA cache shared by the runs of a test module (and its subprocesses): each
  `train` call builds fresh jitted closures, whose programs are identical across runs."""
  import jax
  path = str(tmp_path_factory.mktemp('xla_cache'))
  names = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs',
           'jax_persistent_cache_min_entry_size_bytes')
  old = {name: getattr(jax.config, name) for name in names}
  old_env = os.environ.get('JAX_COMPILATION_CACHE_DIR')
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = path
  yield path
  for name, value in old.items():
    jax.config.update(name, value)
  if old_env is None:
    os.environ.pop('JAX_COMPILATION_CACHE_DIR', None)
  else:
    os.environ['JAX_COMPILATION_CACHE_DIR'] = old_env


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
