"""The losses' label rule as their public docstrings state it: 0/1 checked eagerly; under a
user's own jax.jit, > 0 counts as positive and <= 0 as negative, without an error."""

import jax
import jax.numpy as jnp
import pytest

from decomp import losses


@pytest.mark.parametrize("name", ["sft_loss", "cl_loss"])
def test_label_rule_is_documented_and_holds(name):
  fn = getattr(losses, name)
  assert "under ``jax.jit``: > 0" in fn.__doc__
  assert "0.7" in losses.__doc__ and "-1" in losses.__doc__
  yes = jnp.array([[2.0, 0.5, -1.0]])
  args = (yes, jnp.zeros_like(yes)) if name == "sft_loss" else (yes,)
  with pytest.raises(ValueError, match="labels must be 0 .* or 1"):
    fn(*args, jnp.array([[0.7, 0.0, -1.0]]))
  traced = jax.jit(lambda labels: fn(*args, labels))(jnp.array([[0.7, 0.0, -1.0]]))
  assert float(traced) == pytest.approx(float(fn(*args, jnp.array([[1.0, 0.0, 0.0]]))))
