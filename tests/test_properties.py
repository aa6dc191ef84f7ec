"""rax-style properties, parameterized over every loss decomp defines.

Every loss: masking == slicing, extra batch axes, jit == eager, finite-difference gradients
(``jax.test_util.check_grads``), no NaN gradients on extreme or fully masked inputs.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import decomp
from decomp import directions, weights


FIELD = ("listnet", "listmle", "ranknet", "lambdaloss", "margin_mse", "hard_infonce")


def _url(weight, direction):
  def loss(yes, no, labels, *, where=None, reduce_fn=jnp.mean):
    # A log-normaliser and projection score that depend on the logits, so every direction is live.
    return decomp.url_loss(yes, no, labels, weight=weight, direction=direction, where=where,
                           reduce_fn=reduce_fn, log_normalizer=jnp.logaddexp(yes, no) + 0.5,
                           extra_scores={"projection": 0.3 * yes + 0.7 * no,
                                         "teacher": jnp.sin(3.0 * no)})
  return loss


LOSSES = {
    "sft_loss": decomp.sft_loss,
    "cl_loss": lambda yes, no, labels, **kw: decomp.cl_loss(yes, labels, **kw),
    "cl_loss_t0.1": lambda yes, no, labels, **kw: decomp.cl_loss(yes, labels, temperature=0.1,
                                                                 **kw),
    **{f"url[{w},{d}]": _url(w, d)
       for w, d in itertools.product(sorted(weights.WEIGHTS), sorted(directions.DIRECTIONS))
       # The field's weights read z_y or z_y - z_n: they pair with D_CL and D_SFT (the other
       # directions' properties are those of the direction, checked with every older weight).
       if w not in FIELD or d in ("cl", "sft")},
}


def _batch(seed, shape=(4, 6)):
  rng = np.random.default_rng(seed)
  yes = jnp.asarray(rng.normal(size=shape), jnp.float32)
  no = jnp.asarray(rng.normal(size=shape), jnp.float32)
  labels = np.zeros(shape, np.int32)
  labels[..., 0] = 1
  labels[..., 2] = rng.random(shape[:-1]) < 0.5
  return yes, no, jnp.asarray(labels)


@pytest.fixture(params=sorted(LOSSES))
def loss(request):
  return LOSSES[request.param]


def test_mask_equals_slicing(loss):
  yes, no, labels = _batch(0)
  where = jnp.arange(6) < 4
  masked = loss(yes, no, labels, where=jnp.broadcast_to(where, yes.shape))
  sliced = loss(yes[:, :4], no[:, :4], labels[:, :4])
  np.testing.assert_allclose(masked, sliced, rtol=1e-5, atol=1e-6)
  # Garbage in masked-out entries must not leak into the value or the gradient. (NaN only for
  # the plain losses: the URL wrapper here derives a log-normaliser from the logits outside the
  # loss, and NaN through that user code is beyond any loss's reach.)
  garbage = jnp.nan if loss in (decomp.sft_loss, LOSSES["cl_loss"]) else 1e30
  poisoned = yes.at[:, 4:].set(garbage)
  value, grad = jax.value_and_grad(loss)(poisoned, no, labels,
                                         where=jnp.broadcast_to(where, yes.shape))
  np.testing.assert_allclose(value, sliced, rtol=1e-5, atol=1e-6)
  assert np.isfinite(grad).all()


def test_extra_batch_axes(loss):
  yes, no, labels = _batch(1, shape=(2, 3, 5))
  flat = [x.reshape(6, 5) for x in (yes, no, labels)]
  np.testing.assert_allclose(loss(yes, no, labels), loss(*flat), rtol=1e-5, atol=1e-6)
  unreduced = loss(yes, no, labels, reduce_fn=None)
  np.testing.assert_allclose(unreduced.reshape((6,) + unreduced.shape[2:]),
                             loss(*flat, reduce_fn=None), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(loss(yes, no, labels, reduce_fn=jnp.sum),
                             jnp.sum(unreduced), rtol=1e-5, atol=1e-5)


def test_jit_equals_eager(loss):
  yes, no, labels = _batch(2)
  np.testing.assert_allclose(jax.jit(loss)(yes, no, labels), loss(yes, no, labels), rtol=1e-6)


def test_finite_difference_gradients(loss):
  with jax.enable_x64(True):
    yes, no, labels = (np.asarray(x) for x in _batch(3))
    yes, no = jnp.asarray(yes, jnp.float64), jnp.asarray(no, jnp.float64)
    if loss in (decomp.sft_loss, LOSSES["cl_loss"], LOSSES["cl_loss_t0.1"]):
      fn = lambda y, n: loss(y, n, labels)
    else:
      # URL's weight is a constant by design: freeze it at the current point, then the surrogate
      # is an ordinary function whose finite differences check the direction's gradient.
      name = next(k for k, v in LOSSES.items() if v is loss)
      w_name, d_name = name[4:-1].split(",")
      frozen = decomp.resolve_weight(w_name)(
          decomp.Readout(yes=yes, no=no, extra_scores={"teacher": jnp.sin(3.0 * no)}), labels)
      fn = lambda y, n: _url(lambda r, l, where=None: frozen, d_name)(y, n, labels)
    check_grads(fn, (yes, no), order=2, modes=("rev",), atol=1e-6, rtol=1e-6)


def test_no_nan_gradients_on_extreme_and_masked_inputs(loss):
  yes, no, labels = _batch(4)
  yes = yes * 1e4
  no = -no * 1e4
  where = jnp.ones(yes.shape, bool).at[0].set(False).at[1, 3:].set(False)
  value, grads = jax.value_and_grad(loss, argnums=(0, 1))(yes, no, labels, where=where)
  assert np.isfinite(value)
  assert all(np.isfinite(g).all() for g in grads)


def test_all_masked_is_zero(loss):
  yes, no, labels = _batch(5)
  where = jnp.zeros(yes.shape, bool)
  assert float(loss(yes, no, labels, where=where)) == 0.0
  grads = jax.grad(loss, argnums=(0, 1))(yes, no, labels, where=where)
  assert all(np.all(g == 0) for g in grads)
