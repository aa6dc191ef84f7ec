"""Per-document update magnitudes against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import decomp


@pytest.fixture
def setup():
  rng = np.random.default_rng(0)
  vocab, d = 13, 6
  head = rng.normal(size=(vocab, d)).astype(np.float32)
  hidden = rng.normal(size=(2, 4, d)).astype(np.float32)
  labels = np.array([[1, 0, 0, 0], [0, 1, 1, 0]])
  where = np.array([[True, True, True, False], [True, True, True, True]])
  yes_id, no_id = 2, 5
  logits = hidden @ head.T
  readout = decomp.Readout(yes=jnp.asarray(logits[..., yes_id]), no=jnp.asarray(logits[..., no_id]),
                           hidden=jnp.asarray(hidden),
                           log_normalizer=jax.nn.logsumexp(jnp.asarray(logits), axis=-1))
  return head, hidden, labels, where, yes_id, no_id, readout


@pytest.mark.parametrize("weight", ["sft", "cl", "one_plus_sft"])
@pytest.mark.parametrize("direction", ["sft", "cl"])
def test_linear_directions_have_lm_head_norms(setup, weight, direction):
  head, _, labels, where, yes_id, no_id, readout = setup
  rows = head[[yes_id, no_id]]
  d = decomp.diagnostics(readout, labels, weight=weight, direction=direction, label_rows=rows,
                         where=where)
  expected_norm = np.linalg.norm(rows[0] - rows[1] if direction == "sft" else rows[0])
  np.testing.assert_allclose(d["direction_norm"], np.where(where, expected_norm, 0), rtol=1e-5)
  w = np.asarray(decomp.resolve_weight(weight)(readout, labels, where=where))
  np.testing.assert_allclose(d["weight"], w, rtol=1e-6)
  np.testing.assert_allclose(d["update"], np.abs(w) * np.where(where, expected_norm, 0),
                             rtol=1e-5)
  pos = where & (labels > 0)
  np.testing.assert_allclose(d["pos_update"], (np.asarray(d["update"]) * pos).sum(-1), rtol=1e-6)
  np.testing.assert_allclose(d["neg_weight"], (np.abs(w) * (where & (labels == 0))).sum(-1),
                             rtol=1e-6)


def test_logprob_direction_norm_with_full_vocabulary(setup):
  """grad_h log p(yes) = M_y - E_p[M_v]: a per-document norm, via the model's readout_fn."""
  head, hidden, labels, where, yes_id, no_id, readout = setup

  def readout_fn(h):
    logits = h @ jnp.asarray(head).T
    return decomp.Readout(yes=logits[..., yes_id], no=logits[..., no_id], hidden=h,
                          log_normalizer=jax.nn.logsumexp(logits, axis=-1))

  d = decomp.diagnostics(readout, labels, weight="sft", direction="cl_logprob",
                         readout_fn=readout_fn, where=where)
  logits = hidden @ head.T
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  expected = np.linalg.norm(head[yes_id] - probs @ head, axis=-1)
  np.testing.assert_allclose(d["direction_norm"], np.where(where, expected, 0), rtol=1e-4)
  assert np.ptp(expected) > 1e-3  # genuinely per document, unlike the linear directions


def test_label_rows_alone_cannot_serve_richer_directions(setup):
  head, _, labels, where, yes_id, no_id, readout = setup
  with pytest.raises(ValueError, match="log-normaliser"):
    decomp.diagnostics(readout, labels, weight="sft", direction="cl_logprob",
                       label_rows=head[[yes_id, no_id]], where=where)


def test_missing_inputs_are_named(setup):
  head, _, labels, _, yes_id, no_id, readout = setup
  with pytest.raises(ValueError, match="needs readout.hidden"):
    decomp.diagnostics(readout._replace(hidden=None), labels, weight="sft", direction="sft",
                       label_rows=head[:2])
  with pytest.raises(ValueError, match="needs label_rows"):
    decomp.diagnostics(readout, labels, weight="sft", direction="sft")
  with pytest.raises(ValueError, match=r"label_rows must be \[K >= 2, d\]"):
    decomp.diagnostics(readout, labels, weight="sft", direction="sft", label_rows=head[0])


def test_diagnostics_jit(setup):
  head, _, labels, where, yes_id, no_id, readout = setup
  rows = jnp.asarray(head[[yes_id, no_id]])
  fn = jax.jit(lambda r: decomp.diagnostics(r, labels, weight="cl", direction="sft",
                                            label_rows=rows, where=where))
  eager = decomp.diagnostics(readout, labels, weight="cl", direction="sft", label_rows=rows,
                             where=where)
  for key, value in fn(readout).items():
    np.testing.assert_allclose(value, eager[key], rtol=1e-6, atol=1e-7)
