"""The playground tokenizer: loads with AutoTokenizer, covers the playground, round-trips."""

import re

import pytest
from transformers import AutoTokenizer

from decomp.data.playground import Playground, PlaygroundConfig, text
from decomp.data.tokenizer import LABEL_WORDS, SPECIAL_TOKENS, build_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  path = build_tokenizer(str(tmp_path_factory.mktemp("tok")), extra_tokens=("Banana",))
  return AutoTokenizer.from_pretrained(path)


def test_special_and_label_tokens_are_single_tokens(tok):
  assert tok.pad_token == "<pad>" and tok.pad_token_id == 0
  assert tok.padding_side == "left" and tok.unk_token == "<unk>"
  ids = set()
  for word in SPECIAL_TOKENS + LABEL_WORDS + ("system", "user", "assistant", "banana"):
    encoded = tok(word, add_special_tokens=False)["input_ids"]
    assert len(encoded) == 1 and (encoded[0] != tok.unk_token_id or word == "<unk>"), word
    assert tok.convert_ids_to_tokens(encoded) == [word]
    ids.add(encoded[0])
  assert len(ids) == len(SPECIAL_TOKENS) + len(LABEL_WORDS) + 4
  assert len(LABEL_WORDS) >= 16 and LABEL_WORDS[:2] == ("yes", "no")
  # Glued special tokens are still split out.
  assert tok.convert_ids_to_tokens(tok("<image><image>red")["input_ids"]) == [
      "<image>", "<image>", "red"]


def _squash(s):
  return re.sub(r"\s+", "", s.lower())


def test_playground_text_round_trips_without_unknown_words(tok):
  config = PlaygroundConfig(num_eval_queries=2, synonym_rate=0.7, paraphrase_rate=0.9,
                            paraphrase_instructions=True)
  p = Playground(config)
  texts = list(text.PROMPT_WORDS.split(" "))
  for g in p.groups("train", 0, 60) + p.groups("test"):
    texts.append(g.instruction)
    texts += [item.text for item in (g.query,) + tuple(g.docs) if item.text]
  assert len(texts) > 300
  for t in texts:
    ids = tok(t, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids, (t, tok.convert_ids_to_tokens(ids))
    assert _squash(tok.decode(ids)) == _squash(t)


def test_chat_template_is_qwen_style(tok):
  messages = [{"role": "system", "content": "Answer yes or no."},
              {"role": "user", "content": "Query: <image> Document: a red circle"}]
  rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
  assert rendered == ("<|im_start|>system\nAnswer yes or no.<|im_end|>\n"
                      "<|im_start|>user\nQuery: <image> Document: a red circle<|im_end|>\n"
                      "<|im_start|>assistant\n")
  assert not tok.apply_chat_template(messages, tokenize=False).endswith("assistant\n")
  ids = tok(rendered)["input_ids"]
  assert tok.convert_ids_to_tokens(ids)[-2:] == ["<|im_start|>", "assistant"]


def test_left_padding(tok):
  batch = tok(["a red circle", "a circle"], padding=True)
  assert batch["input_ids"][1][0] == tok.pad_token_id
  assert batch["attention_mask"] == [[1, 1, 1], [0, 1, 1]]


def test_bad_extra_token(tmp_path):
  with pytest.raises(ValueError, match="one non-empty word"):
    build_tokenizer(str(tmp_path), extra_tokens=("two words",))
