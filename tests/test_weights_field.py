"""The field's objectives as weights: each W_i is the gradient of its own loss, checked against rax.

ListNet, ListMLE, RankNet and LambdaLoss against rax's gradients (``rax.softmax_loss`` with
normalised labels, ``rax.listmle_loss``, ``rax.pairwise_logistic_loss`` with and without
``rax.dcg_lambdaweight`` / ``rax.labeldiff_lambdaweight``); MarginMSE and hardness-weighted InfoNCE
against plain autodiff of their stated losses. All in float64 (relative error < 1e-10), binary
and graded labels, masks, lists of 2 to 64 documents, a list without a positive and an all-masked
list (both get 0). Graded labels reach the weights from BEIR qrels.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rax

import decomp
from decomp import _lists, weights
from decomp.data import beir, flag

FIELD = ("listnet", "listmle", "ranknet", "lambdaloss", "margin_mse", "hard_infonce")
SIZES = (2, 64)  # and 5, 7, 9 in the tests below


@pytest.fixture(autouse=True)
def float64():
  with jax.enable_x64(True):
    yield


def _lists_of(n, *, seed=0, batch=6):
  """``[batch, n]`` scores, labels, mask and teacher: list 0 all masked, list 1 without a
  positive (all 0 labels), then lists with binary labels and lists with grades 0-3, each with a
  valid positive and some documents masked."""
  rng = np.random.default_rng(seed + 100 * n)
  scores = rng.normal(size=(batch, n)) * 3.0
  graded = np.arange(batch)[:, None] >= (batch + 2) // 2
  labels = np.where(graded, rng.integers(0, 4, size=(batch, n)), rng.integers(0, 2, (batch, n)))
  labels[:, 0] = np.where(graded[:, 0], rng.integers(1, 4, size=batch), 1)
  labels[1] = 0
  where = rng.random((batch, n)) < 0.75
  where[:, 0] = True
  where[0] = False
  teacher = rng.normal(size=(batch, n)) * 2.0
  return (jnp.asarray(scores), jnp.asarray(labels), jnp.asarray(where), jnp.asarray(teacher))


def _readout(scores, teacher, no=None):
  no = jnp.zeros_like(scores) if no is None else no
  return decomp.Readout(yes=scores, no=no, extra_scores={"teacher": teacher})


def _rel_err(a, b):
  a, b = np.asarray(a), np.asarray(b)
  return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)


def _taking_part(labels, where):
  """``[B, 1]``: lists with a valid positive (decomp's rule; rax's ListMLE also scores others)."""
  return np.any(np.asarray(where) & (np.asarray(labels) > 0), -1, keepdims=True)


def _rax_grad(loss, scores, labels, where, **kw):
  grad = jax.grad(lambda s: loss(s, labels, where=where, reduce_fn=jnp.sum, **kw))(scores)
  return np.where(_taking_part(labels, where), np.asarray(grad), 0.0)


def _dcg_scale(labels, where):
  """rax's DCG lambdaweight scales by the padded list size, decomp's by the valid documents."""
  return np.sum(np.asarray(where), -1, keepdims=True) / labels.shape[-1]


RAX = {
    "listnet": lambda s, y, w: _rax_grad(rax.softmax_loss, s, y, w,
                                         label_fn=rax.utils.normalize_probabilities),
    "listmle": lambda s, y, w: _rax_grad(rax.listmle_loss, s, y, w),
    "ranknet": lambda s, y, w: _rax_grad(rax.pairwise_logistic_loss, s, y, w),
    "lambdaloss": lambda s, y, w: _dcg_scale(y, w) * _rax_grad(
        rax.pairwise_logistic_loss, s, y, w, lambdaweight_fn=rax.dcg_lambdaweight),
}


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name", sorted(RAX))
def test_listwise_weights_are_raxs_gradients(name, n):
  scores, labels, where, teacher = _lists_of(n)
  expected = RAX[name](scores, labels, where)
  got = weights.WEIGHTS[name](_readout(scores, teacher), labels, where=where)
  assert _rel_err(got, expected) < 1e-10
  assert np.all(np.asarray(got)[:2] == 0)  # the all-masked list, the list without a positive
  # Without a mask, too (every list with a positive).
  labels = labels.at[1, 0].set(1)
  expected = RAX[name](scores, labels, jnp.ones(labels.shape, bool))
  assert _rel_err(weights.WEIGHTS[name](_readout(scores, teacher), labels), expected) < 1e-10


def test_labeldiff_lambdaweight_is_raxs():
  scores, labels, where, teacher = _lists_of(9)
  expected = _rax_grad(rax.pairwise_logistic_loss, scores, labels, where,
                       lambdaweight_fn=rax.labeldiff_lambdaweight)
  got = weights.lambdaloss(_readout(scores, teacher), labels, where=where,
                           lambdaweight="labeldiff")
  assert _rel_err(got, expected) < 1e-10


@pytest.mark.parametrize("name", sorted(RAX))
def test_listwise_losses_are_raxs(name):
  """The loss logged as ``loss``: rax's, averaged over the lists that take part."""
  scores, labels, where, teacher = _lists_of(7)
  rax_loss = {"listnet": lambda **kw: rax.softmax_loss(
                  label_fn=rax.utils.normalize_probabilities, **kw),
              "listmle": rax.listmle_loss, "ranknet": rax.pairwise_logistic_loss,
              "lambdaloss": lambda **kw: rax.pairwise_logistic_loss(
                  lambdaweight_fn=rax.dcg_lambdaweight, **kw)}[name]
  per_list = np.asarray(rax_loss(scores=scores, labels=labels, where=where, reduce_fn=None))
  if per_list.ndim == 2:  # pairwise: [B, n * n] pair terms
    per_list = per_list.sum(-1)
  if name == "lambdaloss":
    per_list = per_list * _dcg_scale(labels, where)[:, 0]
  part = _taking_part(labels, where)[:, 0]
  got = weights.WEIGHTS[name].loss_value(_readout(scores, teacher), labels, where=where)
  assert _rel_err(got, per_list[part].mean()) < 1e-10


def _margin_mse_stated(scores, teacher, labels, where):
  """sentence-transformers' MarginMSE per list: the mean over (positive, negative) pairs of
  ((s_p - s_j) - (t_p - t_j))^2, averaged over the lists with a positive."""
  total, lists = 0.0, 0
  for s, t, y, w in zip(scores, teacher, np.asarray(labels), np.asarray(where)):
    pos = [i for i in range(len(y)) if w[i] and y[i] > 0]
    neg = [j for j in range(len(y)) if w[j] and y[j] == 0]
    if not pos:
      continue
    lists += 1
    if neg:
      total += sum(((s[p] - s[j]) - (t[p] - t[j])) ** 2 for p in pos for j in neg) / (
          len(pos) * len(neg))
  return total / max(lists, 1)


def _hard_infonce_stated(scores, labels, where, alpha, tau):
  """LLaVE's loss per positive: -log e^{s_p/tau} / (e^{s_p/tau} + sum_j w_j e^{s_j/tau}),
  w_j = exp(alpha sg(s_j)), summed over positives, averaged over the lists with a positive."""
  total, lists = 0.0, 0
  for s, y, w in zip(scores, np.asarray(labels), np.asarray(where)):
    pos = [i for i in range(len(y)) if w[i] and y[i] > 0]
    neg = [j for j in range(len(y)) if w[j] and y[j] == 0]
    if not pos:
      continue
    lists += 1
    for p in pos:
      if neg:
        negs = jnp.stack([jnp.exp(alpha * jax.lax.stop_gradient(s[j]) + s[j] / tau) for j in neg])
        total += -jnp.log(jnp.exp(s[p] / tau) / (jnp.exp(s[p] / tau) + jnp.sum(negs)))
  return total / max(lists, 1)


@pytest.mark.parametrize("n", (2, 7))
def test_margin_mse_is_the_gradient_of_its_stated_loss(n):
  scores, labels, where, teacher = _lists_of(n)
  lists = _taking_part(labels, where).sum()
  expected = lists * jax.grad(_margin_mse_stated)(scores, teacher, labels, where)
  readout = _readout(scores, teacher)
  assert _rel_err(weights.margin_mse(readout, labels, where=where), expected) < 1e-10
  np.testing.assert_allclose(weights.WEIGHTS["margin_mse"].loss_value(readout, labels, where=where),
                             _margin_mse_stated(scores, teacher, labels, where), rtol=1e-12)


@pytest.mark.parametrize("alpha,tau", [(1.0, 1.0), (3.0, 0.5), (-0.5, 2.0)])
def test_hard_infonce_is_the_gradient_of_its_stated_loss(alpha, tau):
  scores, labels, where, teacher = _lists_of(7)
  lists = _taking_part(labels, where).sum()
  expected = lists * jax.grad(_hard_infonce_stated)(scores, labels, where, alpha, tau)
  readout = _readout(scores, teacher)
  got = weights.hard_infonce(readout, labels, where=where, alpha=alpha, temperature=tau)
  assert _rel_err(got, expected) < 1e-10
  bound = decomp.resolve_weight("hard_infonce", alpha=alpha, temperature=tau)
  np.testing.assert_allclose(bound.loss_value(readout, labels, where=where),
                             _hard_infonce_stated(scores, labels, where, alpha, tau), rtol=1e-12)


def test_hard_infonce_at_alpha_zero_is_cl():
  scores, labels, where, teacher = _lists_of(64)
  readout = _readout(scores, teacher)
  np.testing.assert_array_equal(weights.hard_infonce(readout, labels, where=where, alpha=0.0),
                                weights.cl(readout, labels, where=where))
  assert float(weights.WEIGHTS["hard_infonce"].bind(alpha=0.0).loss_value(
      readout, labels, where=where)) == float(decomp.cl_loss(scores, labels, where=where))
  # alpha > 0 moves the negatives' push onto the highest-scored negative.
  hard = np.asarray(weights.hard_infonce(readout, labels, where=where, alpha=2.0))
  plain = np.asarray(weights.cl(readout, labels, where=where))
  top = [int(np.argmax(np.where(np.asarray(where[b]) & (np.asarray(labels[b]) == 0),
                                np.asarray(scores[b]), -np.inf))) for b in range(2, 5)]
  assert all(hard[b, j] > plain[b, j] for b, j in zip(range(2, 5), top))


@pytest.mark.parametrize("name", FIELD)
def test_objective_of_the_same_name_has_its_losss_gradient(name):
  """``url_loss(weight=name, direction='cl')`` == the gradient of the loss logged as ``loss``;
  ``score='sft'`` reads z_y - z_n and pairs with D_SFT the same way."""
  scores, labels, where, teacher = _lists_of(7, seed=1)
  objective = decomp.OBJECTIVES[name]
  assert (objective.weight.name, objective.direction.name) == (name, "cl")
  no = jnp.asarray(np.random.default_rng(2).normal(size=scores.shape))
  loss = lambda yes, no: objective.loss_value(_readout(yes, teacher, no), labels, where=where)
  surrogate = lambda yes, no: objective.surrogate(_readout(yes, teacher, no), labels, where=where)
  assert _rel_err(jax.grad(surrogate)(scores, no), jax.grad(loss)(scores, no)) < 1e-10
  by_margin = objective.with_parts(direction="sft", weight_params={"score": "sft"})
  for argnum in (0, 1):
    g_url = jax.grad(lambda y, n: by_margin.surrogate(_readout(y, teacher, n), labels,
                                                      where=where), argnum)(scores, no)
    g_loss = jax.grad(lambda y, n: by_margin.loss_value(_readout(y, teacher, n), labels,
                                                        where=where), argnum)(scores, no)
    assert _rel_err(g_url, g_loss) < 1e-10


@pytest.mark.parametrize("name", FIELD)
def test_all_masked_lists_give_zero(name):
  scores, labels, _, teacher = _lists_of(5)
  where = jnp.zeros(labels.shape, bool)
  readout = _readout(scores, teacher)
  assert np.all(np.asarray(weights.WEIGHTS[name](readout, labels, where=where)) == 0)
  value, grad = jax.value_and_grad(
      lambda s: weights.WEIGHTS[name].loss_value(_readout(s, teacher), labels, where=where))(scores)
  assert float(value) == 0.0 and np.all(np.asarray(grad) == 0)


def test_sft_and_cl_read_a_grade_as_a_positive():
  scores, labels, where, teacher = _lists_of(7)
  readout = _readout(scores, teacher, no=-scores)
  binary = (labels > 0).astype(labels.dtype)
  for name in ("sft", "cl", "constant", "tau_mask", "one_plus_sft", "cl_rescaled"):
    np.testing.assert_array_equal(weights.WEIGHTS[name](readout, labels, where=where),
                                  weights.WEIGHTS[name](readout, binary, where=where))
  # ... while a listwise weight reads the grades.
  assert not np.array_equal(weights.listnet(readout, labels, where=where),
                            weights.listnet(readout, binary, where=where))


@pytest.mark.parametrize("bad, problem", [(-1.0, "negative"), (np.nan, "non-finite"),
                                          (np.inf, "non-finite")])
def test_negative_and_non_finite_labels_are_refused_by_name(bad, problem):
  labels = jnp.array([[2.0, bad, 0.0]])
  with pytest.raises(ValueError, match=rf"url_loss: labels must be relevance grades >= 0.*"
                                       rf"found {problem} labels"):
    decomp.url_loss(jnp.zeros((1, 3)), jnp.zeros((1, 3)), labels, weight="listnet",
                    direction="cl")
  with pytest.raises(ValueError, match=f"found {problem} labels"):
    decomp.losses.listmle_loss(jnp.zeros((1, 3)), labels)
  # Graded labels are accepted where 0/1 used to be required.
  assert np.isfinite(float(decomp.url_loss(jnp.zeros((1, 3)), jnp.zeros((1, 3)),
                                           jnp.array([[2, 1, 0]]), weight="sft", direction="sft")))


def test_bad_parameters_are_named():
  readout, labels = _readout(jnp.zeros((1, 3)), jnp.zeros((1, 3))), jnp.array([[1, 0, 0]])
  with pytest.raises(ValueError, match=r"weight 'listnet': score must be one of \['cl', 'sft'\]"):
    weights.listnet(readout, labels, score="yes")
  with pytest.raises(ValueError, match="weight 'lambdaloss': lambdaweight must be one of"):
    decomp.resolve_weight("lambdaloss", lambdaweight="ndcg")
  with pytest.raises(ValueError, match="weight 'hard_infonce': alpha must be finite"):
    decomp.resolve_weight("hard_infonce", alpha=float("inf"))
  with pytest.raises(ValueError, match=r"weight 'margin_mse' needs the teacher's scores"):
    weights.margin_mse(decomp.Readout(yes=jnp.zeros(3), no=jnp.zeros(3)), jnp.array([1, 0, 0]))


def test_graded_labels_reach_the_listwise_weights_from_beir_qrels(tmp_path):
  d = tmp_path / "trec-covid"
  d.mkdir()
  docs = [{"_id": f"d{i}", "text": f"passage {i}"} for i in range(4)]
  (d / "corpus.jsonl").write_text("".join(json.dumps(x) + "\n" for x in docs))
  (d / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "a question"}) + "\n")
  (d / "qrels").mkdir()
  (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td0\t2\nq1\td1\t1\n"
                                        "q1\td2\t0\n")
  run = tmp_path / "run.trec"
  run.write_text("q1 Q0 d2 1 3 bm25\nq1 Q0 d3 2 2 bm25\nq1 Q0 d1 3 1 bm25\nq1 Q0 d0 4 0 bm25\n")
  (group,) = beir.rerank_groups(beir.load_beir(str(d), run=str(run)))
  labels = _lists.relevance_labels(np.array([group.labels]))
  assert labels.tolist() == [[0, 0, 1, 2]]
  readout = _readout(jnp.zeros((1, 4)), jnp.zeros((1, 4)))
  # ListNet's target is the grades' distribution: d0 (grade 2) pulled twice as hard as d1.
  np.testing.assert_allclose(weights.listnet(readout, jnp.asarray(labels)),
                             [[0.25, 0.25, 0.25 - 1 / 3, 0.25 - 2 / 3]], rtol=1e-12)


def test_flag_rows_carry_optional_grades(tmp_path):
  rows = [{"query": "q", "pos": ["a", "b"], "neg": ["c"], "pos_labels": [3, 1]},
          {"query": "q", "pos": ["a"], "neg": ["c"], "pos_labels": [0]},
          {"query": "q", "pos": ["a"], "neg": ["c"], "pos_labels": [1.5]}]
  (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  groups, stats, _ = flag.load_flag(str(tmp_path / "train.jsonl"), errors="skip")
  assert [g.labels for g in groups] == [(3, 1, 0)]
  assert dict(stats.reasons) == {"bad label": 2}
