"""A word-level Hugging Face tokenizer for the playground, saved as a normal tokenizer directory.

The playground then exercises exactly the path real checkpoints use:
``AutoTokenizer.from_pretrained(directory)``, a chat template, special tokens, left padding.

>>> import tempfile
>>> from transformers import AutoTokenizer
>>> path = build_tokenizer(tempfile.mkdtemp())
>>> tok = AutoTokenizer.from_pretrained(path)
>>> tok.decode(tok("A red circle, in the centre.")["input_ids"])
'a red circle , in the centre .'
"""

from __future__ import annotations

import os
from typing import Sequence

from decomp.data.playground import text

SPECIAL_TOKENS = ("<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<image>")
ROLE_WORDS = ("system", "user", "assistant")
# "yes"/"no" first; the rest can serve as extra label tokens (the paper tries 2 to 16).
LABEL_WORDS = ("yes", "no", "true", "false", "relevant", "irrelevant", "match", "mismatch",
               "correct", "wrong", "right", "incorrect", "good", "bad", "positive", "negative",
               "same", "different")

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def vocabulary(extra_tokens: Sequence[str] = ()) -> list[str]:
  """Special tokens first (``<pad>`` = 0, ``<unk>`` = 1), then every word, sorted, no repeats."""
  words = list(SPECIAL_TOKENS)
  seen = set(words)
  for word in list(ROLE_WORDS) + list(LABEL_WORDS) + text.vocabulary():
    if word not in seen:
      seen.add(word)
      words.append(word)
  for token in extra_tokens:
    token = str(token).lower() if token not in SPECIAL_TOKENS else token
    if not token or any(c.isspace() for c in token):
      raise ValueError(f"extra token {token!r} must be one non-empty word without spaces")
    if token not in seen:
      seen.add(token)
      words.append(token)
  return words


def build_tokenizer(directory: str, *, extra_tokens: Sequence[str] = ()) -> str:
  """Writes a word-level tokenizer covering the playground (plus ``extra_tokens``) to ``directory``.

  WordLevel model, lower-case normaliser, whitespace + punctuation pre-tokeniser, special tokens
  ``<pad> <unk> <|im_start|> <|im_end|> <image>``, role words, 18 label words (each exactly one
  token), a Qwen-style chat template, ``pad_token='<pad>'`` and ``padding_side='left'``.

  Returns:
    ``directory``, loadable with ``transformers.AutoTokenizer.from_pretrained`` offline.
  """
  from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
  from transformers import PreTrainedTokenizerFast

  vocab = {word: i for i, word in enumerate(vocabulary(extra_tokens))}
  tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
  tok.normalizer = normalizers.Lowercase()
  tok.pre_tokenizer = pre_tokenizers.Sequence(
      [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation(behavior="isolated")])
  tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
  fast = PreTrainedTokenizerFast(
      tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<|im_end|>",
      additional_special_tokens=["<|im_start|>", "<image>"], padding_side="left",
      model_max_length=4096)
  fast.chat_template = CHAT_TEMPLATE
  os.makedirs(directory, exist_ok=True)
  fast.save_pretrained(directory)
  return directory


def check_tokenizer(directory: str) -> None:
  """Raises unless ``directory`` holds a loadable playground tokenizer whose label words are one
  token each: the quick load test of a cached build (no transformers import)."""
  import json

  from tokenizers import Tokenizer

  with open(os.path.join(directory, "tokenizer_config.json"), encoding="utf-8") as f:
    json.load(f)
  tok = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
  unknown = tok.token_to_id("<unk>")
  for word in LABEL_WORDS:
    ids = tok.encode(word, add_special_tokens=False).ids
    if len(ids) != 1 or ids[0] == unknown:
      raise ValueError(f"{directory}: label word {word!r} is not one known token ({ids})")
