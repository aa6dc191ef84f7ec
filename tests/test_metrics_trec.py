"""decomp.metrics.evaluate_run against pytrec_eval (trec_eval 9), and the gain conventions."""

import jax.numpy as jnp
import numpy as np
import pytest

from decomp import metrics

pytrec_eval = pytest.importorskip("pytrec_eval")

CUTOFFS = (1, 5, 10, 100)


def _collection(seed, *, graded, ties, queries=12, docs=150):
  """Random qrels and a run: unjudged and missed relevant documents, queries on one side only."""
  rng = np.random.default_rng(seed)
  qrels, run = {}, {}
  for q in range(queries):
    qid = f"q{q}"
    ids = [f"d{rng.integers(0, 10 * docs)}" for _ in range(docs)]
    ids = list(dict.fromkeys(ids))
    levels = rng.integers(0, 4 if graded else 2, size=len(ids))
    judged = rng.random(len(ids)) < 0.4
    if q != 0:  # q0 has no judgments at all -> only in the run
      qrels[qid] = {d: int(r) for d, r, j in zip(ids, levels, judged) if j}
      # some relevant documents the run never retrieves
      qrels[qid].update({f"missed{q}-{i}": int(rng.integers(1, 3 if graded else 2))
                         for i in range(q % 3)})
    if q != 1:  # q1 is judged but not run
      n_run = int(rng.integers(3, len(ids)))
      values = rng.integers(0, 5, n_run) if ties else rng.normal(size=n_run)
      run[qid] = {d: float(v) for d, v in zip(ids[:n_run], values)}
  qrels["q2"] = {d: 0 for d in list(run["q2"])[:5]}  # judged, nothing relevant
  return qrels, run


def _pytrec(qrels, run):
  measures = {"ndcg_cut." + ",".join(map(str, CUTOFFS)), "recip_rank",
              "recall." + ",".join(map(str, CUTOFFS)), "P." + ",".join(map(str, CUTOFFS))}
  return pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)


@pytest.mark.parametrize("graded", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_matches_pytrec_eval(graded, ties):
  for seed in range(2):
    qrels, run = _collection(seed, graded=graded, ties=ties)
    ref = _pytrec(qrels, run)
    ours = metrics.evaluate_run(qrels, run, cutoffs=CUTOFFS)
    assert ours["convention"] == "trec_eval" and ours["gain"] == "linear"
    assert set(ours["per_query"]) == set(ref)
    assert ours["queries_not_in_run"] == ["q1"] and ours["queries_not_in_qrels"] == ["q0"]
    for qid, want in ref.items():
      got = ours["per_query"][qid]
      for k in CUTOFFS:
        # trec_eval's recip_rank has no cut-off: MRR@k is it when the first hit is within k.
        rr = want["recip_rank"] if want["recip_rank"] * k >= 1 - 1e-12 else 0.0
        for name, value in ((f"ndcg@{k}", want[f"ndcg_cut_{k}"]), (f"mrr@{k}", rr),
                            (f"recall@{k}", want[f"recall_{k}"]), (f"p@{k}", want[f"P_{k}"])):
          assert got[name] == pytest.approx(value, rel=1e-12, abs=1e-12), (seed, qid, name)
    for name in ours["mean"]:
      per = [ours["per_query"][q][name] for q in ref]
      assert ours["mean"][name] == pytest.approx(np.mean(per), rel=1e-12)


def test_ties_break_by_document_id_descending():
  qrels = {"q": {"a": 1, "c": 2}}
  run = {"q": {"a": 1.0, "b": 1.0, "c": 1.0}}
  assert metrics.rank_run(run["q"]) == ["c", "b", "a"]
  assert metrics.rank_run(run["q"], "input") == ["a", "b", "c"]
  with pytest.raises(ValueError, match="'b' has score nan"):
    metrics.rank_run({"a": 1.0, "b": float("nan")})
  ours = metrics.evaluate_run(qrels, run, cutoffs=(1,))
  assert ours["per_query"]["q"]["mrr@1"] == 1.0
  rax_style = metrics.evaluate_run(qrels, run, cutoffs=(1,), convention="rax")
  assert rax_style["per_query"]["q"]["ndcg@1"] == pytest.approx(1 / 3)  # a first: (2^1-1)/(2^2-1)


def test_linear_and_exponential_gain():
  scores = jnp.array([[3.0, 2.0, 1.0]])
  labels = jnp.array([[1.0, 2.0, 0.0]])
  ideal_lin, ideal_exp = 2 + 1 / np.log2(3), 3 + 1 / np.log2(3)
  np.testing.assert_allclose(metrics.ndcg(scores, labels, gain="linear"),
                             (1 + 2 / np.log2(3)) / ideal_lin, rtol=1e-6)
  np.testing.assert_allclose(metrics.ndcg(scores, labels),
                             (1 + 3 / np.log2(3)) / ideal_exp, rtol=1e-6)
  binary = jnp.array([[1.0, 0.0, 1.0]])
  np.testing.assert_allclose(metrics.ndcg(scores, binary, gain="linear"),
                             metrics.ndcg(scores, binary), rtol=1e-6)
  with pytest.raises(ValueError, match="unknown gain"):
    metrics.ndcg(scores, labels, gain="cubic")


def test_rax_convention_is_the_array_metrics():
  qrels, run = _collection(5, graded=True, ties=True, queries=4, docs=20)
  ours = metrics.evaluate_run(qrels, run, cutoffs=(5,), convention="rax")
  for qid, values in ours["per_query"].items():
    order = metrics.rank_run(run[qid], "input")
    docs = list(run[qid])
    scores = jnp.array([run[qid][d] for d in docs])
    labels = jnp.array([max(qrels[qid].get(d, 0), 0) for d in docs], jnp.float32)
    if any(d not in run[qid] and r > 0 for d, r in qrels[qid].items()):
      continue  # missed relevant documents: the array metrics cannot see them
    assert order[0] in docs
    assert values["ndcg@5"] == pytest.approx(float(metrics.ndcg(scores, labels, topn=5)),
                                             rel=1e-5)
    assert values["p@5"] == pytest.approx(float(metrics.precision(scores, labels, topn=5)),
                                          rel=1e-5)


def test_empty_and_bad_arguments():
  out = metrics.evaluate_run({"q": {"a": 1}}, {"x": {"a": 1.0}})
  assert out["num_queries"] == 0 and out["mean"] == {"ndcg@10": 0.0, "mrr@10": 0.0,
                                                     "recall@10": 0.0, "p@10": 0.0}
  with pytest.raises(ValueError, match="convention"):
    metrics.evaluate_run({}, {}, convention="galago")
  with pytest.raises(ValueError, match="cutoffs"):
    metrics.evaluate_run({}, {}, cutoffs=(0,))
