"""Test-wide set-up: 8 simulated CPU devices for sharding tests.

XLA reads the flag once, when jax initialises its backend, so it must be set before any test
module imports jax. Tests that do not shard simply run on device 0.
"""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()

import jax  # noqa: E402  (after the flag on purpose)

jax.config.update("jax_enable_x64", False)
