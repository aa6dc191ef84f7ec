"""End-to-end runs of decomp.train on the playground around one shared quick run (tiny models, 8
simulated CPU devices); runs that start their own are in test_train_runs.py."""

import json
import os
import time

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
