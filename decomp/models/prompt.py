"""Reranker prompts: the template, label tokens, and batches of groups encoded to arrays.

A reranker reads ``(instruction, query, document)`` in a chat-style prompt and scores the
document by the next-token logits of the label words ("yes", "no", ...) at the answer position,
the last token of the prompt. Only the label rows of the LM head are multiplied,
``z = h @ W_lm[[yes, no, ...]].T``; the full vocabulary is computed only when a direction needs
its log-normaliser.

Prompt (built with the tokenizer's chat template when it has one)::

  system:    <instruction> Answer yes or no.
  user:      Query: <image>*k <query text>
             Document: <image>*k <document text>
  assistant: (generation prompt; the answer position is its last token)

An image becomes ``image_tokens`` copies of the image placeholder token; :class:`Reranker`
replaces their embeddings with projected image features (LLaVA style).

The template is rendered once per instruction around two sentinels and split into fixed token
segments, so a batch needs one fast-tokenizer batch call for its texts and truncation can shorten
the document text alone (then the query text) without touching the template or the answer
position.

(Over 400 lines: the template, the token-level builder that mirrors it and the label-word
checks must agree token for token; they are kept side by side.)
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from decomp.models.vision import image_preprocess

DEFAULT_SYSTEM_SUFFIX = "Answer yes or no."
# Tried in order when the caller names no image token (LLaVA's, then Qwen2-VL's; data for a
# family's own tower names its adapter's).
IMAGE_TOKEN_CANDIDATES = ("<image>", "<|image_pad|>")
_Q_SLOT = "\ue000"  # private-use sentinels: pass unchanged through chat templates
_D_SLOT = "\ue001"


# ---------------------------------------------------------------------------------------------
# Tokenizer helpers: work with a transformers tokenizer or a bare `tokenizers.Tokenizer`.


def _vocab(tokenizer) -> Mapping[str, int]:
  return tokenizer.get_vocab()


def _encode_batch(tokenizer, texts: Sequence[str], *, literal: bool = False) -> list[list[int]]:
  """Token ids of each text, without special tokens added (one batch call).

  ``literal``: special-token strings in the text ("<image>", "<|im_end|>") are split like plain
  text, so query/document content can never forge a placeholder or a template token.
  """
  if not texts:
    return []
  if hasattr(tokenizer, "encode_batch"):  # tokenizers.Tokenizer
    before = tokenizer.encode_special_tokens
    tokenizer.encode_special_tokens = literal
    try:
      return [e.ids for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]
    finally:
      tokenizer.encode_special_tokens = before
  if not literal:
    return list(tokenizer(list(texts), add_special_tokens=False)["input_ids"])
  # transformers leaves the flag set on its backend after a split_special_tokens call.
  backend = getattr(tokenizer, "backend_tokenizer", None)
  before = getattr(backend, "encode_special_tokens", None)
  try:
    return list(tokenizer(list(texts), add_special_tokens=False,
                          split_special_tokens=True)["input_ids"])
  finally:
    if before is not None:
      backend.encode_special_tokens = before


def _unk_id(tokenizer) -> int | None:
  unk = getattr(tokenizer, "unk_token_id", None)
  if unk is None and hasattr(tokenizer, "token_to_id"):
    model = getattr(tokenizer, "model", None)
    unk_token = getattr(model, "unk_token", None)
    unk = tokenizer.token_to_id(unk_token) if unk_token else None
  return unk


def _pad_id(tokenizer) -> int:
  pad = getattr(tokenizer, "pad_token_id", None)
  if pad is None:
    pad = getattr(tokenizer, "eos_token_id", None)
  if pad is None and hasattr(tokenizer, "token_to_id"):
    padding = getattr(tokenizer, "padding", None)
    pad = padding["pad_id"] if padding else None
  if pad is None:
    raise ValueError("the tokenizer has neither a pad token nor an eos token to pad with; set "
                     "tokenizer.pad_token")
  return int(pad)


def _token_strings(tokenizer, ids: Sequence[int]) -> list[str]:
  if hasattr(tokenizer, "convert_ids_to_tokens"):
    return list(tokenizer.convert_ids_to_tokens(list(ids)))
  return [tokenizer.id_to_token(i) for i in ids]


def label_token_ids(tokenizer, words: Sequence[str] = ("yes", "no")) -> tuple[int, ...]:
  """Ids of the label words, each of which must be exactly one token.

  A word is tried as-is (what a chat model emits right after the generation prompt), then with a
  leading space, then in its byte-level/sentencepiece vocabulary forms ('Ġyes', '▁yes').

  Raises:
    ValueError: a word is missing from the vocabulary, splits into several tokens (the message
      shows the split), or two words share a token.
  """
  if len(words) < 2:
    raise ValueError(f"a reranker needs at least two label words, got {list(words)}")
  vocab = _vocab(tokenizer)
  unk = _unk_id(tokenizer)
  ids = []
  for word in words:
    if not word or word != word.strip():
      raise ValueError(f"label word {word!r} must be non-empty and have no surrounding spaces")
    bare, spaced = _encode_batch(tokenizer, [word, " " + word])
    found = None
    for candidate in (bare, spaced):
      if len(candidate) == 1 and candidate[0] != unk:
        found = candidate[0]
        break
    if found is None:
      for form in (word, "Ġ" + word, "▁" + word):
        if form in vocab:
          found = vocab[form]
          break
    if found is None:
      if (bare and all(i == unk for i in bare)) or not bare:
        raise ValueError(f"label word {word!r} is missing from the tokenizer's vocabulary "
                         f"(it encodes to the unknown token {bare})")
      raise ValueError(
          f"label word {word!r} is not a single token: it splits into "
          f"{_token_strings(tokenizer, bare)} (ids {bare}) and {' ' + word!r} into "
          f"{_token_strings(tokenizer, spaced)} (ids {spaced}); choose words that are one token")
    ids.append(int(found))
  if len(set(ids)) != len(ids):
    raise ValueError(f"label words {list(words)} map to repeated token ids {ids}")
  return tuple(ids)


def image_token_id(tokenizer, image_token: str | None = None) -> int:
  """Id of the image placeholder token (``image_token``, or the first of
  ``IMAGE_TOKEN_CANDIDATES`` the vocabulary has); a clear error when the tokenizer lacks it."""
  vocab = _vocab(tokenizer)
  candidates = (image_token,) if image_token else IMAGE_TOKEN_CANDIDATES
  for token in candidates:
    if token in vocab:
      return int(vocab[token])
  raise ValueError(
      f"the tokenizer has no image placeholder token (looked for {list(candidates)}); add one "
      f"as a special token, e.g. tokenizer.add_special_tokens({{'additional_special_tokens': "
      f"['<image>']}}), and resize the LM's embeddings")


# ---------------------------------------------------------------------------------------------
# Prompts.


def _item_text(item) -> str:
  return (getattr(item, "text", None) or "").strip()


def _item_image(item):
  return getattr(item, "image", None)


def _check_item(item, what: str):
  if not _item_text(item) and _item_image(item) is None:
    raise ValueError(f"{what} has neither text nor an image")


class RerankPrompt:
  """Token-level prompt builder for one tokenizer (caches the template per instruction).

  Args:
    tokenizer: a transformers tokenizer (fast) or a ``tokenizers.Tokenizer``.
    image_tokens: placeholder tokens per image (= the image encoder's ``num_patches``).
    image_token: the placeholder token string (default: see :func:`image_token_id`); only
      resolved when an image is encoded.
    image_wrap: the tokens written before and after each image's placeholders (a family's
      :attr:`~decomp.models.backbone.ImageAdapter.image_wrap`, as its chat template and
      processor write an image); None: the placeholders alone.
    system_suffix: appended to the instruction in the system message.
    use_chat_template: None = use the tokenizer's chat template when it has one.
  """

  def __init__(self, tokenizer, *, image_tokens: int = 0, image_token: str | None = None,
               image_wrap: tuple[str, str] | None = None,
               system_suffix: str = DEFAULT_SYSTEM_SUFFIX, use_chat_template: bool | None = None,
               preset: str | None = None):
    self.tokenizer = tokenizer
    self.preset = None
    if preset:
      from decomp.models.presets import get_preset  # presets import the image processor
      self.preset = get_preset(preset)
    self.image_tokens = int(image_tokens)
    self.image_token = image_token
    self.image_wrap = None if image_wrap is None else tuple(image_wrap)
    self.system_suffix = system_suffix
    has_template = bool(getattr(tokenizer, "chat_template", None))
    self.use_chat_template = has_template if use_chat_template is None else use_chat_template
    if self.use_chat_template and not has_template:
      raise ValueError("use_chat_template=True but the tokenizer has no chat_template")
    self.pad_id = _pad_id(tokenizer)
    self._segments: dict[str, tuple] = {}
    self._image_id: int | None = None
    self._image_block: list[int] | None = None

  @property
  def image_id(self) -> int:
    if self._image_id is None:
      self._image_id = image_token_id(self.tokenizer, self.image_token)
    return self._image_id

  @property
  def image_block(self) -> list[int]:
    """The ids one image becomes: ``image_tokens`` placeholders, between the ``image_wrap``
    tokens when given."""
    if self._image_block is None:
      block = [self.image_id] * self.image_tokens
      if self.image_wrap is not None:
        vocab = _vocab(self.tokenizer)
        missing = [t for t in self.image_wrap if t not in vocab]
        if missing:
          raise ValueError(f"the tokenizer lacks the image_wrap tokens {missing}")
        before, after = self.image_wrap
        block = [int(vocab[before])] + block + [int(vocab[after])]
      self._image_block = block
    return self._image_block

  def _render(self, instruction: str) -> str:
    if self.preset is not None:
      # A preset renders its own chat text (decomp.models.presets), exactly as the model's
      # template would; the slots stand in for the query's and document's parts.
      slot_instruction = (instruction or None) if self.preset.takes_instruction else None
      return self.preset.render(slot_instruction, _Q_SLOT, _D_SLOT)
    system = " ".join(s for s in (instruction.strip(), self.system_suffix) if s)
    user = f"Query: {_Q_SLOT}\nDocument: {_D_SLOT}"
    if not self.use_chat_template:
      bos = getattr(self.tokenizer, "bos_token", None) or ""
      return f"{bos}{system}\n{user}\nRelevant:"
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    try:
      text = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                add_generation_prompt=True)
    except Exception:  # some templates reject a system turn: fold it into the user turn
      messages = [{"role": "user", "content": f"{system}\n{user}"}]
      text = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                add_generation_prompt=True)
    if text.count(_Q_SLOT) != 1 or text.count(_D_SLOT) != 1:
      raise ValueError("the chat template did not keep the message contents verbatim; pass "
                       "use_chat_template=False")
    return text

  def segments(self, instruction: str):
    """The template's token segments around the query and document slots, cached per
    instruction: ``(prefix, middle, suffix, doc_first, spaces)``, where ``prefix`` and
    ``middle`` map ``keep_space -> ids`` (``True``: the template's text up to the slot with its
    trailing space, ``False``: without it, the space then going to the slot's text so BPE sees
    ' word'; equal when the template puts no space before the slot), ``doc_first`` says the
    document's slot comes first (MonoQwen2-VL's prompt), and ``spaces`` whether a space precedes
    the first and the second slot."""
    cached = self._segments.get(instruction)
    if cached is None:
      text = self._render(instruction)
      if text.count(_Q_SLOT) != 1 or text.count(_D_SLOT) != 1:
        raise ValueError("the prompt template must hold the query and the document once each")
      doc_first = text.index(_D_SLOT) < text.index(_Q_SLOT)
      first, second = (_D_SLOT, _Q_SLOT) if doc_first else (_Q_SLOT, _D_SLOT)
      prefix, rest = text.split(first)
      middle, suffix = rest.split(second)
      pieces = [prefix, prefix[:-1] if prefix.endswith(" ") else prefix,
                middle, middle[:-1] if middle.endswith(" ") else middle, suffix]
      ids = _encode_batch(self.tokenizer, pieces)
      cached = ({True: ids[0], False: ids[1]}, {True: ids[2], False: ids[3]}, ids[4], doc_first,
                (prefix.endswith(" "), middle.endswith(" ")))
      self._segments[instruction] = cached
    return cached

  def encode_pairs(self, instructions: Sequence[str], queries: Sequence[Any],
                   docs: Sequence[Any], *, max_length: int) -> list[list[int]]:
    """Token ids of each ``(instruction, query, doc)`` prompt, at most ``max_length`` long.

    An item is its image block (if any) then its text. Long prompts lose document-text tokens
    from the end, then query-text tokens; the template, the image placeholders and the answer
    position (the last token) are never cut.
    """
    if not len(instructions) == len(queries) == len(docs):
      raise ValueError(f"encode_pairs: {len(instructions)} instructions, {len(queries)} queries "
                       f"and {len(docs)} docs")
    texts, index = [], {}
    segs = []

    def text_key(item, slot_space: bool) -> str:
      # A slot's leading space joins the item's text unless an image comes between them.
      text = _item_text(item)
      return " " + text if slot_space and text and _item_image(item) is None else text

    for ins, q, d in zip(instructions, queries, docs):
      _check_item(q, "a query")
      _check_item(d, "a document")
      seg = self.segments(ins)
      segs.append(seg)
      first_space, second_space = seg[4]
      q_space, d_space = (second_space, first_space) if seg[3] else (first_space, second_space)
      for key in (text_key(q, q_space), text_key(d, d_space)):
        if key and key not in index:
          index[key] = len(texts)
          texts.append(key)
    encoded = _encode_batch(self.tokenizer, texts, literal=True)
    out = []
    for (ins, q, d), (prefix, middle, suffix, doc_first, spaces) in zip(
        zip(instructions, queries, docs), segs):
      first_item, second_item = (d, q) if doc_first else (q, d)
      if (_item_image(q) is not None or _item_image(d) is not None) and self.image_tokens <= 0:
        raise ValueError("a query or document has an image but image_tokens is 0; pass the "
                         "image encoder's num_patches")

      def parts(item, slot_space):
        image = self.image_block if _item_image(item) is not None else []
        key = text_key(item, slot_space)
        # The template keeps its space when the item starts with an image (or has no text).
        keeps_space = not (slot_space and key.startswith(" "))
        return image, (encoded[index[key]] if key else []), keeps_space

      first_img, first_txt, first_keeps = parts(first_item, spaces[0])
      second_img, second_txt, second_keeps = parts(second_item, spaces[1])
      head, mid = prefix[first_keeps], middle[second_keeps]
      (q_img, q_txt), (d_img, d_txt) = (
          ((second_img, second_txt), (first_img, first_txt)) if doc_first
          else ((first_img, first_txt), (second_img, second_txt)))
      fixed = len(head) + len(mid) + len(suffix) + len(q_img) + len(d_img)
      budget = max_length - fixed
      if budget < 0:
        raise ValueError(
            f"max_length={max_length} is too short: the template and image placeholders alone "
            f"take {fixed} tokens (instruction {ins[:60]!r})")
      d_keep = min(len(d_txt), max(budget - len(q_txt), 0))
      q_keep = min(len(q_txt), budget - d_keep)
      query_ids, doc_ids = q_img + q_txt[:q_keep], d_img + d_txt[:d_keep]
      first, second = (doc_ids, query_ids) if doc_first else (query_ids, doc_ids)
      out.append(head + first + mid + second + suffix)
    return out

  def encode_pair(self, instruction: str, query, doc, *, max_length: int) -> list[int]:
    """Token ids of one prompt (see :meth:`encode_pairs`)."""
    return self.encode_pairs([instruction], [query], [doc], max_length=max_length)[0]


_PROMPT_CACHE: dict[tuple, RerankPrompt] = {}


def _prompt_for(tokenizer, **kwargs) -> RerankPrompt:
  if isinstance(tokenizer, RerankPrompt):
    return tokenizer
  key = (id(tokenizer), tuple(sorted(kwargs.items())))
  prompt = _PROMPT_CACHE.get(key)
  if prompt is None or prompt.tokenizer is not tokenizer:
    if len(_PROMPT_CACHE) > 16:
      _PROMPT_CACHE.clear()
    prompt = _PROMPT_CACHE[key] = RerankPrompt(tokenizer, **kwargs)
  return prompt


def encode_pair(tokenizer, instruction: str, query, doc, *, image_tokens: int = 0,
                max_length: int, image_token: str | None = None,
                image_wrap: tuple[str, str] | None = None,
                system_suffix: str = DEFAULT_SYSTEM_SUFFIX) -> list[int]:
  """Token ids of one ``(instruction, query: Item, doc: Item)`` prompt; the answer position is
  the last token. ``tokenizer`` may also be a :class:`RerankPrompt`."""
  prompt = _prompt_for(tokenizer, image_tokens=image_tokens, image_token=image_token,
                       image_wrap=image_wrap, system_suffix=system_suffix)
  return prompt.encode_pair(instruction, query, doc, max_length=max_length)


def encode_pairs(tokenizer, instructions: Sequence[str], queries: Sequence[Any],
                 docs: Sequence[Any], *, image_tokens: int = 0, max_length: int,
                 image_token: str | None = None, image_wrap: tuple[str, str] | None = None,
                 system_suffix: str = DEFAULT_SYSTEM_SUFFIX) -> list[list[int]]:
  """Token ids of many prompts with one batch tokenizer call (see :meth:`RerankPrompt.encode_pairs`)."""
  prompt = _prompt_for(tokenizer, image_tokens=image_tokens, image_token=image_token,
                       image_wrap=image_wrap, system_suffix=system_suffix)
  return prompt.encode_pairs(instructions, queries, docs, max_length=max_length)


def bucket_length(length: int, multiple: int = 16) -> int:
  """``length`` rounded up to a multiple of ``multiple`` (few distinct shapes -> few compiles)."""
  return max(multiple, -(-length // multiple) * multiple)


def prompt_lengths(tokenizer, instructions: Sequence[str], queries: Sequence[Any],
                   docs: Sequence[Any], *, image_tokens: int = 0, image_token: str | None = None,
                   image_wrap: tuple[str, str] | None = None, preset: str | None = None,
                   system_suffix: str = DEFAULT_SYSTEM_SUFFIX) -> list[int]:
  """The untruncated token count of each prompt (image placeholders included), as
  :func:`encode_groups` builds it with the same arguments: a prompt longer than ``max_length``
  is one whose text :func:`encode_groups` cuts."""
  prompt = _prompt_for(tokenizer, image_tokens=image_tokens, image_token=image_token,
                       image_wrap=image_wrap, system_suffix=system_suffix, preset=preset)
  encoded = prompt.encode_pairs(instructions, queries, docs, max_length=1 << 30)
  return [len(ids) for ids in encoded]


def encode_groups(groups: Sequence[Any], tokenizer, *, list_size: int, max_length: int,
                  image_tokens: int = 0, image_size: int | None = None,
                  padding_side: str = "left", image_mean: Sequence[float] = (0.5, 0.5, 0.5),
                  image_std: Sequence[float] = (0.5, 0.5, 0.5), image_token: str | None = None,
                  image_wrap: tuple[str, str] | None = None,
                  system_suffix: str = DEFAULT_SYSTEM_SUFFIX,
                  pad_multiple: int = 16,
                  lengths: Sequence[int] | None = None, preset: str | None = None,
                  image_processor=None) -> dict[str, np.ndarray]:
  """Encodes a batch of ``Group`` records (query + candidate list) into padded numpy arrays.

  Args:
    groups: B records with ``instruction``, ``query`` (Item), ``docs`` (Items), ``labels``.
    tokenizer: a tokenizer or a :class:`RerankPrompt`.
    list_size: n, documents per group; shorter groups are padded (``where`` False), longer ones
      are an error.
    max_length: token budget per prompt (document text is truncated first).
    image_tokens: placeholders per image (the encoder's ``num_patches``).
    image_size: side of the preprocessed images; None for text-only batches (then no pixel
      arrays are returned and an image is an error).
    padding_side: 'left' or 'right' padding of the token axis.
    image_mean, image_std: normalisation (SigLIP: 0.5/0.5; CLIP: vision.CLIP_MEAN/CLIP_STD).
    lengths: bucket lengths: T is the smallest that holds the batch's longest prompt (a handful
      of compiled shapes instead of one per length); None rounds up to ``pad_multiple``.
    preset: a reranker preset name (:mod:`decomp.models.presets`) whose prompt replaces
      decomp's template.
    image_processor: ``images -> [N, ...]`` float32 (one fixed shape per image, also for an
      empty list); default: resize to ``image_size`` and normalise (``[N, H, W, 3]``). A
      family's own tower's is its :meth:`~decomp.models.backbone.ImageAdapter.patches`.

  Returns:
    ``input_ids [B, n, T]`` int32, ``attention_mask [B, n, T]`` int32 (T: longest prompt rounded
    up to ``pad_multiple``), ``labels [B, n]`` float32, ``where [B, n]`` bool, and with
    ``image_size``: ``pixel_values [B, n, 2, H, W, 3]`` float32 and ``image_valid [B, n, 2]``
    bool. Image slots follow prompt order (the query's image, if any, first); absent images are
    zeros. A padding document is a single pad token (mask 1, so no row is all-masked).
  """
  if padding_side not in ("left", "right"):
    raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
  prompt = _prompt_for(tokenizer, image_tokens=image_tokens, image_token=image_token,
                       image_wrap=image_wrap, system_suffix=system_suffix, preset=preset)
  b, n = len(groups), list_size
  instructions, queries, docs, slots = [], [], [], []
  labels = np.zeros((b, n), np.float32)
  where = np.zeros((b, n), bool)
  for gi, group in enumerate(groups):
    if len(group.docs) > n:
      raise ValueError(f"group {getattr(group, 'query_id', gi)!r} has {len(group.docs)} documents,"
                       f" more than list_size={n}")
    for di, doc in enumerate(group.docs):
      instructions.append(group.instruction)
      queries.append(group.query)
      docs.append(doc)
      slots.append((gi, di))
      labels[gi, di] = float(group.labels[di])
      where[gi, di] = True
  encoded = prompt.encode_pairs(instructions, queries, docs, max_length=max_length)
  longest = max((len(ids) for ids in encoded), default=1)
  if lengths:
    fits = [length for length in sorted(lengths) if length >= longest]
    if not fits:
      raise ValueError(f"a prompt of {longest} tokens fits none of the bucket lengths "
                       f"{sorted(lengths)}")
    t = fits[0]
  else:
    t = bucket_length(longest, pad_multiple)
  input_ids = np.full((b, n, t), prompt.pad_id, np.int32)
  attention_mask = np.zeros((b, n, t), np.int32)
  last = t - 1 if padding_side == "left" else 0
  attention_mask[:, :, last] = 1  # padding documents: one valid pad token
  for (gi, di), ids in zip(slots, encoded):
    attention_mask[gi, di] = 0
    if padding_side == "left":
      input_ids[gi, di, t - len(ids):] = ids
      attention_mask[gi, di, t - len(ids):] = 1
    else:
      input_ids[gi, di, :len(ids)] = ids
      attention_mask[gi, di, :len(ids)] = 1
  out = dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels, where=where)
  if image_size is None:
    for q, d in zip(queries, docs):
      if _item_image(q) is not None or _item_image(d) is not None:
        raise ValueError("a query or document has an image but encode_groups got no image_size")
    return out
  if image_processor is None:
    image_processor = lambda images: image_preprocess(images, mean=image_mean, std=image_std,
                                                      size=image_size)
    image_shape = (image_size, image_size, 3)
  else:
    image_shape = tuple(image_processor([]).shape[1:])
  pixel_values = np.zeros((b, n, 2) + image_shape, np.float32)
  image_valid = np.zeros((b, n, 2), bool)
  images, targets = [], []
  for (gi, di), q, d in zip(slots, queries, docs):
    k = 0
    for item in (q, d):
      image = _item_image(item)
      if image is not None:
        images.append(image)
        targets.append((gi, di, k))
        k += 1
  if images:
    # A query's image repeats across its documents: preprocess each distinct array once.
    unique: dict[int, int] = {}
    distinct = []
    for image in images:
      if id(image) not in unique:
        unique[id(image)] = len(distinct)
        distinct.append(image)
    processed = image_processor(distinct)
    for image, (gi, di, k) in zip(images, targets):
      pixel_values[gi, di, k] = processed[unique[id(image)]]
      image_valid[gi, di, k] = True
  out.update(pixel_values=pixel_values, image_valid=image_valid)
  return out
