"""decomp.metrics against rax (random lists with masks, ties, -inf and topn) and fixed values."""

import jax.numpy as jnp
import numpy as np
import pytest
import rax

from decomp import metrics

RAX = {
    "ndcg": rax.ndcg_metric,
    "mrr": rax.mrr_metric,
    "recall": rax.recall_metric,
    "precision": rax.precision_metric,
    "ap": rax.ap_metric,
}


def _random_lists(seed, shape=(7, 9)):
  rng = np.random.default_rng(seed)
  # Few distinct score values so that ties are common; some -inf (unranked) items.
  scores = rng.integers(0, 4, size=shape).astype(np.float32)
  scores[rng.random(shape) < 0.1] = -np.inf
  labels = rng.integers(0, 3, size=shape).astype(np.float32) * (rng.random(shape) < 0.5)
  where = rng.random(shape) < 0.8
  where[0] = False  # a list with no valid item
  labels[1] = 0.0  # a list with no relevant item
  return scores, labels, where


@pytest.mark.parametrize("name", sorted(RAX))
@pytest.mark.parametrize("topn", [None, 1, 3])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_rax_on_random_lists(name, topn, masked):
  for seed in range(3):
    scores, labels, where = _random_lists(seed)
    w = where if masked else None
    for reduce_fn in (jnp.mean, None):
      ours = metrics.METRICS[name](scores, labels, where=w, topn=topn, reduce_fn=reduce_fn)
      ref = RAX[name](scores, labels, where=w, topn=topn, reduce_fn=reduce_fn)
      np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-6, atol=1e-7,
                                 err_msg=f"{name} topn={topn} masked={masked} seed={seed}")


def test_ties_keep_order_of_appearance():
  # All scores tie: the relevant item at position 2 ranks third.
  scores = jnp.zeros((1, 4))
  labels = jnp.array([[0.0, 0.0, 1.0, 0.0]])
  np.testing.assert_allclose(metrics.ranks(scores), [[1, 2, 3, 4]])
  np.testing.assert_allclose(metrics.mrr(scores, labels), 1.0 / 3.0, rtol=1e-6)


def test_fixed_values_from_rax_docs():
  scores = jnp.array([[0.0, 1.0, 3.0], [1.0, 2.0, 0.0]])
  labels = jnp.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
  # These are the defaults: topn=None, mean over the two lists.
  np.testing.assert_allclose(metrics.mrr(scores, labels), 0.75, rtol=1e-6)
  np.testing.assert_allclose(metrics.ndcg(scores, labels), 0.81546485, rtol=1e-6)
  np.testing.assert_allclose(metrics.ap(scores, labels), 0.75, rtol=1e-6)
  np.testing.assert_allclose(metrics.precision(scores, labels), 0.33333334, rtol=1e-6)
  np.testing.assert_allclose(metrics.recall(scores, labels), 1.0, rtol=1e-6)
  # Per-list values by hand: list 1 has its positive at rank 1, list 2 at rank 2.
  np.testing.assert_allclose(metrics.mrr(scores, labels, reduce_fn=None), [1.0, 0.5])
  np.testing.assert_allclose(metrics.ndcg(scores, labels, reduce_fn=None),
                             [1.0, 1.0 / np.log2(3.0)], rtol=1e-6)
  np.testing.assert_allclose(metrics.recall(scores, labels, topn=1, reduce_fn=None), [1.0, 0.0])


def test_graded_ndcg_by_hand():
  scores = jnp.array([3.0, 2.0, 1.0])
  labels = jnp.array([0.0, 2.0, 1.0])
  dcg = 3.0 / np.log2(3) + 1.0 / np.log2(4)
  ideal = 3.0 / np.log2(2) + 1.0 / np.log2(3)
  np.testing.assert_allclose(metrics.ndcg(scores, labels), dcg / ideal, rtol=1e-6)
  np.testing.assert_allclose(metrics.ndcg(scores, labels, topn=1), 0.0, atol=1e-7)


def test_jit_and_shape_errors():
  import jax
  scores = jnp.array([[0.0, 1.0, 3.0]])
  labels = jnp.array([[0.0, 0.0, 1.0]])
  f = jax.jit(lambda s, l: metrics.ndcg(s, l, topn=2))
  np.testing.assert_allclose(f(scores, labels), 1.0)
  with pytest.raises(ValueError, match="same shape"):
    metrics.ndcg(scores, labels[:, :2])
  with pytest.raises(ValueError, match="where"):
    metrics.mrr(scores, labels, where=jnp.ones((1, 2), bool))


def test_aggregate_per_task_and_modality():
  per_query = {"ndcg@10": np.array([1.0, 0.0, 0.5, 0.5, 1.0, 0.2])}
  tasks = ["t2t", "t2t", "i2i", "t2i", "t2i", "it2it"]
  out = metrics.aggregate(per_query, tasks)
  assert out["queries"]["ndcg@10"] == pytest.approx(3.2 / 6)
  assert out["per_task"]["t2t"] == {"ndcg@10": 0.5, "num_queries": 2}
  assert out["per_task"]["t2i"]["ndcg@10"] == pytest.approx(0.75)
  # Macro over tasks: t2t 0.5, i2i 0.5, t2i 0.75, it2it 0.2.
  assert out["tasks"]["ndcg@10"] == pytest.approx((0.5 + 0.5 + 0.75 + 0.2) / 4)
  single = out["per_modality"]["single"]
  assert single["ndcg@10"] == pytest.approx(0.5) and single["num_queries"] == 3
  assert single["tasks"] == ["i2i", "t2t"]
  assert out["per_modality"]["fused"]["ndcg@10"] == pytest.approx(0.2)
  with pytest.raises(ValueError, match="3 values for 6"):
    metrics.aggregate({"mrr": np.zeros(3)}, tasks)


def test_modality_table_matches_data_types():
  from decomp.data import types
  assert metrics.MRB_MODALITY == types.TASK_MODALITY
