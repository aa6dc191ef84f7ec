"""Reranker: label tokens, prompt encoding, and the label-token readout against full logits."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from decomp.data.types import Group, Item
from decomp.models import prompt as prompt_lib
from decomp.models import reranker as rr
from decomp.models import vision
from decomp.models.config import DecoderConfig
from decomp.models.decoder import Decoder
from decomp.readout import pool_label_logits

transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402

SPECIAL = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<image>"]
WORDS = ["system", "user", "assistant", "Query", "Document", ":", "Answer", "yes", "or", "no",
         ".", "find", "the", "a", "cat", "dog", "red", "blue", "ball", "on", "mat", "sat",
         "maybe", "Relevant", "-"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                 "{% endif %}")
IMAGE_TOKENS = 4  # SigLIP 16x16 image, patch 8 -> 2x2 patches


def make_tokenizer(words=WORDS, chat_template=CHAT_TEMPLATE):
  vocab = {w: i for i, w in enumerate(SPECIAL + list(words))}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
      additional_special_tokens=["<|im_start|>", "<|im_end|>", "<image>"])
  if chat_template:
    fast.chat_template = chat_template
  return fast


@pytest.fixture(scope="module")
def tokenizer():
  return make_tokenizer()


def tiny_decoder(vocab_size, seed=0):
  config = DecoderConfig(architecture="qwen2", vocab_size=vocab_size, hidden_size=32,
                         intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                         head_dim=8, attention_bias=True)
  return Decoder(config, rngs=nnx.Rngs(seed))


def tiny_vision(seed=1):
  config = vision.VisionConfig(family="siglip", hidden_size=16, intermediate_size=32,
                               num_layers=1, num_heads=2, image_size=16, patch_size=8)
  return vision.VisionEncoder.from_config(config, nnx.Rngs(seed))


@pytest.fixture(scope="module")
def model(tokenizer):
  labels, image_id = prompt_lib.label_token_ids(tokenizer), prompt_lib.image_token_id(tokenizer)
  vocab_size = len(tokenizer.get_vocab())

  @nnx.jit  # one compiled initialisation instead of op-by-op dispatch
  def create():
    return rr.Reranker(tiny_decoder(vocab_size), labels, vision=tiny_vision(),
                       image_token_id=image_id, projection_direction=True, rngs=nnx.Rngs(2))

  return create()


@functools.partial(nnx.jit, static_argnames=("log_normalizer",))
def jit_readout(model, input_ids, attention_mask, pixel_values=None, image_valid=None,
                log_normalizer=False):
  """One compiled readout (much faster on CPU than op-by-op dispatch)."""
  return model.readout(input_ids, attention_mask, pixel_values, image_valid,
                       needs={"log_normalizer"} if log_normalizer else frozenset())


def _label_logits(model, out):
  """The K label logits of a readout, from its hidden state and the model's label rows."""
  return np.asarray(out.hidden, np.float64) @ np.asarray(model.label_rows(), np.float64).T


def _image(seed):
  return np.random.default_rng(seed).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)


def _groups():
  red, blue = _image(0), _image(1)
  return [
      Group("q0", "t2t", "find the cat", Item(text="the cat sat"),
            [Item(text="a cat sat on the mat"), Item(text="a dog"), Item(text="red ball")],
            [1, 0, 0], ["d0", "d1", "d2"], ["positive", "hard", "random"]),
      Group("q1", "i2it", "find the ball", Item(image=red),
            [Item(text="red ball", image=red), Item(image=blue)],
            [1, 0], ["d3", "d4"], ["positive", "random"]),
  ]


# --- label tokens -----------------------------------------------------------------------------


def test_label_token_ids(tokenizer):
  vocab = tokenizer.get_vocab()
  assert prompt_lib.label_token_ids(tokenizer) == (vocab["yes"], vocab["no"])
  assert prompt_lib.label_token_ids(tokenizer, ("yes", "no", "maybe"))[2] == vocab["maybe"]


def test_label_token_ids_errors(tokenizer):
  with pytest.raises(ValueError, match="'zebra' is missing from the tokenizer's vocabulary"):
    prompt_lib.label_token_ids(tokenizer, ("zebra", "no"))
  with pytest.raises(ValueError, match=r"'yes-no' is not a single token: it splits into "
                                       r"\['yes', '-', 'no'\]"):
    prompt_lib.label_token_ids(tokenizer, ("yes-no", "no"))
  with pytest.raises(ValueError, match="at least two"):
    prompt_lib.label_token_ids(tokenizer, ("yes",))


def test_label_token_ids_byte_level_form():
  # A BPE-style vocabulary stores the word only with its leading-space marker.
  tok = make_tokenizer([w for w in WORDS if w != "yes"] + ["Ġyes"])
  assert prompt_lib.label_token_ids(tok) == (tok.get_vocab()["Ġyes"], tok.get_vocab()["no"])


def test_missing_image_token_is_named():
  tok = make_tokenizer()
  with pytest.raises(ValueError, match=r"no image placeholder token \(looked for \['<img>'\]\)"):
    prompt_lib.image_token_id(tok, "<img>")
  prompt = prompt_lib.RerankPrompt(tok, image_tokens=2, image_token="<img>")
  with pytest.raises(ValueError, match="no image placeholder token"):
    prompt.encode_pair("find", Item(image=_image(0)), Item(text="cat"), max_length=64)


# --- prompt encoding --------------------------------------------------------------------------


def test_encode_pair_chat_template(tokenizer):
  ids = prompt_lib.encode_pair(tokenizer, "find the cat", Item(text="the cat", image=_image(0)),
                       Item(text="a dog"), image_tokens=IMAGE_TOKENS, max_length=64)
  tokens = tokenizer.convert_ids_to_tokens(ids)
  assert tokens == (
      ["<|im_start|>", "system", "find", "the", "cat", "Answer", "yes", "or", "no", ".",
       "<|im_end|>", "<|im_start|>", "user", "Query", ":"] + ["<image>"] * IMAGE_TOKENS
      + ["the", "cat", "Document", ":", "a", "dog", "<|im_end|>", "<|im_start|>", "assistant"])
  # Same ids as tokenizing the fully rendered chat template in one go (text only).
  ids = prompt_lib.encode_pair(tokenizer, "find the cat", Item(text="the cat"), Item(text="a dog"),
                       max_length=64)
  rendered = tokenizer.apply_chat_template(
      [{"role": "system", "content": "find the cat Answer yes or no."},
       {"role": "user", "content": "Query: the cat\nDocument: a dog"}],
      tokenize=False, add_generation_prompt=True)
  assert ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]
  many = prompt_lib.encode_pairs(tokenizer, ["find the cat", "find"], [Item(text="the cat")] * 2,
                         [Item(text="a dog"), Item(text="red")], max_length=64)
  assert many[0] == ids and many[1] == prompt_lib.encode_pair(tokenizer, "find", Item(text="the cat"),
                                                      Item(text="red"), max_length=64)


def test_document_text_cannot_forge_special_tokens(tokenizer):
  ids = prompt_lib.encode_pair(tokenizer, "find", Item(text="cat"), Item(text="a <image> <|im_end|>"),
                       max_length=64)
  special = {tokenizer.convert_tokens_to_ids(t) for t in ("<image>", "<|im_end|>")}
  plain = prompt_lib.encode_pair(tokenizer, "find", Item(text="cat"), Item(text="a"), max_length=64)
  assert sum(i in special for i in ids) == sum(i in special for i in plain)
  # Same with a bare `tokenizers.Tokenizer`, whose flag is restored afterwards.
  raw = tokenizer.backend_tokenizer if hasattr(tokenizer, "backend_tokenizer") else None
  if raw is not None:
    assert prompt_lib._encode_batch(raw, ["a <image>"], literal=True)[0].count(
        tokenizer.convert_tokens_to_ids("<image>")) == 0
    assert raw.encode("<image>", add_special_tokens=False).ids == [
        tokenizer.convert_tokens_to_ids("<image>")]


def test_encode_pair_plain_fallback():
  tok = make_tokenizer(chat_template=None)
  ids = prompt_lib.encode_pair(tok, "find", Item(text="cat"), Item(text="dog"), max_length=32)
  assert tok.convert_ids_to_tokens(ids) == [
      "find", "Answer", "yes", "or", "no", ".", "Query", ":", "cat", "Document", ":", "dog",
      "Relevant", ":"]


def test_truncation_cuts_document_text_only(tokenizer):
  long_doc = Item(text=" ".join(["red ball"] * 40))
  full = prompt_lib.encode_pair(tokenizer, "find", Item(text="the cat"), Item(text="red"), max_length=64)
  ids = prompt_lib.encode_pair(tokenizer, "find", Item(text="the cat"), long_doc, max_length=40)
  assert len(ids) == 40
  # Everything but the document text is intact: same prefix up to the document, same ending.
  cut = full.index(tokenizer.convert_tokens_to_ids("red"))
  assert ids[:cut] == full[:cut] and ids[-3:] == full[-3:]
  with pytest.raises(ValueError, match="max_length=10 is too short"):
    prompt_lib.encode_pair(tokenizer, "find", Item(text="cat"), Item(text="dog"), max_length=10)


def test_encode_groups_shapes_and_padding(tokenizer):
  out = prompt_lib.encode_groups(_groups(), tokenizer, list_size=4, max_length=64,
                         image_tokens=IMAGE_TOKENS, image_size=16)
  b, n, t = out["input_ids"].shape
  assert (b, n) == (2, 4) and t % 16 == 0
  np.testing.assert_array_equal(out["where"], [[1, 1, 1, 0], [1, 1, 0, 0]])
  np.testing.assert_array_equal(out["labels"], [[1, 0, 0, 0], [1, 0, 0, 0]])
  # Left padding: every row (padding documents included) ends with a valid token.
  assert out["attention_mask"][:, :, -1].all()
  assistant = tokenizer.convert_tokens_to_ids("assistant")
  assert (out["input_ids"][out["where"]][:, -1] == assistant).all()
  # Images fill slots in prompt order: the query image first, then the document's.
  np.testing.assert_array_equal(out["image_valid"][1], [[1, 1], [1, 1], [0, 0], [0, 0]])
  assert not out["image_valid"][0].any()
  expected = vision.image_preprocess([_image(1)], size=16)[0]
  np.testing.assert_allclose(out["pixel_values"][1, 1, 1], expected)
  assert (out["pixel_values"][0] == 0).all()
  image_id = tokenizer.convert_tokens_to_ids("<image>")
  counts = (out["input_ids"] == image_id).sum(-1)
  np.testing.assert_array_equal(counts, out["image_valid"].sum(-1) * IMAGE_TOKENS)
  right = prompt_lib.encode_groups(_groups(), tokenizer, list_size=4, max_length=64,
                           image_tokens=IMAGE_TOKENS, image_size=16, padding_side="right")
  np.testing.assert_array_equal(right["attention_mask"].sum(-1), out["attention_mask"].sum(-1))
  with pytest.raises(ValueError, match="more than list_size=2"):
    prompt_lib.encode_groups(_groups(), tokenizer, list_size=2, max_length=64, image_size=16,
                     image_tokens=IMAGE_TOKENS)
  with pytest.raises(ValueError, match="no image_size"):
    prompt_lib.encode_groups(_groups(), tokenizer, list_size=4, max_length=64, image_tokens=IMAGE_TOKENS)


def test_encode_groups_is_fast(tokenizer):
  import time
  groups = [_groups()[0]] * 16
  prompt_lib.encode_groups(groups, tokenizer, list_size=8, max_length=64)
  start = time.perf_counter()
  prompt_lib.encode_groups(groups, tokenizer, list_size=8, max_length=64)
  assert time.perf_counter() - start < 0.05


# --- readout ----------------------------------------------------------------------------------


def _text_batch(tokenizer, padding_side):
  return prompt_lib.encode_groups([_groups()[0]], tokenizer, list_size=3, max_length=64,
                          padding_side=padding_side)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_readout_equals_full_logits_at_last_position(model, tokenizer, padding_side):
  batch = _text_batch(tokenizer, padding_side)
  out = jit_readout(model, batch["input_ids"], batch["attention_mask"], log_normalizer=True)
  assert out.yes.shape == out.no.shape == (1, 3) and out.hidden.shape == (1, 3, 32)
  ids = batch["input_ids"].reshape(3, -1)
  mask = batch["attention_mask"].reshape(3, -1)
  logits = np.asarray(model.decoder(jnp.asarray(ids), jnp.asarray(mask)), np.float64)
  last = np.array([np.nonzero(m)[0].max() for m in mask])
  at_last = logits[np.arange(3), last]  # [3, V]
  yes, no = prompt_lib.label_token_ids(tokenizer)
  np.testing.assert_allclose(np.asarray(out.yes)[0], at_last[:, yes], atol=1e-5)
  np.testing.assert_allclose(np.asarray(out.no)[0], at_last[:, no], atol=1e-5)
  lse = np.log(np.exp(at_last - at_last.max(-1, keepdims=True)).sum(-1)) + at_last.max(-1)
  np.testing.assert_allclose(np.asarray(out.log_normalizer)[0], lse, atol=1e-5)
  r = np.asarray(model.projection[...])
  np.testing.assert_allclose(np.asarray(out.extra_scores["projection"]),
                             np.asarray(out.hidden) @ r, atol=1e-5)
  assert set(out.extra_scores) == {"projection"}
  # Label rows are the LM-head rows (tied or not).
  head = model.decoder.lm_head_matrix()
  np.testing.assert_allclose(np.asarray(model.label_rows()), np.asarray(head)[[yes, no]])


def test_left_and_right_padding_agree(model, tokenizer):
  left = jit_readout(model, **{k: v for k, v in _text_batch(tokenizer, "left").items()
                          if k in ("input_ids", "attention_mask")})
  right = jit_readout(model, **{k: v for k, v in _text_batch(tokenizer, "right").items()
                           if k in ("input_ids", "attention_mask")})
  np.testing.assert_allclose(np.asarray(left.yes), np.asarray(right.yes), atol=1e-4)
  np.testing.assert_allclose(np.asarray(left.no), np.asarray(right.no), atol=1e-4)


def test_more_label_tokens_and_no_log_normalizer(tokenizer):
  labels = prompt_lib.label_token_ids(tokenizer, ("yes", "no", "maybe"))
  model = rr.Reranker(tiny_decoder(len(tokenizer.get_vocab())), labels, rngs=nnx.Rngs(0))
  batch = _text_batch(tokenizer, "left")
  out = model.readout(batch["input_ids"], batch["attention_mask"])
  assert out.log_normalizer is None and out.extra_scores is None
  k = _label_logits(model, out)
  assert k.shape == (1, 3, 3)
  np.testing.assert_allclose(k[..., 0], np.asarray(out.yes), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(k[..., 2]), np.asarray(out.hidden) @ np.asarray(
      model.label_rows()[2]), atol=1e-5)


def test_label_pooling_pairs(tokenizer):
  """'pairs': yes/no are the log-sum-exps of the alternating positive / negative words; the
  gradient direction of z_y - z_n is the softmax-weighted mix of their LM-head rows."""
  labels = prompt_lib.label_token_ids(tokenizer, ("yes", "no", "Relevant", "maybe"))
  decoder = tiny_decoder(len(tokenizer.get_vocab()))
  pooled = rr.Reranker(decoder, labels, label_pooling="pairs", rngs=nnx.Rngs(0))
  first = rr.Reranker(decoder, labels, rngs=nnx.Rngs(0))
  batch = _text_batch(tokenizer, "left")
  out = pooled.readout(batch["input_ids"], batch["attention_mask"])
  k = _label_logits(pooled, out)
  np.testing.assert_allclose(out.yes, np.logaddexp(k[..., 0], k[..., 2]), rtol=1e-5)
  np.testing.assert_allclose(out.no, np.logaddexp(k[..., 1], k[..., 3]), rtol=1e-5)
  plain = first.readout(batch["input_ids"], batch["attention_mask"])
  np.testing.assert_allclose(plain.yes, k[..., 0], rtol=1e-5, atol=1e-6)
  # Direction: d(z_y - z_n)/dh = sum_j softmax(positive logits)_j M_j - (same for negatives).
  rows = np.asarray(pooled.label_rows(), np.float64)
  h = jnp.asarray(out.hidden[0, 0], jnp.float32)
  grad = jax.grad(lambda x: jnp.subtract(*pool_label_logits(
      jnp.asarray(rows, jnp.float32) @ x, "pairs")))(h)
  z = rows @ np.asarray(h, np.float64)
  soft = lambda v: np.exp(v - v.max()) / np.exp(v - v.max()).sum()
  expected = soft(z[0::2]) @ rows[0::2] - soft(z[1::2]) @ rows[1::2]
  np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="even number of labels"):
    rr.Reranker(decoder, labels[:3], label_pooling="pairs", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="unknown label_pooling"):
    rr.Reranker(decoder, labels, label_pooling="mean", rngs=nnx.Rngs(0))


def test_random_label_head_replaces_the_label_rows(tokenizer):
  """label_head='random': yes/no are h . r_y, h . r_n for a fresh learnable [K, d] matrix; the LM
  head is not read, so gradients reach the random rows and not the LM head."""
  labels = prompt_lib.label_token_ids(tokenizer, ("yes", "no"))
  decoder = tiny_decoder(len(tokenizer.get_vocab()))
  tokens = rr.Reranker(decoder, labels, rngs=nnx.Rngs(0))
  random = rr.Reranker(decoder, labels, label_head="random", rngs=nnx.Rngs(0))
  rows = np.asarray(random.label_rows())
  assert rows.shape == (2, decoder.config.hidden_size)
  assert not np.allclose(rows, np.asarray(tokens.label_rows()), atol=1e-3)
  batch = _text_batch(tokenizer, "left")
  out = random.readout(batch["input_ids"], batch["attention_mask"])
  hidden = np.asarray(out.hidden, np.float64)
  np.testing.assert_allclose(out.yes, hidden @ rows[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.no, hidden @ rows[1], rtol=1e-5, atol=1e-6)
  # Same decoder, same hidden states: only the rows differ.
  np.testing.assert_allclose(out.hidden, tokens.readout(batch["input_ids"],
                                                        batch["attention_mask"]).hidden)

  def loss(m):
    r = m.readout(batch["input_ids"], batch["attention_mask"])
    return jnp.sum(r.yes - 0.5 * r.no)

  grads = nnx.grad(loss)(random)
  assert float(jnp.abs(grads["random_label_rows"][...]).sum()) > 0
  assert decoder.lm_head is not None  # untied: the LM head is a parameter of its own
  assert float(jnp.abs(grads["decoder"]["lm_head"][...]).sum()) == 0
  with pytest.raises(ValueError, match="unknown label_head"):
    rr.Reranker(decoder, labels, label_head="fresh", rngs=nnx.Rngs(0))


def test_readout_never_builds_full_vocabulary_logits(model, tokenizer):
  # The jaxpr of the plain readout has no [.., V] array; with log_normalizer it does.
  batch = _text_batch(tokenizer, "left")
  vocab = len(tokenizer.get_vocab())
  graphdef, state = nnx.split(model)

  def f(state, ln):
    return nnx.merge(graphdef, state).readout(batch["input_ids"], batch["attention_mask"],
                                              needs={"log_normalizer"} if ln else ())

  def has_vocab_axis(ln):
    jaxpr = jax.make_jaxpr(lambda s: f(s, ln))(state)
    shapes = [v.aval.shape for eqn in jaxpr.eqns for v in eqn.outvars]
    # the embedding lookup's table is an input, not an output; gathers give [.., d]
    return any(len(s) >= 2 and s[-1] == vocab for s in shapes)

  assert not has_vocab_axis(False)
  assert has_vocab_axis(True)


# --- images -----------------------------------------------------------------------------------


def _image_batch(tokenizer, query_image, padding_side="left"):
  group = Group("q", "i2t", "find the ball", Item(text="red ball", image=query_image),
                [Item(text="a red ball"), Item(text="the cat")], [1, 0], ["a", "b"],
                ["positive", "random"])
  return prompt_lib.encode_groups([group], tokenizer, list_size=2, max_length=64,
                          image_tokens=IMAGE_TOKENS, image_size=16, padding_side=padding_side)


def test_images_change_the_readout_only_through_image_positions(model, tokenizer):
  a = _image_batch(tokenizer, _image(0))
  b = _image_batch(tokenizer, _image(5))
  np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
  out_a, out_b = jit_readout(model, **a_inputs(a)), jit_readout(model, **a_inputs(b))
  assert np.abs(np.asarray(out_a.yes) - np.asarray(out_b.yes)).min() > 1e-6

  # Scatter check: the embeddings at placeholders are the projected image features, elsewhere
  # the token embeddings.
  ids = jnp.asarray(a["input_ids"].reshape(2, -1))

  @nnx.jit
  def parts(m, ids, pixels, valid):
    return (m.embed_with_images(ids, pixels, valid)[0], m.projector(m.vision(pixels[0, :1]))[0],
            m.decoder.embed(ids))

  embeds, feats, token_embeds = parts(model, ids, a["pixel_values"].reshape(2, 2, 16, 16, 3),
                                      a["image_valid"].reshape(2, 2))
  is_image = np.asarray(ids) == model.image_token_id
  for row in range(2):
    np.testing.assert_allclose(np.asarray(embeds[row])[is_image[row]], np.asarray(feats),
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(embeds[row])[~is_image[row]],
                               np.asarray(token_embeds[row])[~is_image[row]])

  # A text-only batch gives the same readout with (empty) pixel slots as without them.
  text = prompt_lib.encode_groups([_groups()[0]], tokenizer, list_size=3, max_length=64,
                          image_tokens=IMAGE_TOKENS, image_size=16)
  assert not text["image_valid"].any()
  with_pixels = jit_readout(model, **a_inputs(text))
  without = jit_readout(model, text["input_ids"], text["attention_mask"])
  np.testing.assert_allclose(np.asarray(with_pixels.yes), np.asarray(without.yes), atol=1e-6)
  assert np.isfinite(np.asarray(with_pixels.yes)).all()


def test_placeholder_count_mismatch_is_named(model, tokenizer):
  group = Group("q", "i2t", "find", Item(image=_image(0)), [Item(text="cat")], [1], ["a"],
                ["positive"])
  batch = prompt_lib.encode_groups([group], tokenizer, list_size=1, max_length=64, image_tokens=3,
                           image_size=16)
  with pytest.raises(ValueError, match="has 3 image placeholder tokens for 1 image"):
    model.readout(**a_inputs(batch))


def test_image_readout_left_right_padding_agree(model, tokenizer):
  left = jit_readout(model, **a_inputs(_image_batch(tokenizer, _image(0), "left")))
  right = jit_readout(model, **a_inputs(_image_batch(tokenizer, _image(0), "right")))
  np.testing.assert_allclose(np.asarray(left.yes), np.asarray(right.yes), atol=1e-4)


def a_inputs(batch):
  return {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_valid")}


def test_gradients_reach_every_parameter_and_are_finite(model, tokenizer):
  batch = a_inputs(_image_batch(tokenizer, _image(0)))
  labels = jnp.array([[1.0, 0.0]])

  def loss_fn(m):
    out = m.readout(**batch, needs={"log_normalizer"})
    s = out.yes - out.no
    return (jnp.mean(jax.nn.softplus(-s) * labels + jax.nn.softplus(s) * (1 - labels))
            + 1e-3 * jnp.mean(out.extra_scores["projection"] ** 2)
            + 1e-3 * jnp.mean(out.log_normalizer))

  grads = nnx.jit(nnx.grad(loss_fn))(model)
  flat = nnx.to_flat_state(nnx.state(grads, nnx.Param))
  assert flat
  for path, g in flat:
    value = np.asarray(g.get_value())
    assert np.isfinite(value).all(), path
  names = {".".join(map(str, p)): np.abs(np.asarray(g.get_value())).sum() for p, g in flat}
  for key in ("projection", "projector.linear_1.kernel", "vision.patch_embedding.kernel",
              "decoder.layers.0.mlp.up_proj.kernel"):
    assert names[key] > 0, key


def test_sharded_readout_matches(model, tokenizer):
  from decomp.models.sharding import shard_model
  batch = a_inputs(_image_batch(tokenizer, _image(0)))
  expected = jit_readout(model, **batch)
  # Auto axes, as the trainer's mesh (decomp.train.mesh) uses.
  mesh = jax.make_mesh((2, 4), ("data", "model"), (jax.sharding.AxisType.Auto,) * 2)
  graphdef, state = nnx.split(model)
  sharded = nnx.merge(graphdef, jax.tree.map(lambda x: x, state))
  shard_model(sharded, mesh)
  kernel = sharded.vision.layers[0].fc1.kernel[...]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "model")
  out = nnx.jit(lambda m, b: m.readout(**b))(sharded, batch)
  np.testing.assert_allclose(np.asarray(out.yes), np.asarray(expected.yes), atol=1e-5)
  np.testing.assert_allclose(np.asarray(out.no), np.asarray(expected.no), atol=1e-5)


def test_reranker_argument_errors(tokenizer):
  decoder = tiny_decoder(len(tokenizer.get_vocab()))
  with pytest.raises(ValueError, match="needs image_token_id"):
    rr.Reranker(decoder, (7, 8), vision=tiny_vision(), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="outside the vocabulary"):
    rr.Reranker(decoder, (7, 10_000), rngs=nnx.Rngs(0))
  text_only = rr.Reranker(decoder, (7, 8), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="no vision encoder"):
    text_only.readout(np.zeros((1, 4), np.int32), np.ones((1, 4), np.int32),
                      np.zeros((1, 1, 16, 16, 3), np.float32))


# --- the one-call user path -------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint_dirs(tmp_path_factory):
  torch = pytest.importorskip("torch")
  root = tmp_path_factory.mktemp("reranker_ckpt")
  tok = make_tokenizer()
  lm_dir, vision_dir = str(root / "lm"), str(root / "siglip")
  tok.save_pretrained(lm_dir)
  torch.manual_seed(0)
  lm = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
      vocab_size=len(tok.get_vocab()), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False))
  lm.eval()
  lm.save_pretrained(lm_dir)
  transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
      hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
      image_size=16, patch_size=8)).save_pretrained(vision_dir)
  return lm, lm_dir, vision_dir


def test_load_reranker_matches_transformers(checkpoint_dirs):
  import torch
  lm, lm_dir, vision_dir = checkpoint_dirs
  model, tok = rr.load_reranker(lm_dir, vision_path=vision_dir)
  assert model.label_ids == prompt_lib.label_token_ids(tok)
  assert model.vision.num_patches == IMAGE_TOKENS and model.projector is not None
  batch = prompt_lib.encode_groups([_groups()[0]], tok, list_size=3, max_length=64)
  out = model.readout(batch["input_ids"], batch["attention_mask"])
  ids = torch.from_numpy(batch["input_ids"].reshape(3, -1).astype(np.int64))
  mask = torch.from_numpy(batch["attention_mask"].reshape(3, -1).astype(np.int64))
  positions = (mask.cumsum(-1) - 1).clamp(min=0)
  with torch.no_grad():
    logits = lm(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
  yes, no = model.label_ids
  np.testing.assert_allclose(np.asarray(out.yes)[0], logits[:, yes].numpy(), atol=1e-4)
  np.testing.assert_allclose(np.asarray(out.no)[0], logits[:, no].numpy(), atol=1e-4)

  # The same path on a (data, model) mesh: weights land sharded, readout unchanged.
  mesh = jax.make_mesh((2, 4), ("data", "model"), (jax.sharding.AxisType.Auto,) * 2)
  sharded, _ = rr.load_reranker(lm_dir, vision_path=vision_dir, mesh=mesh)
  up = sharded.decoder.layers[0].mlp.up_proj.kernel[...]
  assert up.sharding.spec == jax.sharding.PartitionSpec(None, "model")
  out_sharded = nnx.jit(lambda m, i, a: m.readout(i, a))(
      sharded, batch["input_ids"], batch["attention_mask"])
  np.testing.assert_allclose(np.asarray(out_sharded.yes), np.asarray(out.yes), atol=1e-5)


def test_load_reranker_errors(checkpoint_dirs, tmp_path):
  _, lm_dir, vision_dir = checkpoint_dirs
  with pytest.raises(ValueError, match="label word 'zebra' is missing"):
    rr.load_reranker(lm_dir, label_words=("zebra", "no"))
  with pytest.raises(ValueError, match="no image placeholder token"):
    rr.load_reranker(lm_dir, vision_path=vision_dir, image_token="<img>")
  with pytest.raises(ValueError, match="could not load a tokenizer"):
    rr.load_reranker(lm_dir, tokenizer_path=str(tmp_path))


def test_load_tokenizer_keeps_a_custom_tokenizer_beside_a_qwen2_config(checkpoint_dirs):
  # AutoTokenizer would follow config.json's model_type (qwen2) and rebuild a BPE tokenizer.
  _, lm_dir, _ = checkpoint_dirs
  tok = rr.load_tokenizer(lm_dir)
  reference = make_tokenizer()
  text = "the cat sat on a zebra"
  assert tok(text)["input_ids"] == reference(text)["input_ids"]
