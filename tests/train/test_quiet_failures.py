"""Nothing silent, round two (issue 28): a full disk and Ctrl-C each end a run with one line,
no thread tracebacks, no crash, and a workdir the same command resumes."""

import errno
import os
import resource
import signal
import subprocess
import sys
import textwrap

import pytest

from decomp.train import checkpoint as ckpt_lib
from decomp.train import interrupt
from decomp.train import logs
from decomp.train import overrides as overrides_lib
from decomp.train import recipes
from decomp.train import workdir as workdir_lib
from decomp.train.loop import train

# The CLI runs start through a preexec function (a fork): JAX warns about forks once started.
pytestmark = pytest.mark.filterwarnings(r'ignore:os.fork\(\) was called:RuntimeWarning')

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# One program for every run of this module: the first test compiles it, the module's XLA cache
# serves the others (the CLI subprocesses too).
RUN = ['vision=false', 'num_layers=1', 'eval_every=0', 'final_eval=false', 'quiet=true',
       'example_log_every=0', 'steps=4', 'checkpoint_every=2', 'keep_checkpoints=3']


def quick(*overrides):
  return overrides_lib.apply_overrides(recipes.get_config('playground_quick'), list(overrides))


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
  workdir = str(tmp_path / 'interrupted')
  finish = ckpt_lib.Checkpoints.save

  def save_then_ctrl_c(self, step, state, meta):  # Ctrl-C arrives while step 2 is saved
    finish(self, step, state, meta)
    if step == 2:
      os.kill(os.getpid(), signal.SIGINT)

  monkeypatch.setattr(ckpt_lib.Checkpoints, 'save', save_then_ctrl_c)
  with interrupt.handling_sigint(), pytest.raises(interrupt.Interrupted) as stopped:
    train(quick(*RUN), workdir)
  monkeypatch.undo()
  assert str(stopped.value) == 'stopped after step 2; the last checkpoint is step 2'
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
  assert not os.path.exists(os.path.join(workdir, workdir_lib.LOCK_FILE))
  assert [r['step'] for r in logs.read_steps(workdir)] == [1, 2]
  assert train(quick(*RUN), workdir)['final']['step'] == 4
  assert [r['step'] for r in logs.read_steps(workdir)] == [1, 2, 3, 4]


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


def test_ctrl_c_while_compiling_exits_130_with_one_line(tmp_path):
  workdir = str(tmp_path / 'compiling')
  env_cache = os.environ.pop('JAX_COMPILATION_CACHE_DIR', None)  # compile for real
  try:
    proc = _cli(workdir, script=CTRL_C_WHILE_COMPILING)
  finally:
    if env_cache is not None:
      os.environ['JAX_COMPILATION_CACHE_DIR'] = env_cache
  assert proc.returncode == interrupt.EXIT_STATUS, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines() == [
      'interrupted: stopped before the run finished; rerun the same command to resume']
  assert not os.path.exists(os.path.join(workdir, workdir_lib.LOCK_FILE))
