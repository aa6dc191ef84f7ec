"""Reranking at the Qwen3-Reranker-0.6B shape: decomp's scorer (fp32, bf16) vs the model card's
transformers recipe (fp32, bf16 autocast), documents/s and peak memory.

  python -m benchmarks.rerank_06b [--docs 8] [--batch 8] [--max-length 640] [--smoke]

Random weights in the real config (hidden 1024, 28 layers, 16 heads / 8 kv, head_dim 128, MLP
3072, vocab 151,669, tied embeddings) with Qwen's real vocabulary (``common.qwen3_tokenizer``),
saved once by transformers to a temporary directory. One query and ``--docs`` documents of 100 to
600 tokens (random words). Each side runs in its own subprocess (peak memory: its
``ru_maxrss``):

- decomp: ``decomp.rerank.load_scorer(DIR, 'qwen3-reranker')``: pairs sorted by length into
  token-sized batches padded to the length ladder (``--batch`` pairs at ``--max-length``); the
  pairs are scored once (compiling every shape) and then timed on a second pass.
- torch: the model card's recipe (its prompt, ``truncation='longest_first'``, left padding to the
  batch's longest, ``model(**inputs).logits[:, -1, :]``, softmax over no/yes) under
  ``torch.inference_mode``, in batches of ``--batch`` pairs sorted by length (its best order);
  bf16: ``torch.autocast('cpu', dtype=torch.bfloat16)``. One warm-up batch, then a timed pass.

The sides' P(yes) are compared (fp32) before the table is printed. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

QWEN3_RERANKER_06B = dict(vocab_size=151669, hidden_size=1024, intermediate_size=3072,
                          num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                          head_dim=128, tie_word_embeddings=True, max_position_embeddings=40960,
                          rope_theta=1e6, rms_norm_eps=1e-6)
PREFIX = ('<|im_start|>system\nJudge whether the Document meets the requirements based on the '
          'Query and the Instruct provided. Note that the answer can only be "yes" or "no".'
          '<|im_end|>\n<|im_start|>user\n')
SUFFIX = '<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n'
INSTRUCTION = 'Given a web search query, retrieve relevant passages that answer the query'
SIDES = ('decomp fp32', 'decomp bf16', 'torch fp32 (card)', 'torch bf16 autocast (card)')


SMOKE = dict(QWEN3_RERANKER_06B, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16)  # --smoke: the script


def make_model_dir(path: str, config: dict) -> None:
  import torch
  from transformers import Qwen3Config, Qwen3ForCausalLM

  from benchmarks.common import qwen3_tokenizer
  tokenizer = qwen3_tokenizer()
  torch.manual_seed(0)
  Qwen3ForCausalLM(Qwen3Config(**config)).save_pretrained(path)
  tokenizer.save_pretrained(path)


def make_pairs(path: str, docs: int, seed: int = 0) -> dict:
  """One query and ``docs`` documents of 100..600 tokens (words that are one token each)."""
  import numpy as np
  from transformers import AutoTokenizer
  tokenizer = AutoTokenizer.from_pretrained(path)
  words = [w for w, i in sorted(tokenizer.get_vocab().items(), key=lambda x: x[1])[:20000]
           if w.startswith('\u0120') and w[1:].isalpha() and w[1:].islower() and len(w) > 3]
  rng = np.random.default_rng(seed)
  lengths = rng.integers(100, 601, size=docs)
  texts = [''.join(rng.choice(words, size=n)).replace('\u0120', ' ').strip() for n in lengths]
  return {'query': 'how do stars form in a galaxy', 'documents': texts}


def _decomp_side(model_dir: str, pairs: dict, args, dtype: str) -> dict:
  from decomp import rerank
  n = len(pairs['documents'])
  scorer = rerank.load_scorer(model_dir, 'qwen3-reranker', batch_size=args.batch,
                              max_length=args.max_length, dtype=dtype)
  call = ([''] * n, [pairs['query']] * n, pairs['documents'])
  start = time.perf_counter()
  list(scorer.batches(*call))
  first = time.perf_counter() - start
  start = time.perf_counter()
  batches = list(scorer.batches(*call))
  seconds = time.perf_counter() - start
  scores = [0.0] * n
  for batch in batches:
    for i, s in zip(batch.indices.tolist(), batch.scores.tolist()):
      scores[i] = 1 / (1 + 2.718281828459045 ** -s)
  return {'seconds': seconds, 'first_pass_s': first, 'tokens': sum(b.tokens for b in batches),
          'p_yes': scores}


def _torch_side(model_dir: str, pairs: dict, args, bf16: bool) -> dict:
  import contextlib

  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer
  tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side='left')
  model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
  prefix = tokenizer.encode(PREFIX, add_special_tokens=False)
  suffix = tokenizer.encode(SUFFIX, add_special_tokens=False)
  yes, no = tokenizer.convert_tokens_to_ids('yes'), tokenizer.convert_tokens_to_ids('no')
  texts = [f'<Instruct>: {INSTRUCTION}\n<Query>: {pairs["query"]}\n<Document>: {d}'
           for d in pairs['documents']]
  order = sorted(range(len(texts)), key=lambda i: -len(tokenizer.encode(texts[i])))
  context = (lambda: torch.autocast('cpu', dtype=torch.bfloat16)) if bf16 else (
      contextlib.nullcontext)

  def score(indices):
    inputs = tokenizer([texts[i] for i in indices], padding=False, truncation='longest_first',
                       return_attention_mask=False,
                       max_length=args.max_length - len(prefix) - len(suffix))
    inputs['input_ids'] = [prefix + ids + suffix for ids in inputs['input_ids']]
    tokens = sum(len(ids) for ids in inputs['input_ids'])
    inputs = tokenizer.pad(inputs, padding=True, return_tensors='pt', max_length=args.max_length)
    with torch.inference_mode(), context():
      logits = model(**inputs).logits[:, -1, :]
      pair = torch.nn.functional.log_softmax(
          torch.stack([logits[:, no], logits[:, yes]], 1).float(), 1)
    return pair[:, 1].exp().tolist(), tokens

  batches = [order[s:s + args.batch] for s in range(0, len(order), args.batch)]
  score(batches[-1])  # warm-up (the shortest batch)
  start = time.perf_counter()
  scores, tokens = [0.0] * len(texts), 0
  for indices in batches:
    probs, count = score(indices)
    tokens += count
    for i, p in zip(indices, probs):
      scores[i] = p
  return {'seconds': time.perf_counter() - start, 'tokens': tokens, 'p_yes': scores}


def run_side(side: str, model_dir: str, pairs_file: str, args) -> None:
  with open(pairs_file) as f:
    pairs = json.load(f)
  if side.startswith('decomp'):
    out = _decomp_side(model_dir, pairs, args, 'bfloat16' if 'bf16' in side else 'float32')
  else:
    out = _torch_side(model_dir, pairs, args, bf16='bf16' in side)
  out['peak_rss_gb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
  out['docs'] = len(pairs['documents'])
  print('RESULT ' + json.dumps(out), flush=True)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument('--docs', type=int, default=8)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--max-length', type=int, default=640)
  parser.add_argument('--model-dir', default=None, help='reuse a directory made before')
  parser.add_argument('--side', default=None, help=argparse.SUPPRESS)
  parser.add_argument('--pairs', default=None, help=argparse.SUPPRESS)
  parser.add_argument('--smoke', action='store_true', help='a 2-layer model: checks the script')
  parser.add_argument('--sides', default=','.join(SIDES), help='comma-separated, of: ' +
                      ', '.join(SIDES))
  parser.add_argument('--side-timeout', type=float, default=1800,
                      help='seconds a side may take (a slower one is reported as unfinished)')
  args = parser.parse_args(argv)
  if args.side:
    run_side(args.side, args.model_dir, args.pairs, args)
    return 0
  with tempfile.TemporaryDirectory() as tmp:
    model_dir = args.model_dir or os.path.join(tmp, 'qwen3-reranker-0.6b-random')
    if not args.model_dir:
      make_model_dir(model_dir, SMOKE if args.smoke else QWEN3_RERANKER_06B)
    pairs_file = os.path.join(tmp, 'pairs.json')
    with open(pairs_file, 'w') as f:
      json.dump(make_pairs(model_dir, args.docs), f)
    results, unfinished = {}, []
    for side in args.sides.split(','):
      command = [sys.executable, '-m', 'benchmarks.rerank_06b', '--side', side, '--model-dir',
                 model_dir, '--pairs', pairs_file, '--batch', str(args.batch), '--max-length',
                 str(args.max_length)]
      try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                              timeout=args.side_timeout)
      except subprocess.TimeoutExpired:
        print(f'{side}: did not finish within {args.side_timeout:.0f} s', file=sys.stderr)
        unfinished.append(side)
        continue
      lines = [l for l in done.stdout.splitlines() if l.startswith('RESULT ')]
      if done.returncode or not lines:
        print(f'{side}: failed\n{done.stderr[-3000:]}', file=sys.stderr)
        return 1
      results[side] = json.loads(lines[-1][len('RESULT '):])
      print(f'{side}: {results[side]["docs"] / results[side]["seconds"]:.2f} docs/s',
            file=sys.stderr)
  reference = (results.get('torch fp32 (card)') or next(iter(results.values())))['p_yes']
  reference_name = 'torch fp32' if 'torch fp32 (card)' in results else next(iter(results))
  print(f'load average {os.getloadavg()[0]:.1f}; {args.docs} documents of 100-600 tokens, '
        f'batches of {args.batch} pairs at max_length {args.max_length}')
  print('| side | docs/s | tokens/s | s (timed pass) | first pass s (compiles) | peak RSS GB | '
        'max abs diff P(yes) vs torch fp32 |')
  print('|---|---|---|---|---|---|---|')
  for side, r in results.items():
    diff = max(abs(a - b) for a, b in zip(r['p_yes'], reference))
    first = f'{r["first_pass_s"]:.1f}' if 'first_pass_s' in r else '-'
    print(f'| {side} | {r["docs"] / r["seconds"]:.2f} | {r["tokens"] / r["seconds"]:.0f} | '
          f'{r["seconds"]:.1f} | {first} | {r["peak_rss_gb"]:.2f} | {diff:.1e} |')
  for side in unfinished:
    print(f'| {side} | < {args.docs / args.side_timeout:.3f} | - | did not finish within '
          f'{args.side_timeout:.0f} s | - | - | - |')
  return 0


if __name__ == '__main__':
  sys.exit(main())
