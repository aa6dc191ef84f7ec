"""End-to-end runs of decomp.train that each start their own run (sharding, resumes after a kill
or a lost checkpoint, sparse global norms, MRB JSONL data); the shared quick run's tests are in
test_train.py. Tiny models, 8 simulated CPU devices."""

import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from decomp.train import checkpoint as ckpt_lib
from decomp.train import logs
from decomp.train import overrides as overrides_lib
from decomp.train import recipes
from decomp.train.loop import train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Text-only, no evaluation: the cheapest compile, for the equivalence tests.
LEAN = ['vision=false', 'num_layers=1', 'eval_every=0', 'final_eval=false', 'quiet=true',
        'example_log_every=0']


def quick(*overrides):
  return overrides_lib.apply_overrides(recipes.get_config('playground_quick'),
                                       ['quiet=true', *overrides])


def _final_params(workdir):
  state, meta = ckpt_lib.load_state(workdir)
  return jax.tree_util.tree_flatten_with_path(state['params'])[0], meta


def test_sharded_matches_single_device(tmp_path):
  common = [*LEAN, 'steps=3', 'checkpoint_every=0', 'finetune=full']
  runs = {
      'single': ['num_devices=1', 'mesh={"data": 1}'],
      # Data parallel, plus a custom rule splitting the MLP width over the 8 devices.
      'data8': ['mesh={"data": -1, "model": 1}', 'layout=data', 'axis_rules={"mlp": "data"}'],
      'fsdp': ['mesh={"data": 4, "model": 2}', 'layout=fsdp'],
  }
  losses, params = {}, {}
  for name, extra in runs.items():
    workdir = str(tmp_path / name)
    train(quick(*common, *extra), workdir)
    losses[name] = logs.columns(logs.read_steps(workdir))
    params[name], meta = _final_params(workdir)
    assert meta['step'] == 3
  for name in ('data8', 'fsdp'):
    for key in ('loss', 'cl_loss', 'grad_norm', 'param_norm', 'w_pos_mean'):
      np.testing.assert_allclose(losses[name][key], losses['single'][key], rtol=2e-5,
                                 err_msg=f'{name} {key}')
    for (path, ref), (path2, got) in zip(params['single'], params[name]):
      assert path == path2
      np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6, err_msg=f'{name} {path}')
  # The runs moved the weights (the comparison is not between three initial states).
  assert losses['single']['update_norm'][-1] > 0


def test_steps_between_log_lines_skip_the_global_norms(tmp_path, capfd):
  """With log_every=2 the loop runs the step without the three global norms on odd steps
  (a second compiled step); every written line still holds them, finite."""
  workdir = str(tmp_path / 'sparse_log')
  capfd.readouterr()
  train(quick(*LEAN, 'steps=5', 'log_every=2', 'checkpoint_every=0'), workdir)
  assert 'decomp: ' not in capfd.readouterr().err  # quiet=true: no phase lines, no bar
  records = logs.read_steps(workdir)
  assert [r['step'] for r in records] == [2, 4, 5]
  for r in records:
    assert np.isfinite([r['grad_norm'], r['update_norm'], r['param_norm']]).all(), r


def test_kill_and_resume_is_exact(tmp_path):
  """SIGKILL a CLI run after its first checkpoint; `train` on the same workdir must finish with
  bit-identical parameters and step log to an uninterrupted run."""
  overrides = [*LEAN, 'steps=40', 'checkpoint_every=3', 'example_log_every=1']
  reference = str(tmp_path / 'reference')
  train(quick(*overrides), reference)

  killed = str(tmp_path / 'killed')
  cmd = [sys.executable, '-m', 'decomp.train', '--workdir', killed, '--config',
         'playground_quick', '--set', *overrides]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.time() + 120
  try:
    while time.time() < deadline:
      if proc.poll() is not None:
        raise AssertionError(f'the run ended before it was killed: {proc.stderr.read()[-2000:]}')
      # Kill once a checkpoint is committed (Orbax renames its directory into place) and later
      # steps were logged, so the resumed run must drop them and recompute them.
      committed = [int(d) for d in os.listdir(os.path.join(killed, 'checkpoints'))
                   if d.isdigit()] if os.path.isdir(os.path.join(killed, 'checkpoints')) else []
      steps = logs.read_steps(killed)
      if committed and steps and steps[-1]['step'] > max(committed):
        break
      time.sleep(0.005)
    else:
      raise AssertionError('the CLI run made no progress')
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  logged = [r['step'] for r in logs.read_steps(killed)]
  latest = ckpt_lib.Checkpoints(killed).latest_step()
  assert latest is not None and latest < logged[-1] < 40, (latest, logged[-1])

  train(quick(*overrides), killed)

  strip = lambda recs: [{k: v for k, v in r.items() if k not in ('examples_per_s', 'tokens_per_s',
                                                                 'step_time_s')} for r in recs]
  assert strip(logs.read_steps(killed)) == strip(logs.read_steps(reference))
  ref_params, _ = _final_params(reference)
  got_params, _ = _final_params(killed)
  for (path, ref), (_, got) in zip(ref_params, got_params):
    np.testing.assert_array_equal(got, ref, err_msg=str(path))
  ref_ex, got_ex = logs.read_examples(reference), logs.read_examples(killed)
  assert set(ref_ex) == set(got_ex)
  for key in ref_ex:
    np.testing.assert_array_equal(got_ex[key], ref_ex[key], err_msg=key)


def test_random_label_head_resumes_exactly(tmp_path):
  """A ``label_head=random`` run that lost its last checkpoint resumes from the one before and
  ends bit-identical to the uninterrupted run: the random label rows are restored as trained
  state (with their Adam moments), not drawn again."""
  overrides = [*LEAN, 'label_head=random', 'steps=6', 'checkpoint_every=3', 'keep_checkpoints=3']
  reference = str(tmp_path / 'reference')
  train(quick(*overrides), reference)
  ref_params, _ = _final_params(reference)
  assert any('random_label_rows' in jax.tree_util.keystr(path) for path, _ in ref_params)

  crashed = str(tmp_path / 'crashed')
  shutil.copytree(reference, crashed)
  # What a crash between the checkpoints of steps 3 and 6 leaves: step 6's checkpoint missing,
  # steps 4-6 logged (the resumed run must drop and recompute them).
  shutil.rmtree(os.path.join(crashed, 'checkpoints', '6'))
  os.remove(os.path.join(crashed, 'results.json'))
  assert ckpt_lib.Checkpoints(crashed).latest_step() == 3
  train(quick(*overrides), crashed)
  got_params, meta = _final_params(crashed)
  assert meta['step'] == 6
  for (path, ref), (_, got) in zip(ref_params, got_params):
    np.testing.assert_array_equal(got, ref, err_msg=jax.tree_util.keystr(path))
  strip = lambda recs: [{k: v for k, v in r.items() if k not in ('examples_per_s', 'tokens_per_s',
                                                                 'step_time_s')} for r in recs]
  assert strip(logs.read_steps(crashed)) == strip(logs.read_steps(reference))


def test_trains_on_mrb_jsonl(tmp_path):
  """A directory of MRB-style JSONL splits (two positives per query) trains and evaluates."""
  from decomp.data import mrb
  from decomp.data.playground import Playground, PlaygroundConfig
  world = Playground(PlaygroundConfig(seed=3, positives=2, negatives=5, tasks=('t2t', 'i2t')))
  data_dir = tmp_path / 'mrb'
  data_dir.mkdir()
  for split, count in (('train', 12), ('val', 4), ('test', 6)):
    mrb.write_jsonl(world.groups(split, 0, count), str(data_dir / f'{split}.jsonl'))
  workdir = str(tmp_path / 'run')
  results = train(quick(*LEAN, f'data={data_dir}', 'steps=3', 'negatives=3', 'final_eval=true',
                        'test_groups=0', 'example_log_every=1'), workdir)
  assert results['test']['num_queries'] == 6
  per_task = results['test']['sft']['per_task']
  assert set(per_task) == {'t2t', 'i2t'}
  examples = logs.read_examples(workdir)
  # Training lists: one positive and 3 negatives per group; 12 groups cycle in seeded epochs.
  assert len(examples['step']) == 3 * 8 * 4
  assert (examples['label'].reshape(-1, 4).sum(axis=1) == 1).all()
  first_epoch = examples['query_id'][examples['step'] <= 1]
  assert len(set(first_epoch)) == 8 and set(first_epoch) <= {f'train-{i}' for i in range(12)}
  with pytest.raises(ValueError, match='offers only 5 negatives'):
    train(quick(*LEAN, f'data={data_dir}', 'negatives=6'), str(tmp_path / 'bad'))
