"""The losses' label rule as their public docstrings state it: grades >= 0, every grade > 0 a
positive, checked eagerly; under a user's own jax.jit, <= 0 counts as negative without an
error."""

import jax
import jax.numpy as jnp
import pytest

from decomp import losses


@pytest.mark.parametrize("name", ["sft_loss", "cl_loss"])
def test_label_rule_is_documented_and_holds(name):
  fn = getattr(losses, name)
  assert "under ``jax.jit``: > 0" in " ".join(fn.__doc__.split())
  assert "0.7" in losses.__doc__ and "-1" in losses.__doc__
  yes = jnp.array([[2.0, 0.5, -1.0]])
  args = (yes, jnp.zeros_like(yes)) if name == "sft_loss" else (yes,)
  with pytest.raises(ValueError, match="labels must be relevance grades >= 0"):
    fn(*args, jnp.array([[0.7, 0.0, -1.0]]))
  binary = float(fn(*args, jnp.array([[1.0, 0.0, 0.0]])))
  assert float(fn(*args, jnp.array([[0.7, 0.0, 0.0]]))) == pytest.approx(binary)
  traced = jax.jit(lambda labels: fn(*args, labels))(jnp.array([[0.7, 0.0, -1.0]]))
  assert float(traced) == pytest.approx(binary)
