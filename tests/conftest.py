"""Test-wide set-up: 8 simulated CPU devices for sharding tests, one XLA compilation cache.

XLA reads the flag once, when jax initialises its backend, so it must be set before any test
module imports jax. Tests that do not shard simply run on device 0.

The tests build the same tiny models in many modules and in the training subprocesses they
start; each build traces fresh jitted closures whose programs are identical, so one persistent
compilation cache per test session (shared by the xdist workers and inherited by subprocesses
through the environment) loads them instead of compiling again. A loaded executable is the one
that was compiled, so no number changes; the cache starts empty in every session.
"""

import os
import tempfile

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()

# The process that starts the session names the directory; xdist's workers (its subprocesses)
# inherit the variable, so they share it.
XLA_CACHE = os.path.join(tempfile.gettempdir(), f"decomp-tests-xla-{os.getpid()}")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", XLA_CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The tests' models are tiny: compiling them costs far more than running them, so XLA skips
# its expensive LLVM passes (jax's own switch: backend optimisation level 0; the suite takes
# about 40% less time). Float results may differ in the last bits from an optimised build
# (summation order), within every test's tolerance; comparisons of two decomp runs (resumes,
# shardings) compile both sides alike. Subprocesses (sweeps, the CLI runs) inherit it.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# Sweeps started by the tests give their runs this cache too (decomp.sweep's own default is a
# cache inside the sweep directory).
os.environ.setdefault("DECOMP_COMPILATION_CACHE", os.environ["JAX_COMPILATION_CACHE_DIR"])

import jax  # noqa: E402  (after the flags on purpose)

jax.config.update("jax_enable_x64", False)


def pytest_sessionfinish(session, exitstatus):
  """The session's compilation cache is removed by the process that made the session (the xdist
  controller, or the one pytest process)."""
  import shutil
  if not hasattr(session.config, "workerinput") and os.environ.get(
      "JAX_COMPILATION_CACHE_DIR") == XLA_CACHE:
    shutil.rmtree(XLA_CACHE, ignore_errors=True)
