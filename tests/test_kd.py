"""Distillation: kd_loss against a numpy KL, and the 'kd' weight x 'cl' direction identity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import decomp
from decomp import weights
from decomp.readout import Readout


def _kl_reference(scores, teacher, tau):
  s, t = np.asarray(scores, np.float64) / tau, np.asarray(teacher, np.float64) / tau
  log_p = s - np.log(np.sum(np.exp(s - s.max()))) - s.max()
  log_q = t - np.log(np.sum(np.exp(t - t.max()))) - t.max()
  return float(np.sum(np.exp(log_q) * (log_q - log_p)))


def _lists(seed, shape=(3, 5)):
  rng = np.random.default_rng(seed)
  yes = rng.normal(size=shape) * 3
  no = rng.normal(size=shape)
  teacher = rng.normal(size=shape) * 4
  labels = np.zeros(shape, np.int32)
  labels[..., 0] = 1
  return yes, no, teacher, labels


@pytest.mark.parametrize("tau", [1.0, 0.3, 2.5])
def test_kd_loss_is_the_kl_divergence(tau):
  yes, _, teacher, _ = _lists(0)
  ours = decomp.kd_loss(yes, teacher, temperature=tau, reduce_fn=None)
  ref = [_kl_reference(y, t, tau) for y, t in zip(yes, teacher)]
  np.testing.assert_allclose(ours, ref, rtol=1e-5)
  assert float(decomp.kd_loss(teacher, teacher, temperature=tau)) == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("tau", [1.0, 0.3])
@pytest.mark.parametrize("masked", [False, True])
def test_url_kd_cl_has_the_gradient_of_kd_loss_float64(tau, masked):
  with jax.enable_x64(True):
    yes, no, teacher, labels = _lists(1)
    where = None
    if masked:
      where = np.ones(yes.shape, bool)
      where[0, 3:] = False
      where[2, 1] = False
    extra = {"teacher": jnp.asarray(teacher)}
    g_url = jax.grad(decomp.url_loss)(
        jnp.asarray(yes), jnp.asarray(no), labels, where=where, extra_scores=extra,
        weight=decomp.resolve_weight("kd", temperature=tau), direction="cl")
    g_kd = jax.grad(decomp.kd_loss)(jnp.asarray(yes), jnp.asarray(teacher), where=where,
                                    temperature=tau)
    assert g_url.dtype == jnp.float64
    np.testing.assert_allclose(g_url, g_kd, rtol=1e-12, atol=1e-15)
    assert np.abs(g_kd).max() > 1e-3
    w = weights.kd(Readout(yes=yes, no=no, extra_scores=extra), labels, where=where,
                   temperature=tau)
    np.testing.assert_allclose(np.sum(w, axis=-1), 0.0, atol=1e-12)  # p and q both sum to 1


def test_masked_equals_sliced():
  yes, no, teacher, labels = _lists(2, shape=(1, 6))
  where = np.array([[True, True, False, True, False, True]])
  keep = where[0]
  full = decomp.kd_loss(yes, teacher, where=where, temperature=0.7)
  sliced = decomp.kd_loss(yes[:, keep], teacher[:, keep], temperature=0.7)
  np.testing.assert_allclose(full, sliced, rtol=1e-6)
  noisy = teacher.copy()
  noisy[~where] = np.nan  # padded entries never enter the math
  w_full = weights.kd(Readout(yes=yes, no=no, extra_scores={"teacher": noisy}), labels,
                      where=where, temperature=0.7)
  w_sliced = weights.kd(Readout(yes=yes[:, keep], no=no[:, keep],
                                extra_scores={"teacher": teacher[:, keep]}), labels[:, keep],
                        temperature=0.7)
  np.testing.assert_allclose(np.asarray(w_full)[:, keep], w_sliced, rtol=1e-6)
  assert np.all(np.asarray(w_full)[~where] == 0)


def test_all_masked_is_zero_not_nan():
  yes, no, teacher, labels = _lists(3)
  where = np.zeros(yes.shape, bool)
  value, grad = jax.value_and_grad(decomp.kd_loss)(jnp.asarray(yes), jnp.asarray(teacher),
                                                   where=where)
  assert float(value) == 0.0 and np.all(np.asarray(grad) == 0)
  g_url = jax.grad(decomp.url_loss)(jnp.asarray(yes), jnp.asarray(no), labels, where=where,
                                    weight="kd", direction="cl",
                                    extra_scores={"teacher": jnp.asarray(teacher)})
  assert np.all(np.isfinite(g_url)) and np.all(np.asarray(g_url) == 0)


def test_missing_teacher_is_named():
  yes, no, _, labels = _lists(4)
  with pytest.raises(ValueError, match=r"weight 'kd' needs the teacher's scores"):
    decomp.url_loss(yes, no, labels, weight="kd", direction="cl")
  with pytest.raises(ValueError, match="shape"):
    decomp.kd_loss(yes, yes[:, :2])
