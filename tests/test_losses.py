"""sft_loss and cl_loss against independent references: rax, hand formulas, the paper's facts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rax

import decomp


def _random_lists(seed, shape=(6, 5), positives=1, mask_rate=0.0):
  """Logits and labels with ``positives`` valid positives per list (placed at random)."""
  rng = np.random.default_rng(seed)
  yes = rng.normal(size=shape) * 3
  no = rng.normal(size=shape) * 3
  labels = np.zeros(shape, np.int32)
  where = rng.random(shape) >= mask_rate
  flat_labels, flat_where = labels.reshape(-1, shape[-1]), where.reshape(-1, shape[-1])
  for row in range(flat_labels.shape[0]):
    idx = rng.choice(shape[-1], size=positives, replace=False)
    flat_labels[row, idx] = 1
    flat_where[row, idx] = True
  return jnp.asarray(yes), jnp.asarray(no), jnp.asarray(labels), jnp.asarray(where)


# --- the fixed reference values in ../shared/paper/facts.md (from rax's documentation) ---

def test_cl_loss_reference_value():
  loss = decomp.cl_loss(jnp.array([2.0, 1.0, 3.0]), jnp.array([1, 0, 0]))
  np.testing.assert_allclose(loss, 1.4076059, rtol=1e-6)


def test_cl_loss_reference_gradient():
  scores = jnp.array([[0.0, 1.0, 3.0], [1.0, 2.0, 0.0]])
  labels = jnp.array([[0, 0, 1], [1, 0, 0]])
  expected = [[0.02100503, 0.0570976, -0.07810265], [-0.37763578, 0.33262047, 0.04501529]]
  np.testing.assert_allclose(jax.grad(decomp.cl_loss)(scores, labels), expected, atol=1e-6)


# --- rax as an independent reference on random inputs ---

@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("mask_rate", [0.0, 0.3])
def test_cl_loss_matches_rax_softmax_loss(seed, mask_rate):
  yes, _, labels, where = _random_lists(seed, mask_rate=mask_rate)
  ours = decomp.cl_loss(yes, labels, where=where)
  theirs = rax.softmax_loss(yes, labels.astype(jnp.float32), where=where)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5)
  g_ours = jax.grad(decomp.cl_loss)(yes, labels, where=where)
  g_theirs = jax.grad(rax.softmax_loss)(yes, labels.astype(jnp.float32), where=where)
  np.testing.assert_allclose(g_ours, g_theirs, atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("mask_rate", [0.0, 0.3])
def test_sft_loss_matches_rax_pointwise_sigmoid(seed, mask_rate):
  yes, no, labels, where = _random_lists(seed, positives=2, mask_rate=mask_rate)
  # rax's pointwise sigmoid loss on the margin z_y - z_n, per item; SFT sums items per list.
  per_item = rax.pointwise_sigmoid_loss(yes - no, labels.astype(jnp.float32), where=where,
                                        reduce_fn=None)
  ours = decomp.sft_loss(yes, no, labels, where=where, reduce_fn=None)
  np.testing.assert_allclose(ours, jnp.where(where, per_item, 0.0), rtol=1e-5, atol=1e-6)
  # Reduced: rax means over items, decomp sums per list then means over lists.
  n_valid = jnp.sum(where)
  expected = rax.pointwise_sigmoid_loss(yes - no, labels.astype(jnp.float32),
                                        where=where) * n_valid / yes.shape[0]
  np.testing.assert_allclose(decomp.sft_loss(yes, no, labels, where=where), expected, rtol=1e-5)


# --- hand formulas for what rax does not cover ---

def test_cl_loss_several_positives_is_one_infonce_term_per_positive():
  yes = np.array([1.5, 0.3, -0.2, 2.0, 0.7])
  labels = np.array([1, 0, 1, 0, 1])
  neg_sum = np.exp(yes[labels == 0]).sum()
  expected = sum(-np.log(np.exp(s) / (np.exp(s) + neg_sum)) for s in yes[labels == 1])
  np.testing.assert_allclose(decomp.cl_loss(jnp.asarray(yes), jnp.asarray(labels)), expected,
                             rtol=1e-6)


def test_cl_loss_temperature_scales_scores():
  yes, _, labels, _ = _random_lists(0)
  np.testing.assert_allclose(decomp.cl_loss(yes, labels, temperature=0.5),
                             decomp.cl_loss(yes / 0.5, labels), rtol=1e-6)


def test_sft_loss_hand_formula():
  yes, no, labels = np.array([2.0, 0.0, 1.0]), np.array([0.0, 0.0, 1.0]), np.array([1, 0, 0])
  s = 1 / (1 + np.exp(-(yes - no)))
  expected = -np.log(s[0]) - np.log(1 - s[1]) - np.log(1 - s[2])
  np.testing.assert_allclose(decomp.sft_loss(yes, no, labels), expected, rtol=1e-6)


def test_list_without_positive_is_masked_out_not_nan():
  yes = jnp.array([[2.0, 1.0, 3.0], [0.5, 0.1, 0.2]])
  no = jnp.zeros_like(yes)
  labels = jnp.array([[1, 0, 0], [0, 0, 0]])
  for loss in (lambda **kw: decomp.cl_loss(yes, labels, **kw),
               lambda **kw: decomp.sft_loss(yes, no, labels, **kw)):
    first_only = loss()  # the second list takes no part: mean over one list
    assert np.isfinite(first_only)
  np.testing.assert_allclose(decomp.cl_loss(yes, labels), decomp.cl_loss(yes[:1], labels[:1]))
  np.testing.assert_allclose(decomp.sft_loss(yes, no, labels),
                             decomp.sft_loss(yes[:1], no[:1], labels[:1]))
  with pytest.raises(ValueError, match="no positive"):
    decomp.check_has_positive(labels)


def test_cl_loss_list_without_negatives_is_zero():
  assert float(decomp.cl_loss(jnp.array([3.0, 1.0]), jnp.array([1, 1]))) == 0.0


def test_extreme_logits_stay_finite():
  yes = jnp.array([[1e4, -1e4, 1e4], [-1e4, 1e4, -1e4]])
  no = -yes
  labels = jnp.array([[1, 0, 0], [1, 0, 0]])
  for fn in (lambda y, n: decomp.sft_loss(y, n, labels), lambda y, n: decomp.cl_loss(y, labels)):
    value, grads = jax.value_and_grad(fn, argnums=(0, 1))(yes, no)
    assert np.isfinite(value) and all(np.isfinite(g).all() for g in grads)
  # -log softmax with a 2e4 gap is 2e4, not inf.
  np.testing.assert_allclose(decomp.cl_loss(yes[1:], labels[1:]), 2e4, rtol=1e-6)


# --- bad input gets a clear error naming the problem ---

def test_mismatched_shapes():
  with pytest.raises(ValueError, match=r"no_logits has shape \(2, 4\).*labels has shape \(2, 3\)"):
    decomp.sft_loss(jnp.zeros((2, 3)), jnp.zeros((2, 4)), jnp.zeros((2, 3), jnp.int32))


def test_labels_that_are_not_grades():
  with pytest.raises(ValueError, match=r"labels must be relevance grades >= 0 .* found negative "
                                       r"labels \[-1.0\]"):
    decomp.cl_loss(jnp.zeros(3), jnp.array([1, 0, -1]))
  with pytest.raises(ValueError, match=r"found non-finite labels \[nan\]"):
    decomp.sft_loss(jnp.zeros(3), jnp.zeros(3), jnp.array([1.0, 0.0, jnp.nan]))
  # A grade > 0 is a positive for SFT and CL: grades 2 and 1 give the same loss.
  assert float(decomp.cl_loss(jnp.array([0.5, 0.0, 1.0]), jnp.array([1, 0, 2]))) == float(
      decomp.cl_loss(jnp.array([0.5, 0.0, 1.0]), jnp.array([1, 0, 1])))


def test_non_boolean_where():
  with pytest.raises(TypeError, match="where must be a boolean mask"):
    decomp.cl_loss(jnp.zeros(3), jnp.array([1, 0, 0]), where=jnp.array([1, 1, 0]))


def test_integer_logits_rejected():
  with pytest.raises(TypeError, match="yes_logits must be floating point"):
    decomp.cl_loss(jnp.array([1, 2, 3]), jnp.array([1, 0, 0]))


def test_bad_temperature():
  with pytest.raises(ValueError, match="temperature must be > 0"):
    decomp.cl_loss(jnp.zeros(3), jnp.array([1, 0, 0]), temperature=0.0)
