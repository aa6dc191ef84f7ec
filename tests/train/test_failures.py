"""Nothing silent (issue 18): a diverged run fails, a corrupt checkpoint is detected and the last
good one used, a workdir is locked, and bad input is refused before work starts. Issue 28: a full
disk and Ctrl-C end a run with one line and a workdir that resumes."""

import errno
import glob
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import threading

import jax
import numpy as np
import pytest

from decomp.train import checkpoint as ckpt_lib
from decomp.train import config as config_lib
from decomp.train import overrides as overrides_lib
from decomp.train import recipes
from decomp.train import logs
from decomp.train import nonfinite
from decomp.train import data as data_lib
from decomp.train import interrupt
from decomp.train import workdir as workdir_lib
from decomp.train.errors import CorruptCheckpointError, WorkdirLockedError
from decomp.train.loop import train

LEAN = ['vision=false', 'num_layers=1', 'eval_every=0', 'final_eval=false', 'quiet=true',
        'example_log_every=0']
# Every run of this module compiles this one program (the XLA cache serves the others).
RUN = [*LEAN, 'steps=4', 'checkpoint_every=2', 'keep_checkpoints=3']


def quick(*overrides):
  return overrides_lib.apply_overrides(recipes.get_config('playground_quick'),
                                    ['quiet=true', *overrides])


def _params(workdir, step=None):
  state, meta = ckpt_lib.load_state(workdir, step)
  return jax.tree_util.tree_flatten_with_path(state['params'])[0], meta


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """A finished 4-step run with checkpoints at steps 2 and 4."""
  workdir = str(tmp_path_factory.mktemp('reference'))
  train(quick(*RUN), workdir)
  return workdir


# --- case 1: a diverged run ----------------------------------------------------------------------

def test_diverged_run_stops_with_a_named_error_and_keeps_the_last_good_checkpoint(tmp_path,
                                                                                 capsys):
  from decomp.train.__main__ import main
  workdir = str(tmp_path / 'diverged')
  # Step 1 has learning rate 0 (warm-up), step 2 the peak: its update overflows.
  argv = ['--workdir', workdir, '--config', 'playground_quick', '--set', *RUN,
          'checkpoint_every=1', 'learning_rate=1e38']
  assert main(argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: the run diverged: step 2 gave non-finite '
                                             'parameters'), err
  assert 'the last good checkpoint is step 1' in err[0]
  assert not os.path.exists(os.path.join(workdir, 'results.json'))
  assert not os.path.exists(os.path.join(workdir, workdir_lib.LOCK_FILE))
  assert ckpt_lib.Checkpoints(workdir).all_steps() == [1]
  params, meta = _params(workdir)
  assert meta['step'] == 1 and all(np.isfinite(p).all() for _, p in params)
  records = logs.read_steps(workdir)
  assert [r['step'] for r in records] == [1, 2] and records[1]['param_norm'] is None


def test_skip_step_drops_non_finite_updates_and_counts_them(tmp_path):
  workdir = str(tmp_path / 'skipping')
  results = train(quick(*RUN, 'learning_rate=1e38', 'on_nonfinite=skip_step',
                        'max_skipped_fraction=1'), workdir)
  records = logs.read_steps(workdir)
  skipped = [r['step'] for r in records if r['skipped']]
  assert skipped and skipped[0] == 2
  assert [r['skipped_steps'] for r in records] == list(np.cumsum([r['skipped'] for r in records]))
  assert results['final']['skipped_steps'] == results['skipped_steps'] == len(skipped)
  params, meta = _params(workdir)
  assert meta['skipped_steps'] == len(skipped)
  assert all(np.isfinite(p).all() for _, p in params)


def test_too_many_skipped_steps_fail_by_name(tmp_path, capsys):
  """A diverging run under skip_step stops once more than max_skipped_fraction of its steps
  were skipped (default 10%): it exits 2 with one line, no results.json, not with a test NDCG."""
  from decomp.train.__main__ import main
  workdir = str(tmp_path / 'skipping')
  rc = main(['--workdir', workdir, '--config', 'playground_quick', '--set', *RUN,
             'learning_rate=1e38', 'on_nonfinite=skip_step'])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1 and 'non-finite steps by step 2' in err[0], err
  assert 'max_skipped_fraction=0.1' in err[0]
  assert not os.path.exists(os.path.join(workdir, 'results.json'))


def test_guard_flags_each_quantity_and_keeps_the_old_state():
  def step_fn(params, frozen, opt_state, step, batch):
    new = params + batch
    return new, opt_state + 1, {'scalars': {'loss': batch.sum(), 'objective': 0.0,
                                            'grad_norm': batch.max(), 'param_norm': new.sum()}}

  params, opt_state = jax.numpy.ones(2), jax.numpy.zeros(2)
  for skip in (False, True):
    guarded = jax.jit(nonfinite.guard_step(step_fn, skip=skip))
    new, opt, metrics = guarded(params, None, opt_state, 0, jax.numpy.array([1.0, np.inf]))
    flag = int(metrics['scalars'][nonfinite.KEY])
    assert nonfinite.quantities(flag) == ('loss', 'gradient', 'parameters')
    np.testing.assert_array_equal(new, [1.0, 1.0] if skip else [2.0, np.inf])
    np.testing.assert_array_equal(opt, [0.0, 0.0] if skip else [1.0, 1.0])
    _, _, metrics = guarded(params, None, opt_state, 0, jax.numpy.array([1.0, 2.0]))
    assert int(metrics['scalars'][nonfinite.KEY]) == 0


# --- cases 2, 3: corrupt checkpoints -------------------------------------------------------------

def _flip(step_dir):
  path = max(glob.glob(os.path.join(step_dir, 'model', 'ocdbt.process_0', 'd', '*')),
             key=os.path.getsize)
  data = bytearray(open(path, 'rb').read())
  middle = len(data) // 2
  data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
  open(path, 'wb').write(bytes(data))


def _truncate(step_dir):
  for path in glob.glob(os.path.join(step_dir, 'model', 'ocdbt.process_0', 'd', '*')):
    os.truncate(path, os.path.getsize(path) // 2)


def _empty_metadata(step_dir):
  open(os.path.join(step_dir, 'model', '_METADATA'), 'w').close()


def _empty_step(step_dir):
  shutil.rmtree(step_dir)
  os.makedirs(step_dir)


def _abstract(workdir):
  state, _ = ckpt_lib.load_state(workdir)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), state)


@pytest.mark.parametrize('checksums', [True, False], ids=['checksums', 'orbax-only'])
@pytest.mark.parametrize('corrupt, reason', [
    (_flip, 'does not match the checksum'),
    (_truncate, r'has \d+ bytes, \d+ were saved'),
    (_empty_metadata, r'model/_METADATA has 0 bytes'),
    (_empty_step, 'or incomplete: unreadable metadata'),
])
def test_corrupt_latest_step_is_reported_in_one_line_and_skipped(reference, tmp_path, capfd,
                                                                 caplog, corrupt, reason,
                                                                 checksums):
  workdir = str(tmp_path / 'run')
  shutil.copytree(reference, workdir)
  if not checksums:  # a step saved just before a kill may lack them: Orbax and finiteness
    if corrupt is _flip:  # a flip that still decodes cannot be told from a weight without them
      pytest.skip('needs the checksums')
    for path in glob.glob(os.path.join(workdir, 'checkpoints', '*', ckpt_lib.MANIFEST_FILE)):
      os.remove(path)
    reason = {_truncate: 'could not be read .*OUT_OF_RANGE', _empty_metadata: 'unreadable '
              'metadata .*JSONDecodeError'}.get(corrupt, reason)
  step_dir = os.path.join(workdir, 'checkpoints', '4')
  corrupt(step_dir)
  abstract = _abstract(reference)
  capfd.readouterr()
  with caplog.at_level(logging.WARNING, logger='decomp.train.checkpoint'):
    with ckpt_lib.Checkpoints(workdir) as checkpoints:
      state, meta = checkpoints.restore(abstract)
      assert checkpoints.skipped == [4]
      with pytest.raises(CorruptCheckpointError, match=f'checkpoint {step_dir} '):
        checkpoints.restore(abstract, step=4)  # an explicit step: no fallback
  assert meta['step'] == 2
  messages = [r.getMessage() for r in caplog.records if r.name == 'decomp.train.checkpoint']
  assert len(messages) == 1 and '\n' not in messages[0], messages
  assert messages[0].startswith(f'checkpoint {step_dir} ')
  assert messages[0].endswith('; falling back to step 2')
  import re
  assert re.search(reason, messages[0]), messages[0]
  noise = capfd.readouterr()
  assert 'Event loop is closed' not in noise.err + noise.out
  assert 'Traceback' not in noise.err + noise.out


def test_training_resumes_from_the_last_intact_step_bit_exact(reference, tmp_path, caplog):
  workdir = str(tmp_path / 'run')
  shutil.copytree(reference, workdir)
  os.remove(os.path.join(workdir, 'results.json'))
  _flip(os.path.join(workdir, 'checkpoints', '4'))
  with caplog.at_level(logging.WARNING, logger='decomp.train.checkpoint'):
    train(quick(*RUN), workdir)
  assert any('falling back to step 2' in r.getMessage() for r in caplog.records)
  # The corrupt step is kept aside, the run redid steps 3-4 exactly.
  assert os.listdir(os.path.join(workdir, ckpt_lib.CORRUPT_DIR)) == ['4']
  ref, _ = _params(reference)
  got, meta = _params(workdir)
  assert meta['step'] == 4
  for (path, a), (_, b) in zip(ref, got):
    np.testing.assert_array_equal(b, a, err_msg=jax.tree_util.keystr(path))


def test_no_intact_checkpoint_is_a_named_error(reference, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(reference, workdir)
  for step in (2, 4):
    _truncate(os.path.join(workdir, 'checkpoints', str(step)))
  with pytest.raises(CorruptCheckpointError, match=r'no intact checkpoint in .*checkpoints/4 is '
                     r'corrupt.*checkpoints/2 is corrupt'):
    train(quick(*RUN), workdir)


# --- case 4: late data checks --------------------------------------------------------------------

@pytest.fixture(scope='module')
def jsonl_data(tmp_path_factory):
  from decomp.data import mrb
  from decomp.data.playground import Playground, PlaygroundConfig
  world = Playground(PlaygroundConfig(seed=3, negatives=4, tasks=('t2t',)))
  directory = tmp_path_factory.mktemp('mrb')
  for split, count in (('train', 8), ('val', 2), ('test', 2)):
    mrb.write_jsonl(world.groups(split, 0, count), str(directory / f'{split}.jsonl'))
  return directory


@pytest.mark.parametrize('split, change, settings, error, message', [
    ('test', 'remove', [], FileNotFoundError, r'test.jsonl does not exist'),
    ('val', 'empty', ['eval_every=2'], ValueError,
     r'val.jsonl holds no groups, but eval_every=2 evaluates on it'),
    ('test', 'empty', [], ValueError, r'test.jsonl holds no groups, but final_eval=true'),
])
def test_missing_or_empty_splits_fail_before_the_workdir(jsonl_data, tmp_path, split, change,
                                                         settings, error, message):
  data = tmp_path / 'data'
  shutil.copytree(jsonl_data, data)
  path = data / f'{split}.jsonl'
  path.unlink() if change == 'remove' else path.write_text('\n')
  workdir = tmp_path / 'run'
  with pytest.raises(error, match=message):
    train(quick(*LEAN, f'data={data}', 'final_eval=true', *settings), str(workdir))
  assert not workdir.exists()
  # Splits the config does not evaluate on may be missing.
  if split == 'test':
    config_lib.validate(quick(*LEAN, f'data={data}'))


# --- cases 6, 10, 11: every input checked before the first step; a failed start is reusable ----

@pytest.mark.parametrize('override, message', [
    ('num_heads=0', 'num_heads=0: must be >= 1'),
    ('hidden_size=31', 'hidden_size=31: must be divisible by num_heads=2'),
    ('hidden_size=30', r'hidden_size=30: hidden_size / num_heads = 15 must be even'),
    ('num_kv_heads=3', 'num_kv_heads=3: must divide num_heads=2'),
    ('vision=true', None),  # (a valid control for the vision keys below)
    ('vision_heads=0', 'vision_heads=0: must be >= 1'),
    ('on_nonfinite=ignore', "on_nonfinite='ignore': expected one of"),
    ('weight_kwargs.tau=abc', "tau must be a number, got 'abc'"),
    ('weight_kwargs.tau=5', r'tau must be in \(0, 0.5\]'),
])
def test_bad_shapes_and_objective_values_fail_before_the_workdir(tmp_path, override, message):
  workdir = tmp_path / 'run'
  overrides = [*LEAN, override] + (['weight=tau_mask'] if 'tau' in override else [])
  if 'vision' in override:
    overrides = [o for o in overrides if o != 'vision=false'] + ['vision=true']
  if message is None:
    quick(*overrides)  # the sections accept it
    return
  with pytest.raises(ValueError, match=message):
    train(quick(*overrides), str(workdir))
  assert not workdir.exists()


@pytest.mark.parametrize('override, error, message', [
    ('label_words=yes,qqqzzz', ValueError, 'qqqzzz'),
    ('model=/nonexistent/model', ValueError, "model.path='/nonexistent/model': not 'playground'"),
])
def test_a_failed_start_leaves_the_workdir_reusable(tmp_path, override, error, message):
  workdir = str(tmp_path / 'run')
  with pytest.raises(error, match=message):
    train(quick(*LEAN, override), workdir)
  # Refused before the workdir exists, or with nothing left in it: no config.json, no lock.
  assert not os.path.exists(workdir) or os.listdir(workdir) == []
  workdir_lib.check_resumable(workdir, quick(*LEAN))  # a corrected command is not refused


# --- cases 7, 8: one run per workdir; checkpoints need their config ------------------------------

def test_a_live_lock_refuses_a_second_run(tmp_path):
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  with workdir_lib.WorkdirLock(workdir):
    with pytest.raises(WorkdirLockedError, match=rf'is in use by another run: pid {os.getpid()} '
                       r'on host .*run.lock'):
      train(quick(*RUN), workdir)
    assert os.listdir(workdir) == [workdir_lib.LOCK_FILE]  # nothing else written
  assert os.listdir(workdir) == []


def test_a_stale_lock_is_taken_over_with_a_message(tmp_path, caplog):
  path = tmp_path / workdir_lib.LOCK_FILE
  path.write_text(json.dumps({'pid': 999999, 'host': 'gone', 'since': 'then'}))
  with caplog.at_level(logging.WARNING, logger='decomp.train.workdir'):
    with workdir_lib.WorkdirLock(str(tmp_path)):
      assert json.loads(path.read_text())['pid'] == os.getpid()
  assert 'taking over the stale lock of pid 999999 on host gone' in caplog.text
  assert not path.exists()


def test_checkpoints_without_their_config_are_refused(reference, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(reference, workdir)
  os.remove(os.path.join(workdir, 'config.json'))
  with pytest.raises(ValueError, match=r'holds checkpoints \(steps \[2, 4\]\) but no config.json'):
    train(quick(*RUN, 'weight=cl'), workdir)


# --- case 9: labels checked where the trainer feeds them ------------------------------------------

def test_the_trainer_checks_batch_labels_on_the_host(tmp_path, monkeypatch):
  original = data_lib.GroupData.train_batch

  def bad_labels(self, *args, **kwargs):
    arrays, meta = original(self, *args, **kwargs)
    arrays['labels'] = arrays['labels'].astype(np.float32)
    arrays['labels'][0, 1] = 0.5
    return arrays, meta

  monkeypatch.setattr(data_lib.GroupData, 'train_batch', bad_labels)
  with pytest.raises(ValueError, match=r'training batch of step 1: label 0.5 at \(0, 1\)'):
    train(quick(*RUN), str(tmp_path / 'run'))


# --- case 11: the CLI prints one line for named errors --------------------------------------------

def test_cli_prints_one_error_line_for_checks_inside_train(jsonl_data, tmp_path, capsys):
  from decomp.train.__main__ import main
  data = tmp_path / 'data'
  shutil.copytree(jsonl_data, data)
  (data / 'test.jsonl').unlink()
  argv = ['--workdir', str(tmp_path / 'run'), '--config', 'playground_quick', '--set', *LEAN,
          f'data={data}', 'final_eval=true']
  assert main(argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: config data=') and 'test.jsonl' in err[0]
  with pytest.raises(FileNotFoundError):
    main([*argv, '--debug'])


# --- issue 28: a full disk and Ctrl-C end a run with one line, no thread tracebacks, no crash,
# and a workdir the same command resumes (the CLI runs read this module's XLA cache) ---

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cli(workdir, *, preexec_fn=None, script=None):
  # The XLA cache is read, never written (its entries could hit the file-size limit).
  env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='3',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=str(2**40))
  argv = ['--workdir', workdir, '--config', 'playground_quick', '--set', *RUN]
  cmd = ([sys.executable, '-c', script, *argv] if script
         else [sys.executable, '-m', 'decomp.train', *argv])
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                        preexec_fn=preexec_fn)


def _file_size_limit(limit):
  def setup():  # writes past the limit fail with EFBIG instead of killing the process
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
  return setup


def test_ctrl_c_inside_the_loop_stops_after_the_step_and_resumes(tmp_path, monkeypatch):
  """A first Ctrl-C in the training loop waits for the step to end: the run stops between steps
  with the last checkpoint named, the workdir unlocked; the same call then finishes it."""
  if threading.current_thread() is not threading.main_thread():
    pytest.skip('Python runs signal handlers in the main thread only')
  workdir = str(tmp_path / 'interrupted')
  finish = ckpt_lib.Checkpoints.save

  def save_then_ctrl_c(self, step, state, meta):  # Ctrl-C arrives while step 2 is saved
    finish(self, step, state, meta)
    if step == 2:
      os.kill(os.getpid(), signal.SIGINT)

  monkeypatch.setattr(ckpt_lib.Checkpoints, 'save', save_then_ctrl_c)
  before = signal.getsignal(signal.SIGINT)  # Python's default; an xdist worker sets its own
  with interrupt.handling_sigint(), pytest.raises(interrupt.Interrupted) as stopped:
    train(quick(*RUN), workdir)
  monkeypatch.undo()
  assert str(stopped.value) == 'stopped after step 2; the last checkpoint is step 2'
  assert signal.getsignal(signal.SIGINT) is before  # restored
  assert not os.path.exists(os.path.join(workdir, workdir_lib.LOCK_FILE))
  assert [r['step'] for r in logs.read_steps(workdir)] == [1, 2]
  assert train(quick(*RUN), workdir)['final']['step'] == 4
  assert [r['step'] for r in logs.read_steps(workdir)] == [1, 2, 3, 4]


# The CLI runs start through a preexec function (a fork): JAX warns about forks once started.
@pytest.mark.filterwarnings(r'ignore:os.fork\(\) was called:RuntimeWarning')
def test_a_full_disk_is_one_error_line_and_the_workdir_resumes(tmp_path):
  """Under ``ulimit -f`` (checkpoint files too large, the logs small enough) Orbax's save threads
  fail with EFBIG: one ``error:`` line naming the step and the cause, none of their tracebacks
  (there were hundreds of lines), the logs kept, the workdir unlocked; without the limit the same
  run then finishes."""
  workdir = str(tmp_path / 'full')
  proc = _cli(workdir, preexec_fn=_file_size_limit(20_000))
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert len(lines) == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert lines[0].startswith('error: could not save checkpoint step 2 in '), lines
  assert 'File too large' in lines[0] and 'ulimit -f' in lines[0], lines
  assert [r['step'] for r in logs.read_steps(workdir)][:2] == [1, 2]
  assert not os.path.exists(os.path.join(workdir, workdir_lib.LOCK_FILE))

  assert train(quick(*RUN), workdir)['final']['step'] == 4
  assert ckpt_lib.Checkpoints(workdir).all_steps() == [2, 4]


def test_a_failed_log_write_names_its_file_and_is_one_error_line(tmp_path, monkeypatch,
                                                                   capsys):
  path = str(tmp_path / 'steps.jsonl')
  logger = logs.JsonLinesLogger(path)
  logger.log({'step': 1})
  limit = resource.getrlimit(resource.RLIMIT_FSIZE)
  handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(path) + 10, limit[1]))
  try:
    with pytest.raises(OSError) as failed:
      logger.log({'step': 2, 'loss': 1.0})
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, limit)
    signal.signal(signal.SIGXFSZ, handler)
  assert (failed.value.errno, failed.value.filename) == (errno.EFBIG, path)
  logger.close()  # nothing is left buffered to fail again
  assert logs.read_jsonl(path) == [{'step': 1}]  # the torn line is skipped

  from decomp.train import __main__ as cli
  def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
  monkeypatch.setattr('decomp.train.loop.train', full_disk)
  assert cli.main(['--workdir', str(tmp_path / 'run'), '--config', 'playground_quick']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(f'error: could not write {path}: No space left'), err


# The CLI, with Ctrl-C pressed while XLA compiles the first program of the run (before the
# loop: nothing defers it). It used to print a KeyboardInterrupt traceback, then crash at
# interpreter shutdown (rc -11) with XLA's compile threads still running.
CTRL_C_WHILE_COMPILING = textwrap.dedent('''
    import os, runpy, signal, sys, threading
    from jax._src import compiler
    compile_first = compiler.backend_compile_and_load
    def compile_with_ctrl_c(*args, **kwargs):
      threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()
      compiler.backend_compile_and_load = compile_first
      return compile_first(*args, **kwargs)
    compiler.backend_compile_and_load = compile_with_ctrl_c
    sys.argv[0] = 'decomp.train'
    runpy.run_module('decomp.train', run_name='__main__', alter_sys=True)
''')


@pytest.mark.filterwarnings(r'ignore:os.fork\(\) was called:RuntimeWarning')
def test_ctrl_c_while_compiling_exits_130_with_one_line(tmp_path, monkeypatch):
  workdir = str(tmp_path / 'compiling')
  for cache in ('JAX_COMPILATION_CACHE_DIR', 'DECOMP_COMPILATION_CACHE'):  # compile for real
    monkeypatch.delenv(cache, raising=False)
  proc = _cli(workdir, script=CTRL_C_WHILE_COMPILING)
  assert proc.returncode == interrupt.EXIT_STATUS, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines() == [
      'interrupted: stopped before the run finished; rerun the same command to resume']
  assert not os.path.exists(os.path.join(workdir, workdir_lib.LOCK_FILE))


@pytest.mark.parametrize('split, output, message', [
    ('test', '../x.json', 'give a plain file name'),
    ('test', '/tmp/x.json', 'give a plain file name'),
    ('test', '..', 'give a plain file name'),
    ('../../run', None, "split must be 'val' or 'test'"),
])
def test_evaluation_split_and_output_are_checked_before_anything_is_read(tmp_path, split, output,
                                                                         message):
  from decomp.train.loop import evaluate_workdir
  with pytest.raises(ValueError, match=message):
    evaluate_workdir(str(tmp_path), split=split, output=output)
