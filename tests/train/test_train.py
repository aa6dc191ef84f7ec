"""End-to-end runs of decomp.train on the playground (tiny models, 8 simulated CPU devices)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from decomp.data.playground import ATTRIBUTES
from decomp.train import checkpoint as ckpt_lib
from decomp.train import config as config_lib
from decomp.train import overrides as overrides_lib
from decomp.train import recipes
from decomp.train import logs
from decomp.train import data as data_lib
from decomp.train.loop import evaluate_workdir, train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Text-only, no evaluation: the cheapest compile, for the equivalence tests.
LEAN = ['vision=false', 'num_layers=1', 'eval_every=0', 'final_eval=false', 'quiet=true',
        'example_log_every=0']


def quick(*overrides):
  return overrides_lib.apply_overrides(recipes.get_config('playground_quick'),
                                    ['quiet=true', *overrides])


@pytest.fixture(scope='module')
def quick_run(tmp_path_factory):
  """One short multimodal run with every log on (shared by several tests); what it said on
  stderr is kept in ``quick_run_stderr``."""
  import contextlib
  import io
  workdir = str(tmp_path_factory.mktemp('quick'))
  cfg = quick('steps=12', 'eval_every=6', 'example_log_every=4', 'checkpoint_every=6',
              'eval_groups=12', 'test_groups=24', 'learning_rate=5e-3', 'quiet=false')
  start = time.perf_counter()
  stderr = io.StringIO()
  with contextlib.redirect_stderr(stderr):
    results = train(cfg, workdir)
  QUICK_RUN_STDERR.append(stderr.getvalue())
  return workdir, cfg, results, time.perf_counter() - start


QUICK_RUN_STDERR = []


def test_the_run_says_what_it_is_doing(quick_run):
  """One line per phase before the first step, step time and tokens/s in the bar, a bar for
  the final evaluation (and nothing with quiet=true: test_steps_between_log_lines...)."""
  said = QUICK_RUN_STDERR[0]
  lines = [l for l in said.replace('\r', '\n').splitlines() if l.startswith('decomp: ')]
  assert [l.split(':')[1].strip(' .') for l in lines] == [
      'mesh', 'model loaded', 'compiling the training step', 'compiling the training step'], lines
  assert lines[0].startswith('decomp: mesh: data=8 x model=1 over 8 cpu device(s)'), lines[0]
  assert ' parameters (' in lines[1] and 'float32 weights' in lines[1], lines[1]
  assert lines[3].startswith('decomp: compiling the training step: done in '), lines[3]
  assert 's_step=' in said and 'tok_s=' in said
  assert 'evaluate test (24 queries)' in said and 'evaluate val (12 queries)' in said


def test_workdir_layout_and_step_log(quick_run):
  workdir, cfg, results, _ = quick_run
  assert sorted(os.listdir(workdir)) == ['checkpoints', 'config.json', 'eval.jsonl', 'examples',
                                         'results.json', 'steps.jsonl']
  assert overrides_lib.from_file(os.path.join(workdir, 'config.json')) == cfg
  records = logs.read_steps(workdir)
  assert [r['step'] for r in records] == list(range(1, 13))
  for r in records:
    assert set(logs.STEP_KEYS) <= set(r), set(logs.STEP_KEYS) - set(r)
    assert np.isfinite([r[k] for k in logs.STEP_KEYS]).all()
  # SFT objective: logged loss is the SFT loss; SFT weights are -(1-s) < 0 for positives.
  assert all(r['loss'] == r['sft_loss'] for r in records)
  assert all(-1 < r['w_pos_q10'] <= r['w_pos_q50'] <= r['w_pos_q90'] < 0 for r in records)
  assert all(0 < r['w_neg_q10'] <= r['w_neg_q50'] <= r['w_neg_q90'] < 1 for r in records)
  # Warm-up then cosine: lr 0 at the first step, the peak after warm-up.
  assert records[0]['learning_rate'] == 0.0
  assert records[cfg.optim.warmup_steps]['learning_rate'] == pytest.approx(cfg.optim.learning_rate)
  assert records[0]['update_norm'] == 0.0 and records[1]['update_norm'] > 0
  assert [c for c in ckpt_lib.Checkpoints(workdir).all_steps()] == [6, 12]
  assert results == logs.read_json(os.path.join(workdir, 'results.json'))


def test_loss_decreases(quick_run):
  workdir, _, _, _ = quick_run
  loss = logs.columns(logs.read_steps(workdir))['loss']
  assert loss[-3:].mean() < loss[:3].mean() - 0.2, loss


def test_per_example_log_columns(quick_run):
  workdir, cfg, _, _ = quick_run
  data = logs.read_examples(workdir)
  expected = set(logs.EXAMPLE_COLUMNS) - {'grad_norm'}
  assert set(data) == expected
  rows = cfg.data.batch_size * cfg.list_size
  np.testing.assert_array_equal(np.unique(data['step']), [4, 8, 12])
  assert len(data['step']) == 3 * rows
  assert all(len(v) == 3 * rows for v in data.values())
  # One positive per query, and ids consistent with the playground's naming.
  for step in (4, 8, 12):
    sel = data['step'] == step
    queries = np.unique(data['query_id'][sel])
    assert len(queries) == cfg.data.batch_size
    assert all(data['label'][sel & (data['query_id'] == q)].sum() == 1 for q in queries)
  assert all(d.startswith(q) for d, q in zip(data['doc_id'], data['query_id']))
  assert set(data['doc_kind'][data['label'] == 1]) == {'positive'}
  assert set(data['task']) <= {'t2t', 't2i', 'i2t', 'i2i', 'it2it', 't2vd'}
  # Independent recomputation of W_SFT from the logged score s = P(yes): -(1-s) / s.
  s = data['sft_score'].astype(np.float64)
  expected_w = np.where(data['label'] == 1, -(1 - s), s)
  np.testing.assert_allclose(data['weight'], expected_w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(data['update'], np.abs(data['weight']) * data['direction_norm'],
                             rtol=1e-5, atol=1e-7)
  # D_SFT = M_y - M_n: one norm per step (the LM head is frozen here, so one per run).
  for step in (4, 8, 12):
    norms = data['direction_norm'][data['step'] == step]
    np.testing.assert_allclose(norms, norms[0], rtol=1e-6)
  assert data['sft_score'].dtype == np.float32 and data['query_id'].dtype.kind == 'U'


def test_evaluation_results(quick_run):
  workdir, cfg, results, _ = quick_run
  evals = logs.read_evals(workdir)
  assert [e['step'] for e in evals] == [6, 12]
  test = results['test']
  assert test['split'] == 'test' and test['num_queries'] == 24 and test['score'] == 'sft'
  assert 0 <= test['ndcg@10'] <= 1 and test['ndcg@10'] == test['sft']['queries']['ndcg@10']
  per_task = test['sft']['per_task']
  assert sum(t['num_queries'] for t in per_task.values()) == 24
  assert set(test['cl']['per_modality']) <= {'single', 'cross', 'fused'}
  # MRR@10 >= recall@1 for lists with one relevant document.
  assert test['mrr@10'] >= test['recall@1']
  # Playground runs read their ranking attribute by attribute, at every evaluation.
  for record in (test, *evals):
    for score in ('sft', 'cl'):
      pairs = record['pairwise'][score]
      assert set(pairs) <= {*ATTRIBUTES, '2+ attributes', 'random'} and 'random' in pairs
      assert all(0 <= r['accuracy'] <= 1 for r in pairs.values())
  pairs = sum(r['pairs'] for r in test['pairwise']['sft'].values())
  assert pairs == 24 * data_lib.playground_config(cfg).negatives  # one positive per list


def test_finished_run_started_again_changes_nothing(quick_run):
  workdir, cfg, results, _ = quick_run
  before = open(os.path.join(workdir, 'steps.jsonl')).read()
  again = train(cfg, workdir)
  assert open(os.path.join(workdir, 'steps.jsonl')).read() == before
  assert again['test']['ndcg@10'] == results['test']['ndcg@10']
  assert [e['step'] for e in logs.read_evals(workdir)] == [6, 12]
  with pytest.raises(ValueError, match='different config.*seed: 0 -> 1'):
    train(overrides_lib.apply_overrides(cfg, ['seed=1']), workdir)


def test_resume_check_fills_fields_added_since_the_run(tmp_path):
  """A workdir written before a config field existed resumes under that field's default."""
  from decomp.train.workdir import check_resumable as _check_resumable
  cfg = quick()
  stored = config_lib.to_dict(cfg)
  del stored['readout']['label_pooling']  # as written by a version without the field
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump(stored, f)
  _check_resumable(str(tmp_path), cfg)
  with pytest.raises(ValueError, match="readout.label_pooling: 'first' -> 'pairs'"):
    _check_resumable(str(tmp_path), overrides_lib.apply_overrides(cfg, ['label_pooling=pairs']))


def test_evaluate_workdir_reproduces_and_extends_the_test(quick_run):
  workdir, cfg, results, _ = quick_run
  # A save in progress (what a still-training run leaves) must survive: evaluation only reads.
  in_progress = os.path.join(workdir, 'checkpoints', '18.orbax-checkpoint-tmp-1700000000')
  os.makedirs(in_progress)
  files = sorted(os.listdir(workdir))
  steps_log = open(os.path.join(workdir, 'steps.jsonl')).read()
  again = evaluate_workdir(workdir)
  assert again['step'] == cfg.optim.steps and again['num_queries'] == 24
  for score in ('sft', 'cl'):
    assert again[score]['queries'] == pytest.approx(results['test'][score]['queries'], abs=1e-6)
  # An earlier checkpoint scores differently (the model moved between steps 6 and 12).
  early = evaluate_workdir(workdir, step=6)
  assert early['step'] == 6 and early['sft']['queries'] != again['sft']['queries']
  larger = evaluate_workdir(workdir, overrides=('test_groups=40',), output='test_40.json')
  assert larger['num_queries'] == 40 and larger['overrides'] == ['test_groups=40']
  assert logs.read_json(os.path.join(workdir, 'test_40.json')) == json.loads(json.dumps(larger))
  os.remove(os.path.join(workdir, 'test_40.json'))
  # Read only: nothing else in the workdir changed.
  assert sorted(os.listdir(workdir)) == files
  assert open(os.path.join(workdir, 'steps.jsonl')).read() == steps_log
  assert os.path.isdir(in_progress)
  os.rmdir(in_progress)
  assert ckpt_lib.Checkpoints(workdir).all_steps() == [6, 12]


@pytest.mark.parametrize('kwargs, message', [
    ({'overrides': ('learning_rate=1.0',)}, "'optim.learning_rate' changes what was trained"),
    ({'overrides': ('playground.synonym_rate=0.5',)}, r"playground keys \['synonym_rate'\]"),
    ({'split': 'train'}, "split must be 'val' or 'test'"),
])
def test_evaluate_workdir_refuses_training_changes(quick_run, kwargs, message):
  with pytest.raises(ValueError, match=message):
    evaluate_workdir(quick_run[0], **kwargs)


@pytest.mark.parametrize('override, message', [
    (['weight=nope'], "unknown weight 'nope'"),
    (['direction=up'], "unknown direction 'up'"),
    (['negatives=8'], 'negatives=8: the data offers only 7'),
    (['mesh={"data": 3}'], 'uses 3 devices but 8'),
    (['batch_size=6'], 'batch_size=6: must be divisible by the 8'),
    (['playground={"bogus": 1}'], "unknown PlaygroundConfig keys \\['bogus'\\]"),
    (['label_words=["yes","no","true"]', 'label_pooling=pairs'], 'word pairs: an even count'),
    (['label_pooling=mean'], "label_pooling='mean': expected one of"),
    (['label_head=fresh'], "label_head='fresh': expected one of"),
])
def test_bad_config_fails_before_compute(tmp_path, override, message):
  workdir = str(tmp_path / 'run')
  start = time.perf_counter()
  with pytest.raises(ValueError, match=message):
    train(quick(*override), workdir)
  assert not os.path.exists(workdir)
  assert time.perf_counter() - start < 5


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
