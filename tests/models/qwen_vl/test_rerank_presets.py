"""``python -m decomp.rerank --model <Qwen-VL dir> --preset NAME`` on a BEIR collection whose
corpus has images by path scores like the preset's published usage run with transformers on the
same directory: MonoQwen2-VL's model card (P(True) at the last position) on a tiny Qwen2-VL, and
the GMR prompt (P(yes)) on a tiny Qwen2.5-VL, each pair unpadded, one at a time."""

import contextlib
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from decomp import rerank as rerank_lib

IMAGE_SIZE = 8  # patch 2 x merge 2: 4 visual tokens per image
JUDGE = ('Judge whether the Document meets the requirements based on the Query and the Instruct '
         'provided. Note that the answer can only be "yes" or "no".')
GMR_INSTRUCTION = 'Given a web search query, retrieve relevant passages that answer the query'
MONOQWEN = ('Assert the relevance of the previous image document to the following query, answer '
            'True or False. The query is: {query}')
QUERIES = {'q0': 'a red square', 'q1': 'where is the blue sky'}
TEXTS = ['', 'a photo of the sky', '', 'a red thing', '']


def _collection(root, *, text_documents: bool):
  """Five documents, each an image by path (and, with ``text_documents``, text on some and a
  text-only one); a run of all five for both queries."""
  coll = root / 'photos'
  os.makedirs(coll / 'img')
  os.makedirs(coll / 'qrels')
  rng = np.random.default_rng(0)
  rows = []
  for i, text in enumerate(TEXTS):
    Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)).save(
        coll / 'img' / f'{i}.png')
    row = {'_id': f'd{i}', 'title': '', 'text': text if text_documents else '',
           'image': f'img/{i}.png'}
    if text_documents and i == 4:
      row = {'_id': 'd4', 'title': '', 'text': 'the sky is blue today'}
    rows.append(row)
  (coll / 'corpus.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  (coll / 'queries.jsonl').write_text(''.join(
      json.dumps({'_id': k, 'text': v}) + '\n' for k, v in QUERIES.items()))
  (coll / 'qrels' / 'test.tsv').write_text('query-id\tcorpus-id\tscore\nq0\td3\t1\nq1\td1\t1\n')
  run = root / 'first.trec'
  run.write_text(''.join(f'{q} Q0 d{i} {i + 1} {9 - i} bm25\n' for q in QUERIES
                         for i in range(len(TEXTS))))
  return coll, run, rows


def _checkpoint(root, vl, qwen_chat, variant):
  tokenizer = qwen_chat.bpe_tokenizer(
      [JUDGE, MONOQWEN, GMR_INSTRUCTION, *QUERIES.values(), *TEXTS, '<Instruct>: <Query>: '
       '<Document>: You are a helpful assistant.'], extra_tokens=['True', 'False', 'yes', 'no'])
  ids = tuple(tokenizer.convert_tokens_to_ids(t) for t in
              ('<|image_pad|>', '<|video_pad|>', '<|vision_start|>', '<|vision_end|>'))
  model = vl.build(variant, tie=variant == 'qwen2_5_vl', vocab_size=len(tokenizer),
                   token_ids=ids)
  path = str(root / variant)
  model.save_pretrained(path)
  tokenizer.save_pretrained(path)
  return path, model, tokenizer


def _published(model, tokenizer, qwen_chat, vl, messages, images, labels):
  """The model card's recipe for one prompt: the chat template, Qwen2VLProcessor (its image
  processor at patch 2 / merge 2, the images kept at their size), the forward pass, and the
  softmax over the two label words' logits at the last position: P(labels[0])."""
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
  text = tokenizer.apply_chat_template(messages, chat_template=qwen_chat.QWEN2VL_TEMPLATE,
                                       add_generation_prompt=True, tokenize=False)
  processor = Qwen2VLImageProcessorPil(patch_size=2, merge_size=2, temporal_patch_size=2,
                                       size={'shortest_edge': 16, 'longest_edge': 4096})
  inputs = qwen_chat.processor_output(tokenizer, text, images, image_processor=processor)
  ids = np.asarray([inputs['input_ids']])
  image_id = tokenizer.convert_tokens_to_ids('<|image_pad|>')
  if images:
    logits = vl.torch_logits(model, ids, np.ones_like(ids), inputs['pixel_values'],
                             inputs['image_grid_thw'], (ids == image_id).astype(np.int64))
  else:
    import torch
    with torch.no_grad():
      logits = model(input_ids=torch.as_tensor(ids)).logits.numpy()
  pair = logits[0, -1, [tokenizer.convert_tokens_to_ids(w) for w in labels]]
  return float(np.exp(pair[0]) / np.exp(pair).sum())


def _rerank(path, preset, coll, run, out, top_k):
  with contextlib.redirect_stdout(io.StringIO()):
    assert rerank_lib.main(['--model', path, '--preset', preset, '--data', str(coll), '--run',
                            str(run), '--out', str(out), '--top-k', str(top_k), '--quiet',
                            '--image-size', str(IMAGE_SIZE), '--batch-size', '2']) == 0
  written = {}
  for line in out.read_text().splitlines():
    qid, _, docid, _, score, _ = line.split()
    written[qid, docid] = float(score)
  return written


def test_monoqwen2_vl_preset_equals_the_model_card(tmp_path, vl, qwen_chat):
  path, model, tokenizer = _checkpoint(tmp_path, vl, qwen_chat, 'qwen2_vl')
  coll, run, rows = _collection(tmp_path, text_documents=False)
  written = _rerank(path, 'monoqwen2-vl', coll, run, tmp_path / 'out.trec', top_k=3)
  assert len(written) == 6
  for qid, query in QUERIES.items():
    for row in rows[:3]:
      image = Image.open(coll / row['image'])
      messages = [{'role': 'user', 'content': [
          {'type': 'image', 'image': image},
          {'type': 'text', 'text': MONOQWEN.format(query=query)}]}]
      card = _published(model, tokenizer, qwen_chat, vl, messages, [image], ('True', 'False'))
      # decomp ranks by z_True - z_False, the logit of the card's P(True).
      ours = 1 / (1 + np.exp(-written[qid, row['_id']]))
      assert ours == pytest.approx(card, abs=2e-5), (qid, row['_id'])


def test_gmr_preset_equals_its_prompt_run_by_transformers(tmp_path, vl, qwen_chat):
  path, model, tokenizer = _checkpoint(tmp_path, vl, qwen_chat, 'qwen2_5_vl')
  coll, run, rows = _collection(tmp_path, text_documents=True)
  written = _rerank(path, 'gmr', coll, run, tmp_path / 'out.trec', top_k=5)
  scores = []
  for qid, query in QUERIES.items():
    for row in rows:
      # The data has no instruction: the preset's default (Qwen3-Reranker's) is used.
      content = [{'type': 'text', 'text': f'<Instruct>: {GMR_INSTRUCTION}\n<Query>: '},
                 {'type': 'text', 'text': query}, {'type': 'text', 'text': '\n<Document>: '}]
      images = [Image.open(coll / row['image'])] if 'image' in row else []
      content += [{'type': 'image', 'image': image} for image in images]
      if row['text']:
        content.append({'type': 'text', 'text': row['text']})
      messages = [{'role': 'system', 'content': JUDGE}, {'role': 'user', 'content': content}]
      reference = _published(model, tokenizer, qwen_chat, vl, messages, images, ('yes', 'no'))
      ours = 1 / (1 + np.exp(-written[qid, row['_id']]))
      assert ours == pytest.approx(reference, abs=2e-5), (qid, row['_id'])
      scores.append(ours)
  assert len(set(np.round(scores, 5))) == len(scores)
