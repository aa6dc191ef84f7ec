"""The decomposition is exact: URL's gradient is sum_i W_i grad f_D, and the pure pairs are SFT/CL.

All identities are checked in float64 (relative error < 1e-10), on random inputs with masks,
several positives, extreme logits and all-masked lists; weights are also checked against autodiff
of the loss they come from.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import decomp
from decomp import directions, weights

WEIGHT_NAMES = sorted(weights.WEIGHTS)
DIRECTION_NAMES = sorted(directions.DIRECTIONS)


@pytest.fixture(autouse=True)
def float64():
  with jax.enable_x64(True):
    yield


def _inputs(seed, shape=(3, 4, 6), extreme=False):
  """A batch with masks, 1-3 positives per list, one all-masked list and one positive-free list."""
  rng = np.random.default_rng(seed)
  scale = 1e4 if extreme else 3.0
  yes = rng.normal(size=shape) * scale
  no = rng.normal(size=shape) * scale
  log_norm = np.logaddexp(np.logaddexp(yes, no), rng.normal(size=shape) * scale) + 1.0
  projection = rng.normal(size=shape) * scale
  labels = (rng.random(shape) < 0.3).astype(np.int32)
  labels[..., 0] = 1
  where = rng.random(shape) < 0.8
  where[..., 0] = True
  where[0, 0, :] = False  # an all-masked list
  labels[0, 1, :] = 0  # a list without a positive
  return (jnp.asarray(yes), jnp.asarray(no), jnp.asarray(log_norm), jnp.asarray(projection),
          jnp.asarray(labels), jnp.asarray(where))


def _url(yes, no, log_norm, projection, labels, where, *, weight, direction, **kw):
  return decomp.url_loss(yes, no, labels, weight=weight, direction=direction, where=where,
                         log_normalizer=log_norm, **kw,
                         # 'kd' reads a teacher's scores; any fixed per-document array will do.
                         extra_scores={"projection": projection, "teacher": _teacher(projection)})


def _teacher(projection):
  return jax.lax.stop_gradient(jnp.cos(projection))


def _rel_err(a, b):
  a, b = np.asarray(a), np.asarray(b)
  return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)


def _tree_rel_err(a, b):
  """Largest difference over all leaves, relative to the largest entry of all leaves (some
  leaves are exactly zero in exact arithmetic, e.g. a bias gradient summed over a softmax)."""
  scale = max(float(np.max(np.abs(np.asarray(x)))) for x in b)
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(a, b)) / scale


@pytest.mark.parametrize("extreme", [False, True])
@pytest.mark.parametrize("seed", range(2))
def test_pure_pairs_equal_original_losses(seed, extreme):
  yes, no, log_norm, proj, labels, where = _inputs(seed, extreme=extreme)
  args = (yes, no, log_norm, proj, labels, where)
  g_url = jax.grad(functools.partial(_url, weight="sft", direction="sft"), argnums=(0, 1))(*args)
  g_sft = jax.grad(decomp.sft_loss, argnums=(0, 1))(yes, no, labels, where=where)
  for a, b in zip(g_url, g_sft):
    assert _rel_err(a, b) < 1e-10
  g_url = jax.grad(functools.partial(_url, weight="cl", direction="cl"))(*args)
  g_cl = jax.grad(decomp.cl_loss)(yes, labels, where=where)
  assert _rel_err(g_url, g_cl) < 1e-10
  for g in (*g_sft, g_cl):
    assert np.isfinite(g).all()


@pytest.mark.parametrize("temperature", [0.05, 1.0, 3.0])
def test_cl_with_temperature_equals_cl_loss(temperature):
  yes, no, log_norm, proj, labels, where = _inputs(3)
  weight = decomp.resolve_weight("cl", temperature=temperature)
  g_url = jax.grad(_url)(yes, no, log_norm, proj, labels, where, weight=weight, direction="cl")
  g_cl = jax.grad(decomp.cl_loss)(yes, labels, where=where, temperature=temperature)
  assert _rel_err(g_url, g_cl) < 1e-10


def test_weights_are_the_losses_own_derivatives():
  """W_SFT = dL_SFT/d(z_y - z_n) and W_CL = dL_CL/dz_y, per document, by autodiff."""
  yes, no, _, _, labels, where = _inputs(4)
  readout = decomp.Readout(yes=yes, no=no)
  margin = yes - no
  w_sft_autodiff = jax.grad(lambda f: decomp.sft_loss(f, jnp.zeros_like(f), labels, where=where,
                                                      reduce_fn=jnp.sum))(margin)
  assert _rel_err(weights.sft(readout, labels, where=where), w_sft_autodiff) < 1e-10
  w_cl_autodiff = jax.grad(lambda y: decomp.cl_loss(y, labels, where=where, temperature=0.7,
                                                    reduce_fn=jnp.sum))(yes)
  assert _rel_err(weights.cl(readout, labels, where=where, temperature=0.7), w_cl_autodiff) < 1e-10


@pytest.mark.parametrize("weight,direction", list(itertools.product(WEIGHT_NAMES,
                                                                    DIRECTION_NAMES)))
def test_every_pair_has_the_hand_derived_gradient(weight, direction):
  """d URL / d(yes, no, log_normalizer, projection) = W_i * d f_D / d(...) / (number of lists)."""
  yes, no, log_norm, proj, labels, where = _inputs(5)
  grads = jax.grad(_url, argnums=(0, 1, 2, 3))(yes, no, log_norm, proj, labels, where,
                                                 weight=weight, direction=direction)
  readout = decomp.Readout(yes=yes, no=no, extra_scores={"teacher": _teacher(proj)})
  w = np.asarray(decomp.resolve_weight(weight)(readout, labels, where=where))
  lists = np.any(np.asarray(where) & (np.asarray(labels) > 0), axis=-1)
  w = w / lists.sum()
  zero = np.zeros_like(w)
  expected = {
      "sft": (w, -w, zero, zero),
      "cl": (w, zero, zero, zero),
      "cl_logprob": (w, zero, -w, zero),
      "projection": (zero, zero, zero, w),
  }[direction]
  for got, want in zip(grads, expected):
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)
  assert np.all(w[~(np.asarray(where) & lists[..., None])] == 0)


def test_derived_weights_definitions():
  yes, no, _, _, labels, where = _inputs(6)
  readout = decomp.Readout(yes=yes, no=no)
  docs = np.asarray(where) & np.any(np.asarray(where) & (np.asarray(labels) > 0), -1)[..., None]
  sign = np.where(docs, np.where(np.asarray(labels) > 0, -1.0, 1.0), 0.0)
  w_sft = np.asarray(weights.sft(readout, labels, where=where))
  np.testing.assert_array_equal(weights.constant(readout, labels, where=where), sign)
  np.testing.assert_allclose(weights.one_plus_sft(readout, labels, where=where),
                             sign * (1 + np.abs(w_sft)), rtol=1e-12)
  prob = 1 / (1 + np.exp(-(np.asarray(yes) - np.asarray(no))))
  learned = np.where(np.asarray(labels) > 0, prob > 0.8, prob < 0.2)
  np.testing.assert_array_equal(weights.tau_mask(readout, labels, where=where, tau=0.2),
                                np.where(learned, 0.0, sign))
  w_resc = np.asarray(weights.cl_rescaled(readout, labels, where=where))
  w_cl = np.asarray(weights.cl(readout, labels, where=where))
  # Same total magnitude as SFT per list, same shape (proportions) as CL.
  np.testing.assert_allclose(np.abs(w_resc).sum(-1), np.abs(w_sft).sum(-1), rtol=1e-10)
  for resc_list, cl_list in zip(w_resc.reshape(-1, 6), w_cl.reshape(-1, 6)):
    nonzero = cl_list != 0
    if nonzero.any():
      ratio = resc_list[nonzero] / cl_list[nonzero]
      assert np.ptp(ratio) < 1e-9 * np.max(np.abs(ratio))


def test_all_masked_is_zero_with_zero_gradients():
  yes, no, log_norm, proj, labels, _ = _inputs(7)
  where = jnp.zeros(labels.shape, bool)
  for weight, direction in itertools.product(WEIGHT_NAMES, DIRECTION_NAMES):
    value, grads = jax.value_and_grad(_url, argnums=(0, 1, 2, 3))(
        yes, no, log_norm, proj, labels, where, weight=weight, direction=direction)
    assert float(value) == 0.0
    assert all(np.all(g == 0) for g in grads)


# --- the identity at the level of model parameters, LM head included ---

class TinyReranker(nnx.Module):
  """Features -> MLP -> hidden h -> LM head over a small vocabulary; yes/no rows read out."""

  def __init__(self, *, features=5, hidden=8, vocab=11, rngs):
    self.body = nnx.Linear(features, hidden, param_dtype=jnp.float64, rngs=rngs)
    self.out = nnx.Linear(hidden, hidden, param_dtype=jnp.float64, rngs=rngs)
    self.lm_head = nnx.Param(jax.random.normal(rngs.params(), (vocab, hidden), jnp.float64))

  def __call__(self, x):
    h = self.out(jnp.tanh(self.body(x)))
    logits = h @ self.lm_head[...].T
    return decomp.Readout(yes=logits[..., 3], no=logits[..., 7], hidden=h,
                          log_normalizer=jax.nn.logsumexp(logits, axis=-1))


def _param_grads(model, loss_fn):
  graphdef, params = nnx.split(model, nnx.Param)

  def f(params):
    return loss_fn(nnx.merge(graphdef, params)(x))

  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 5, 5)))
  return jax.tree.leaves(jax.grad(f)(params)), (graphdef, params, x)


@pytest.fixture
def batch():
  labels = np.zeros((4, 5), np.int32)
  labels[:, 0] = 1
  labels[1, 2] = 1
  where = np.ones((4, 5), bool)
  where[2, 3:] = False
  return jnp.asarray(labels), jnp.asarray(where)


@pytest.mark.parametrize("objective", ["sft", "cl"])
def test_parameter_level_identity_pure_pairs(objective, batch):
  labels, where = batch
  model = TinyReranker(rngs=nnx.Rngs(0))
  if objective == "sft":
    original = lambda r: decomp.sft_loss(r.yes, r.no, labels, where=where)
  else:
    original = lambda r: decomp.cl_loss(r.yes, labels, where=where)
  surrogate = lambda r: decomp.url_surrogate(r, labels, weight=objective, direction=objective,
                                             where=where)
  g_orig, _ = _param_grads(model, original)
  g_url, _ = _param_grads(model, surrogate)
  assert len(g_orig) == 5  # two kernels, two biases and the LM head
  assert _tree_rel_err(g_url, g_orig) < 1e-10


@pytest.mark.parametrize("weight,direction", [("cl", "sft"), ("sft", "cl"),
                                              ("sft", "cl_logprob")])
def test_parameter_level_swapped_pairs_match_hand_formula(weight, direction, batch):
  """grad = sum_i W_i grad_theta f_D(x_i) / (number of lists): a VJP of f_D with cotangent W."""
  labels, where = batch
  model = TinyReranker(rngs=nnx.Rngs(1))
  g_url, (graphdef, params, x) = _param_grads(
      model, lambda r: decomp.url_surrogate(r, labels, weight=weight, direction=direction,
                                            where=where))
  readout = nnx.merge(graphdef, params)(x)
  w = decomp.resolve_weight(weight)(readout, labels, where=where) / labels.shape[0]
  direction_fn = decomp.resolve_direction(direction)
  _, vjp = jax.vjp(lambda p: direction_fn(nnx.merge(graphdef, p)(x)), params)
  (expected,) = vjp(w)
  assert _tree_rel_err(g_url, jax.tree.leaves(expected)) < 1e-10
  # A swap really changes the update: it differs from both pure objectives.
  g_pure, _ = _param_grads(model, lambda r: decomp.url_surrogate(
      r, labels, weight=direction if direction != "cl_logprob" else "cl",
      direction=direction, where=where))
  assert _tree_rel_err(g_url, g_pure) > 1e-3


# --- errors ---

def test_unknown_names_are_clear():
  with pytest.raises(ValueError, match=r"unknown weight 'sfft'; registered weights are \["):
    decomp.url_loss(jnp.zeros(3), jnp.zeros(3), jnp.array([1, 0, 0]), weight="sfft",
                    direction="sft")
  with pytest.raises(ValueError, match="unknown direction 'yes'"):
    decomp.url_loss(jnp.zeros(3), jnp.zeros(3), jnp.array([1, 0, 0]), weight="sft",
                    direction="yes")
  with pytest.raises(TypeError, match="weight must be a registered name, an import path"):
    decomp.url_loss(jnp.zeros(3), jnp.zeros(3), jnp.array([1, 0, 0]), weight=3, direction="sft")


def test_directions_that_need_more_readout_say_so():
  with pytest.raises(ValueError, match="needs the vocabulary log-normaliser"):
    decomp.url_loss(jnp.zeros(3), jnp.zeros(3), jnp.array([1, 0, 0]), weight="sft",
                    direction="cl_logprob")
  with pytest.raises(ValueError, match=r"extra_scores\['projection'\]"):
    decomp.url_loss(jnp.zeros(3), jnp.zeros(3), jnp.array([1, 0, 0]), weight="sft",
                    direction="projection")


def test_user_function_with_wrong_shape_is_named():
  with pytest.raises(ValueError, match="the weight function returned shape"):
    decomp.url_loss(jnp.zeros(3), jnp.zeros(3), jnp.array([1, 0, 0]),
                    weight=lambda r, l, where=None: jnp.zeros(2), direction="sft")
