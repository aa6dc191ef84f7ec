"""The chunked two-pass gradient equals the one-pass gradient of url_surrogate, on a fixed memory.

A small nonlinear "reranker" (a 2-layer MLP over each document's tokens, mean-pooled to h, with
label rows M_y, M_n, a vocabulary for the log-normaliser and a projection score) is differentiated
both ways in float64: every registered (weight, direction) pair, chunk sizes that do and do not
divide the list, masked documents, lists without a positive, B > 1, and gradient accumulation
over micro-batches. The memory test compiles the step and reads XLA's temporary buffers.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from decomp import _lists, chunked, directions, resolve_weight, url_surrogate, weights
from decomp.readout import Readout

PAIRS = list(itertools.product(sorted(weights.WEIGHTS), sorted(directions.DIRECTIONS)))
TOKENS, FEATURES, WIDTH, DIM, VOCAB = 3, 5, 8, 6, 11
# The tests' cost is XLA compiling small programs; its lowest backend (LLVM) optimisation level
# halves that and changes neither a float64 result nor the buffer assignment the memory test reads
# (checked: the same temp bytes at both levels).
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


@pytest.fixture(autouse=True)
def float64():
  with jax.enable_x64(True):
    yield


def init_params(seed=0, *, features=FEATURES, width=WIDTH, dim=DIM, vocab=VOCAB,
                dtype=jnp.float64):
  # numpy's generator, not jax.random: eager jax.random compiles a kernel per shape.
  rng = np.random.default_rng(seed)
  normal = lambda shape, scale: jnp.asarray(scale * rng.standard_normal(shape), dtype)
  return {
      "w1": normal((features, width), 1.0 / np.sqrt(features)),
      "b1": normal((width,), 0.1),
      "w2": normal((width, dim), 1.0 / np.sqrt(width)),
      "label_rows": normal((2, dim), 1.0),
      "vocab": normal((vocab, dim), 1.0),
      "projection": normal((dim,), 1.0),
  }


def readout_fn(params, docs):
  """Readout ``[..., n]`` of ``docs['x']`` ``[..., n, T, F]``, every document on its own."""
  act = jnp.tanh(docs["x"] @ params["w1"] + params["b1"])
  hidden = jnp.mean(jnp.tanh(act @ params["w2"]), axis=-2)          # [..., n, d]
  label_logits = hidden @ params["label_rows"].T
  all_rows = jnp.concatenate([params["label_rows"], params["vocab"]])
  return Readout(
      yes=label_logits[..., 0], no=label_logits[..., 1],
      log_normalizer=jax.nn.logsumexp(hidden @ all_rows.T, axis=-1), hidden=hidden,
      # A teacher's scores (for the distillation weight): data, not a function of the params.
      extra_scores={"projection": hidden @ params["projection"],
                    "teacher": 0.1 * jnp.sum(docs["x"], axis=(-2, -1))})


def make_batch(seed=1, *, groups=3, n=7, tokens=TOKENS, features=FEATURES):
  """Lists with several positives, masked documents (the last one too), a list without a
  positive."""
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((groups, n, tokens, features)))
  labels = np.zeros((groups, n), np.int32)
  where = np.ones((groups, n), bool)
  for g in range(groups):
    if g % 3 == 2:
      continue                                                      # no positive at all
    labels[g, rng.choice(n, size=1 + g % 2, replace=False)] = 1
    masked = rng.choice(np.flatnonzero(labels[g] == 0), size=min(2, n - 2), replace=False)
    where[g, masked] = False
  where[0, -1] = False
  return {"x": x}, jnp.asarray(labels), jnp.asarray(where)


def one_pass(params, docs, labels, where, weight, direction, reduce_fn=jnp.mean):
  def surrogate(p):
    return url_surrogate(readout_fn(p, docs), labels, weight=weight, direction=direction,
                         where=where, reduce_fn=reduce_fn)
  return jax.value_and_grad(surrogate)(params)


def relative_error(tree, reference):
  diff = optax.tree.norm(jax.tree.map(jnp.subtract, tree, reference))
  return diff / optax.tree.norm(reference)


def max_error(x, reference, rtol):
  """max |x - ref| / (rtol |ref| + tiny): <= 1 where close."""
  return jnp.max(jnp.abs(x - reference) / (rtol * jnp.abs(reference) + 1e-15))


@functools.partial(jit, static_argnames=("cases",))
def errors(params, docs, labels, where, cases):
  """For each ``(weight, direction, doc_chunk, micro_batches)``: how far the chunked result is
  from the one-pass one. One jitted program for all cases (one compile, not one per case)."""
  out = {}
  readout = readout_fn(params, docs)
  for weight, direction, doc_chunk, micro_batches in cases:
    if micro_batches:
      got = chunked.accumulate_grads(readout_fn, params, docs, labels, weight=weight,
                                     direction=direction, where=where, doc_chunk=doc_chunk,
                                     micro_batches=micro_batches)
    else:
      got = chunked.chunked_value_and_grad(readout_fn, params, docs, labels, weight=weight,
                                           direction=direction, where=where, doc_chunk=doc_chunk)
    value, grads = one_pass(params, docs, labels, where, weight, direction)
    signed_weight = resolve_weight(weight)(readout, labels, where=where)
    out[weight, direction, doc_chunk, micro_batches] = {
        "grad_norm": optax.tree.norm(grads),
        "grad": relative_error(got.grads, grads),
        "value": max_error(got.value, value, 1e-12),
        "yes": max_error(got.readout.yes, readout.yes, 1e-12),
        "hidden": max_error(got.readout.hidden, readout.hidden, 1e-12),
        "log_normalizer": max_error(got.readout.log_normalizer, readout.log_normalizer, 1e-12),
        "projection": max_error(got.readout.extra_scores["projection"],
                                readout.extra_scores["projection"], 1e-12),
        "signed_weight": max_error(got.signed_weight, signed_weight, 1e-12),
    }
  return out


def assert_match_one_pass(params, docs, labels, where, cases):
  for case, err in errors(params, docs, labels, where, tuple(cases)).items():
    err = {k: float(v) for k, v in err.items()}
    assert err.pop("grad_norm") > 0, case
    assert err.pop("grad") < 1e-10, (case, err)
    assert max(err.values()) <= 1.0, (case, err)


def by_index(weight_index, direction_index):
  """The registered weight and direction at traced indices (``lax.switch``): one compiled
  program checks all 24 pairs, instead of 24 compilations (~1 s each on a shared CPU)."""
  weight_fns = [weights.WEIGHTS[w] for w, _ in PAIRS[::len(directions.DIRECTIONS)]]
  direction_fns = [directions.DIRECTIONS[d] for d in sorted(directions.DIRECTIONS)]

  def weight(readout, labels, *, where=None):
    return jax.lax.switch(weight_index, [lambda r, l, m, f=f: f(r, l, where=m)
                                         for f in weight_fns], readout, labels, where)

  def direction(readout):
    return jax.lax.switch(direction_index, direction_fns, readout)

  return weight, direction


def test_every_pair_matches_one_pass():
  params = init_params()
  docs, labels, where = make_batch()

  @jit
  def pair_errors(weight_index, direction_index):
    weight, direction = by_index(weight_index, direction_index)
    got = chunked.chunked_value_and_grad(readout_fn, params, docs, labels, weight=weight,
                                         direction=direction, where=where, doc_chunk=3)
    value, grads = one_pass(params, docs, labels, where, weight, direction)
    return (relative_error(got.grads, grads), optax.tree.norm(grads),
            max_error(got.value, value, 1e-12))

  n_directions = len(directions.DIRECTIONS)
  for index, pair in enumerate(PAIRS):
    grad_error, grad_norm, value_error = map(
        float, pair_errors(index // n_directions, index % n_directions))
    assert grad_norm > 0 and grad_error < 1e-10 and value_error <= 1, (pair, grad_error)


def test_chunk_sizes():
  """Sizes that divide the list (1, 7) and do not (2, 5: the last chunk moves back); 0 (one
  pass) is checked with accumulation, 3 with every pair."""
  docs, labels, where = make_batch(3)
  cases = [("cl", "cl", 1, 0), ("sft", "cl_logprob", 2, 0), ("cl_rescaled", "projection", 5, 0),
           ("tau_mask", "sft", 7, 0)]
  assert_match_one_pass(init_params(2), docs, labels, where, cases)


def test_no_mask_callable_weight_and_sum_reduction():
  docs, labels, _ = make_batch(5, groups=2, n=6)
  weight = functools.partial(weights.cl, temperature=0.3)

  @jit
  def both(params):
    got = chunked.chunked_value_and_grad(readout_fn, params, docs, labels, weight=weight,
                                         direction="sft", doc_chunk=4, reduce_fn=jnp.sum)
    return got, one_pass(params, docs, labels, None, weight, "sft", reduce_fn=jnp.sum)

  got, (value, grads) = both(init_params(4))
  assert float(relative_error(got.grads, grads)) < 1e-10
  np.testing.assert_allclose(got.value, value, rtol=1e-12)


def test_masked_documents_contribute_exactly_zero():
  """Changing masked documents' inputs (or a list without a positive) changes no gradient."""
  params = init_params(6)
  docs, labels, where = make_batch(7)
  run = jit(lambda docs: chunked.chunked_value_and_grad(
      readout_fn, params, docs, labels, weight="cl", direction="cl", where=where, doc_chunk=3))
  out = run(docs)
  ignored = ~np.asarray(_lists.doc_mask(labels, where))
  assert ignored[0, -1] and ignored[2].all()   # the last document, a list without a positive
  noise = 5.0 * np.random.default_rng(8).standard_normal(docs["x"].shape)
  out_moved = run({"x": jnp.where(ignored[..., None, None], docs["x"] + noise, docs["x"])})
  for a, b in zip(jax.tree.leaves(out.grads), jax.tree.leaves(out_moved.grads)):
    np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
  assert float(jnp.max(jnp.abs(out.signed_weight[ignored]))) == 0.0


def test_no_list_has_a_positive():
  """url_surrogate's rule: no list takes part -> value 0 and zero gradients, not NaN."""
  docs, _, where = make_batch(10)
  labels = jnp.zeros(where.shape, jnp.int32)
  outs = jit(lambda params: [chunked.chunked_value_and_grad(
      readout_fn, params, docs, labels, weight="cl", direction="cl_logprob", where=where,
      doc_chunk=doc_chunk) for doc_chunk in (0, 3)])(init_params(9))
  for out in outs:
    assert float(out.value) == 0.0
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(out.grads))


def test_low_precision_params():
  """float32 params (and inputs) accumulate in float32 and come back float32."""
  params = init_params(11)
  docs, labels, where = make_batch(12, groups=2, n=9)
  _, grads = jit(functools.partial(one_pass, weight="sft", direction="sft"))(
      params, docs, labels, where)
  to32 = lambda tree: jax.tree.map(lambda x: x.astype(jnp.float32), tree)
  out32 = jit(functools.partial(chunked.chunked_value_and_grad, readout_fn, weight="sft",
                                    direction="sft", doc_chunk=4))(
                                        to32(params), to32(docs), labels, where=where)
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(out32.grads))
  as64 = jax.tree.map(lambda g: g.astype(jnp.float64), out32.grads)
  assert float(relative_error(as64, grads)) < 1e-5


def test_accumulation_equals_the_large_batch():
  """4 micro-batches (one without any valid list) give the 8-group batch's value and gradient."""
  docs, labels, where = make_batch(14, groups=8, n=5)
  # Micro-batch j holds groups j, j+4: groups 2 and 6 lack a positive -> part 2 has no valid list.
  labels = labels.at[6].set(0)
  assert not bool(jnp.any(_lists.list_mask(labels[2::4], where[2::4])))
  cases = [("cl", "cl", 0, 4), ("cl_rescaled", "cl_logprob", 3, 4)]
  assert_match_one_pass(init_params(13), docs, labels, where, cases)


@pytest.mark.parametrize("doc_chunk,error,match", [
    (8, ValueError, r"doc_chunk=8 .*lists of 7 .*0 \(no chunking\) or 1\.\.7"),
    (-1, ValueError, r"doc_chunk=-1 .*valid values"),
    (2.5, TypeError, r"doc_chunk must be an integer.*1\.\.7"),
    (True, TypeError, r"doc_chunk must be an integer"),
    ("4", TypeError, r"doc_chunk must be an integer"),
])
def test_bad_doc_chunk(doc_chunk, error, match):
  params = init_params()
  docs, labels, where = make_batch()
  with pytest.raises(error, match=match):
    chunked.chunked_value_and_grad(readout_fn, params, docs, labels, weight="cl", direction="cl",
                                   where=where, doc_chunk=doc_chunk)


def test_bad_inputs():
  params = init_params()
  docs, labels, where = make_batch(groups=4)
  call = functools.partial(chunked.accumulate_grads, readout_fn, params, weight="cl",
                           direction="cl", where=where)
  with pytest.raises(ValueError, match=r"micro_batches=3 must divide .* 4 groups.*\[1, 2, 4\]"):
    call(docs, labels, micro_batches=3)
  with pytest.raises(TypeError, match="micro_batches must be an integer"):
    call(docs, labels, micro_batches=2.0)
  with pytest.raises(ValueError, match=r"docs\['x'\] has shape \(4, 6, 3, 5\)"):
    call({"x": docs["x"][:, :6]}, labels, micro_batches=2)
  with pytest.raises(ValueError, match="reduce_fn must be jnp.mean or jnp.sum"):
    call(docs, labels, micro_batches=2, reduce_fn=jnp.max)
  with pytest.raises(ValueError, match="reduce_fn must not be None"):
    chunked.chunked_value_and_grad(readout_fn, params, docs, labels, weight="cl",
                                   direction="cl", doc_chunk=2, reduce_fn=None)


def _temp_bytes(n, doc_chunk, groups=2):
  """XLA's temporary buffers of the compiled gradient, for a model whose per-document
  activations (64 tokens x 256 units) dwarf its parameters."""
  params = init_params(features=16, width=256, dim=32, vocab=8, dtype=jnp.float32)
  docs = {"x": jax.ShapeDtypeStruct((groups, n, 64, 16), jnp.float32)}
  labels = jax.ShapeDtypeStruct((groups, n), jnp.int32)
  step = jit(functools.partial(chunked.chunked_value_and_grad, readout_fn, weight="cl",
                               direction="cl", doc_chunk=doc_chunk))
  return step.lower(params, docs, labels).compile().memory_analysis().temp_size_in_bytes


def test_memory_is_one_chunk():
  """Measured on CPU (jax 0.10.2): 4 docs 1,179,648 B; 64 docs chunked by 4 1,181,936 B
  (1.002x); 64 docs in one pass 18,874,368 B (16x). The bounds are loose on purpose."""
  four = _temp_bytes(4, 0)
  chunked64 = _temp_bytes(64, 4)
  one_pass64 = _temp_bytes(64, 0)
  assert one_pass64 > 8 * four, (four, one_pass64)
  assert chunked64 < 2 * four, (four, chunked64)


def test_sharded_batch_and_params():
  """Groups split over a 'data' axis, parameters over an 'fsdp' axis (8 simulated CPUs): the
  chunked, accumulated gradient still equals the one-pass one."""
  if jax.device_count() < 8:
    pytest.skip("needs 8 (simulated) devices")
  from jax.sharding import AxisType, NamedSharding, PartitionSpec
  mesh = jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)
  shard = lambda x, *spec: jax.device_put(x, NamedSharding(mesh, PartitionSpec(*spec)))
  params = init_params(17)
  params = {k: shard(v, "fsdp" if v.shape[0] % 4 == 0 else None) for k, v in params.items()}
  docs, labels, where = make_batch(18, groups=4, n=6)
  docs, labels, where = {"x": shard(docs["x"], "data")}, shard(labels, "data"), shard(where, "data")
  cases = (("cl", "cl_logprob", 4, 2),)
  for case, err in errors(params, docs, labels, where, cases).items():
    assert float(err["grad"]) < 1e-10, (case, err)


def test_wired_to_a_reranker():
  """The wiring the training step uses: ``readout_fn`` merges the NNX model and reads a chunk of
  the batch arrays ``[B, c, ...]``, as the training step's readout does. A tiny 1-layer
  Qwen2-shaped reranker, text only (a 1-layer SigLIP encoder triples this test's compile time;
  images are further ``[B, n, ...]`` leaves, sliced alike), float32 (the model computes its
  softmax and readout in float32), so the tolerance is float32's."""
  from flax import nnx

  from decomp.models.config import DecoderConfig
  from decomp.models.decoder import Decoder
  from decomp.models.reranker import Reranker

  vocab, yes_no = 40, (7, 9)

  @nnx.jit
  def create():
    decoder = Decoder(DecoderConfig(
        architecture="qwen2", vocab_size=vocab, hidden_size=32, intermediate_size=64,
        num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8, attention_bias=True),
        rngs=nnx.Rngs(0))
    return Reranker(decoder, yes_no, projection_direction=True, rngs=nnx.Rngs(2))

  graphdef, params, frozen = nnx.split(create(), nnx.Param, ...)
  groups, n, length = 2, 5, 12
  rng = np.random.default_rng(19)
  attention_mask = np.ones((groups, n, length), np.int32)
  for g, d in itertools.product(range(groups), range(n)):
    attention_mask[g, d, :rng.integers(0, 6)] = 0                         # left padding
  batch = {"input_ids": jnp.asarray(rng.integers(10, vocab, (groups, n, length)), jnp.int32),
           "attention_mask": jnp.asarray(attention_mask),
           "labels": jnp.asarray([[1, 0, 0, 1, 0], [0, 0, 1, 0, 0]]),
           "where": jnp.asarray([[True] * 5, [True, True, True, False, False]])}

  def readout_fn(params, docs):
    model = nnx.merge(graphdef, params, frozen)
    return model.readout(docs["input_ids"], docs["attention_mask"], docs.get("pixel_values"),
                         docs.get("image_valid"), needs={"log_normalizer"})

  @jit
  def both(params, batch):
    docs = {k: v for k, v in batch.items() if k not in ("labels", "where")}
    got = chunked.chunked_value_and_grad(readout_fn, params, docs, batch["labels"], weight="cl",
                                         direction="cl_logprob", where=batch["where"],
                                         doc_chunk=2)
    reference = jax.grad(lambda p: url_surrogate(
        readout_fn(p, docs), batch["labels"], weight="cl", direction="cl_logprob",
        where=batch["where"]))(params)
    return got, reference

  got, reference = both(params, batch)
  assert float(optax.tree.norm(reference)) > 0
  assert float(relative_error(got.grads, reference)) < 1e-5
  assert got.readout.hidden.shape == (groups, n, 32)
  assert len(jax.tree.leaves(got.grads)) == len(jax.tree.leaves(params)) > 10
