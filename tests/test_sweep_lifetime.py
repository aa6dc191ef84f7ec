"""decomp/sweep.py around its run processes: overrides validated before any run starts,
runs that die with the sweep, locked workdirs waited for, failures named from their train.log.

The runs are a stand-in module (``sweep.TRAIN_MODULE``) that behaves by arm name, so no model is
trained here."""

import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from decomp import sweep  # noqa: E402

# Run processes start through a preexec function (process group, parent-death signal), i.e. a
# fork; JAX warns about any fork once an earlier test in this process has started its backend.
# The sweep's own process never starts one (it only validates configs).
pytestmark = pytest.mark.filterwarnings(r"ignore:os.fork\(\) was called:RuntimeWarning")

FAKE_TRAIN = """
import json, os, sys, time
workdir = sys.argv[sys.argv.index("--workdir") + 1]
with open(os.path.join(workdir, "pid"), "w") as f:
  f.write(str(os.getpid()))
arm = os.path.basename(os.path.dirname(workdir))
if arm == "fail":
  print("step 1 ...", flush=True)
  print("error: config data='nowhere': expected a directory", file=sys.stderr)
  sys.exit(2)
if arm == "sleep":
  time.sleep(120)
with open(os.path.join(workdir, "results.json"), "w") as f:
  json.dump({}, f)
"""


@pytest.fixture
def fake_runs(tmp_path, monkeypatch):
  (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), ROOT]))
  monkeypatch.setattr(sweep, "TRAIN_MODULE", "fake_train")
  return tmp_path


def test_bad_override_is_one_error_line_before_any_run(fake_runs, capsys):
  out = fake_runs / "sweep"
  with pytest.raises(SystemExit) as exit_:
    sweep.main("d", "t", [sweep.Arm("ok", {}), sweep.Arm("fail", {"weight": "cl"})],
               argv=["--out", str(out), "--seeds", "2", "--set", "steps=ten"])
  assert exit_.value.code == 2
  errors = capsys.readouterr().err.splitlines()
  assert len(errors) == 1 and errors[0].startswith("error: invalid config, no run started: ")
  assert "steps" in errors[0] and "(every arm)" in errors[0]
  assert not (out / "ok").exists() and not (out / "fail").exists()


def test_failed_run_is_named_with_the_reason_from_its_log(fake_runs, capsys):
  out = fake_runs / "sweep"
  with pytest.raises(SystemExit) as exit_:
    sweep.main("d", "t", [sweep.Arm("ok", {}), sweep.Arm("fail", {})],
               argv=["--out", str(out), "--seeds", "1", "--jobs", "1"])
  assert exit_.value.code == 1
  errors = capsys.readouterr().err.splitlines()
  assert errors[1] == ("error: fail seed 0 failed (exit 2): config data='nowhere': expected a "
                       f"directory (see {out / 'fail' / 'seed0' / 'train.log'})")
  assert (out / "ok" / "seed0" / "results.json").exists()


def _hold_lock(workdir, seconds):
  """A process holding ``workdir``'s run lock as a live run does."""
  os.makedirs(workdir, exist_ok=True)
  code = textwrap.dedent(f"""
      import fcntl, json, os, sys, time
      fd = os.open({os.path.join(str(workdir), sweep.RUN_LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)
      fcntl.flock(fd, fcntl.LOCK_EX)
      os.write(fd, json.dumps({{"pid": os.getpid(), "host": "here"}}).encode())
      print("locked", flush=True)
      time.sleep({seconds})
      """)
  holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "locked"
  return holder


def test_locked_workdirs_are_waited_for_and_stale_locks_taken_over(fake_runs):
  from decomp.train import workdir as workdir_lib
  assert sweep.RUN_LOCK_FILE == workdir_lib.LOCK_FILE
  out = str(fake_runs / "sweep")
  arms = [sweep.Arm("ok", {})]
  messages = []
  # A run of a sweep killed a moment ago still ends: the rerun waits for it.
  holder = _hold_lock(sweep.run_dir(out, arms[0], 0), 1.0)
  sweep.run_sweep(out, arms, [0], config="playground_quick", log=messages.append, lock_wait=30)
  assert any("waiting up to 30 s" in m for m in messages) and holder.wait() == 0
  assert os.path.exists(os.path.join(sweep.run_dir(out, arms[0], 0), "results.json"))
  # A lock file whose holder is dead (the kernel freed its flock) is stale: no wait.
  stale = sweep.run_dir(out, arms[0], 1)
  os.makedirs(stale)
  with open(os.path.join(stale, sweep.RUN_LOCK_FILE), "w") as f:
    json.dump({"pid": 999999999, "host": "here"}, f)
  messages.clear()
  sweep.run_sweep(out, arms, [1], config="playground_quick", log=messages.append, lock_wait=30)
  assert not any("waiting" in m for m in messages)
  assert os.path.exists(os.path.join(stale, "results.json"))
  # Still locked after the wait: named, with the holder, not started.
  holder = _hold_lock(sweep.run_dir(out, arms[0], 2), 60)
  try:
    with pytest.raises(sweep.SweepError, match=r"ok seed 2 cannot resume: .* still locked by "
                       rf'{{"pid": {holder.pid}, "host": "here"}}'):
      sweep.run_sweep(out, arms, [2], config="playground_quick", log=messages.append,
                      lock_wait=0.5)
  finally:
    holder.kill()
    holder.wait()


def _dead(pid):
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
  except FileNotFoundError:
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
@pytest.mark.parametrize("kill", [signal.SIGKILL, signal.SIGTERM])
def test_runs_die_with_the_sweep(fake_runs, kill):
  out = fake_runs / "sweep"
  driver = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
      import sys
      sys.path[:0] = [{ROOT!r}]
      from decomp import sweep
      sweep.TRAIN_MODULE = "fake_train"
      sweep.run_sweep({str(out)!r}, [sweep.Arm("sleep", {{}})], [0, 1],
                      config="playground_quick", jobs=2)
      """)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  pid_files = [out / "sleep" / f"seed{k}" / "pid" for k in (0, 1)]
  deadline = time.time() + 60
  while not all(p.exists() and p.read_text() for p in pid_files) and time.time() < deadline:
    time.sleep(0.1)
  pids = [int(p.read_text()) for p in pid_files]
  driver.send_signal(kill)
  driver.wait(timeout=30)
  deadline = time.time() + 15
  while not all(map(_dead, pids)) and time.time() < deadline:
    time.sleep(0.1)
  survivors = [pid for pid in pids if not _dead(pid)]
  for pid in survivors:  # leave no stand-in behind when the check fails
    os.kill(pid, signal.SIGKILL)
  assert not survivors, f"runs {survivors} outlived their sweep"
