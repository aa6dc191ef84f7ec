"""Multi-host training for real: 2 processes x 2 CPU devices (jax.distributed, gloo collectives)
must log the same losses, per-example rows and metrics as 1 process with 4 devices."""

import os
import socket
import subprocess
import sys

import numpy as np

from decomp.train import checkpoint as ckpt_lib
from decomp.train import config as config_lib
from decomp.train import overrides as overrides_lib
from decomp.train import recipes
from decomp.train import logs
from decomp.train.loop import train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OVERRIDES = ['vision=false', 'num_layers=1', 'steps=4', 'checkpoint_every=2', 'eval_every=2',
             'eval_groups=8', 'test_groups=8', 'example_log_every=2', 'quiet=true']


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
  workdir = str(tmp_path / 'multi')
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'decomp.train', '--workdir', workdir, '--config',
       'playground_quick', '--coordinator', f'127.0.0.1:{port}', '--num-processes', '2',
       '--process-id', str(i), '--cpu-collectives', 'gloo', '--set', *OVERRIDES],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]

  single = str(tmp_path / 'single')
  cfg = overrides_lib.apply_overrides(recipes.get_config('playground_quick'),
                                   [*OVERRIDES, 'num_devices=4'])
  expected = train(cfg, single)

  outputs = []
  try:
    for proc in procs:
      out, _ = proc.communicate(timeout=240)
      outputs.append(out)
      assert proc.returncode == 0, out[-3000:]
  finally:  # one process failing leaves the other waiting in a collective
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()

  got, ref = logs.columns(logs.read_steps(workdir)), logs.columns(logs.read_steps(single))
  np.testing.assert_array_equal(got['step'], [1, 2, 3, 4])
  for key in ('loss', 'cl_loss', 'objective', 'grad_norm', 'param_norm', 'w_neg_mean'):
    np.testing.assert_allclose(got[key], ref[key], rtol=1e-5, err_msg=key)
  # Each process wrote its own rows; together they are the single process's rows, in order.
  shards = [os.path.basename(p) for _, p in logs.example_shards(workdir)]
  assert shards == ['00000002.npz', '00000002.p1.npz', '00000004.npz', '00000004.p1.npz']
  got_ex, ref_ex = logs.read_examples(workdir), logs.read_examples(single)
  assert set(got_ex) == set(ref_ex)
  for key in ref_ex:
    if ref_ex[key].dtype.kind == 'f':
      np.testing.assert_allclose(got_ex[key], ref_ex[key], rtol=1e-5, atol=1e-6, err_msg=key)
    else:
      np.testing.assert_array_equal(got_ex[key], ref_ex[key], err_msg=key)
  # Metrics gathered from both processes' shares of each evaluation batch.
  results = logs.read_json(os.path.join(workdir, 'results.json'))
  assert results['test']['num_queries'] == 8
  np.testing.assert_allclose(results['test']['ndcg@10'], expected['test']['ndcg@10'], rtol=1e-6)
  assert [e['step'] for e in logs.read_evals(workdir)] == [2, 4]
  # Written once: one steps.jsonl line per step, one results line printed (process 0).
  assert sum('"workdir"' in out for out in outputs) == 1
  assert ckpt_lib.Checkpoints(workdir).all_steps() == [2, 4]
  params, _ = ckpt_lib.load_state(workdir)
  ref_params, _ = ckpt_lib.load_state(single)
  import jax
  for a, b in zip(jax.tree.leaves(params['params']), jax.tree.leaves(ref_params['params'])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
