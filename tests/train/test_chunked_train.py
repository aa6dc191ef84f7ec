"""The exact chunked step and gradient accumulation inside training: the same per-step losses as
the one-pass step, bit-exact resume of a chunked run, and the bad values of their config fields."""

import os
import shutil

import jax
import numpy as np
import pytest

from decomp.train import checkpoint as ckpt_lib
from decomp.train import config as config_lib
from decomp.train import overrides as overrides_lib
from decomp.train import recipes
from decomp.train import logs
from decomp.train.loop import train

# Text-only, one layer, no evaluation: the cheapest compile. Lists of 4 (3 negatives).
LEAN = ['vision=false', 'num_layers=1', 'eval_every=0', 'final_eval=false', 'quiet=true',
        'example_log_every=0', 'steps=20', 'checkpoint_every=10', 'keep_checkpoints=3',
        'num_devices=1', 'mesh={"data": 1}', 'playground.tasks=["t2t"]']


def quick(*overrides):
  return overrides_lib.apply_overrides(recipes.get_config('playground_quick'),
                                    [*LEAN, *overrides])


def _params(workdir):
  state, _ = ckpt_lib.load_state(workdir)
  return jax.tree_util.tree_flatten_with_path(state['params'])[0]


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('one_pass'))
  train(quick(), workdir)
  return workdir


@pytest.mark.parametrize('override', ['doc_chunk=3', 'accumulate_steps=2'])
def test_chunked_and_accumulated_runs_follow_the_one_pass_run(reference, tmp_path, override):
  """20 fp32 steps: a list in chunks of 3 (not a divisor of 4), or the batch in 2 micro-batches,
  gives the one-pass run's losses and norms at every step to 1e-5."""
  workdir = str(tmp_path / 'run')
  train(quick(override), workdir)
  ref, got = logs.read_steps(reference), logs.read_steps(workdir)
  assert [r['step'] for r in got] == list(range(1, 21))
  for key in ('loss', 'objective', 'grad_norm', 'update_norm', 'param_norm', 'w_pos_mean'):
    np.testing.assert_allclose([r[key] for r in got], [r[key] for r in ref], rtol=1e-5,
                               atol=1e-7, err_msg=f'{override}: {key}')


def test_a_chunked_run_resumes_bit_exactly(tmp_path):
  """A chunked run that lost its last checkpoint resumes from the one before and ends with the
  uninterrupted run's step log and parameters, bit for bit."""
  reference = str(tmp_path / 'reference')
  train(quick('doc_chunk=3'), reference)
  crashed = str(tmp_path / 'crashed')
  shutil.copytree(reference, crashed)
  shutil.rmtree(os.path.join(crashed, 'checkpoints', '20'))
  os.remove(os.path.join(crashed, 'results.json'))
  assert ckpt_lib.Checkpoints(crashed).latest_step() == 10
  train(quick('doc_chunk=3'), crashed)
  strip = lambda recs: [{k: v for k, v in r.items() if k not in ('examples_per_s', 'tokens_per_s',
                                                                 'step_time_s')} for r in recs]
  assert strip(logs.read_steps(crashed)) == strip(logs.read_steps(reference))
  for (path, ref), (_, got) in zip(_params(reference), _params(crashed)):
    np.testing.assert_array_equal(got, ref, err_msg=str(path))


@pytest.mark.parametrize('override, message', [
    ('doc_chunk=5', r'doc_chunk=5: expected 0 \(the whole list at once\) or 1\.\.4'),
    ('doc_chunk=-1', r'doc_chunk=-1: must be >= 0'),
    ('accumulate_steps=3', r'accumulate_steps=3: expected a divisor of batch_size=8: \[1, 2, 4, 8\]'),
    ('accumulate_steps=0', r'accumulate_steps=0'),
])
def test_bad_chunk_and_accumulation_values_are_named(override, message):
  with pytest.raises(ValueError, match=message):
    config_lib.validate(quick(override))


def test_micro_batches_must_split_over_the_data_shards():
  cfg = overrides_lib.apply_overrides(quick('accumulate_steps=4'), ['mesh={"data": 4}',
                                                                 'num_devices=4'])
  with pytest.raises(ValueError, match='each of the 4 micro-batches of batch_size=8 must split'):
    config_lib.validate(cfg, num_devices=8)
