"""The issue's end-to-end check: train a tiny reranker on FlagEmbedding data, rerank a BEIR
collection's first-stage run with ``python -m decomp.rerank``, and find the printed NDCG@10 equal
to pytrec_eval's on the written run file."""

import contextlib
import io
import json
import os

import numpy as np
import pytest

from decomp import rerank as rerank_lib
from decomp.data import beir, flag, sources
from decomp.data import tokenizer as tokenizer_lib
from decomp.data.types import Item
from decomp.train import config as config_lib
from decomp.train import overrides as overrides_lib
from decomp.train import recipes
from decomp.train.loop import train

pytrec_eval = pytest.importorskip("pytrec_eval")

LEAN = ['num_layers=1', 'eval_every=0', 'final_eval=false', 'quiet=true',
        'example_log_every=0', 'steps=3', 'negatives=3', 'checkpoint_every=3']


def _write_jsonl(path, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in rows)


def _text(rng, words, n=6):
  return ' '.join(rng.choice(words, size=n))


@pytest.fixture(scope='module')
def world(tmp_path_factory):
  """A BEIR collection with a top-8 run (graded qrels, score ties), FlagEmbedding train data."""
  root = tmp_path_factory.mktemp('rerank')
  rng = np.random.default_rng(0)
  words = [w for w in tokenizer_lib.vocabulary() if w.isalpha() and len(w) > 2][:120]
  coll = root / 'toy'
  docs = {f'd{i}': _text(rng, words) for i in range(40)}
  queries = {f'q{i}': _text(rng, words, 4) for i in range(6)}
  corpus = [{'_id': k, 'title': '', 'text': v} for k, v in docs.items()]
  # Images on a few rows (the model has a vision tower): a path, and a list of one path.
  from PIL import Image
  os.makedirs(coll / 'img')
  for i in range(3):
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(coll / 'img' / f'{i}.png')
    corpus[i]['image'] = f'img/{i}.png' if i % 2 else [f'img/{i}.png']
  _write_jsonl(str(coll / 'corpus.jsonl'), corpus)
  _write_jsonl(str(coll / 'queries.jsonl'), [{'_id': k, 'text': v} for k, v in queries.items()])
  qrels_lines, run_lines = ['query-id\tcorpus-id\tscore'], []
  for qi, qid in enumerate(queries):
    candidates = rng.choice(40, size=8, replace=False) if qi else np.arange(8)  # q0: images
    for rank, d in enumerate(candidates, start=1):
      run_lines.append(f'{qid} Q0 d{d} {rank} {float(10 - rank // 2)} bm25')  # pairs tie
    for d in candidates[:3]:
      qrels_lines.append(f'{qid}\td{d}\t{int(rng.integers(0, 3))}')
    qrels_lines.append(f'{qid}\td{(qi * 7) % 40}\t1')  # sometimes outside the run
  os.makedirs(coll / 'qrels')
  (coll / 'qrels' / 'test.tsv').write_text('\n'.join(qrels_lines) + '\n')
  run = root / 'bm25.trec'
  run.write_text('\n'.join(run_lines) + '\n')
  # FlagEmbedding training rows with teacher scores, exported to the layout the engine reads.
  rows = [{'query': _text(rng, words, 4), 'pos': [_text(rng, words)],
           'neg': [_text(rng, words) for _ in range(4)], 'pos_scores': [5.0],
           'neg_scores': [1.0, 0.5, 0.0, -1.0], 'prompt': 'Find the passage.'}
          for _ in range(16)]
  _write_jsonl(str(root / 'flag' / 'train.jsonl'), rows)
  train_groups, _, _ = flag.load_flag(str(root / 'flag' / 'train.jsonl'))
  collection = beir.load_beir(str(coll), run=str(run))
  held_out = beir.training_groups(collection, negatives=3)
  data = sources.export_mrb(str(root / 'mrb'), {'train': train_groups, 'val': held_out,
                                                 'test': held_out})
  cfg = overrides_lib.apply_overrides(recipes.get_config('playground_quick'),
                                   [*LEAN, f'data={data}'])
  workdir = str(root / 'run')
  train(cfg, workdir)
  return root, coll, run, workdir


def test_rerank_command_prints_pytrec_evals_ndcg(world):
  root, coll, run, workdir = world
  out = str(root / 'reranked.trec')
  stdout = io.StringIO()
  with contextlib.redirect_stdout(stdout):
    assert rerank_lib.main(['--model', workdir, '--data', str(coll), '--run', str(run),
                            '--out', out, '--top-k', '8', '--batch-size', '8', '--quiet']) == 0
  printed = stdout.getvalue()
  summary = json.loads(printed.strip().splitlines()[-1])['toy']
  assert 'trec_eval convention: linear NDCG gain' in printed
  with open(out) as f:
    written = {}
    for line in f:
      qid, _, docid, _, score, _ = line.split()
      written.setdefault(qid, {})[docid] = float(score)
  qrels = {}
  for line in (coll / 'qrels' / 'test.tsv').read_text().splitlines()[1:]:
    qid, docid, rel = line.split('\t')
    qrels.setdefault(qid, {})[docid] = int(rel)
  ref = pytrec_eval.RelevanceEvaluator(qrels, {'ndcg_cut.10', 'recip_rank', 'recall.8'}
                                       ).evaluate(written)
  ndcg = np.mean([v['ndcg_cut_10'] for v in ref.values()])
  assert summary['ndcg@10'] == pytest.approx(ndcg, rel=1e-12, abs=1e-12)
  assert f'{ndcg:10.4f}' in printed
  assert summary['recall@8'] == pytest.approx(np.mean([v['recall_8'] for v in ref.values()]))
  assert sum(len(v) for v in written.values()) == 48
  # The model's scores differ from the first stage's: the reranking did something.
  assert len({round(s, 6) for v in written.values() for s in v.values()}) > 10
  # The notebook call scores like the command.
  scorer = rerank_lib.load_scorer(workdir, batch_size=8)
  collection = beir.load_beir(str(coll), run=str(run), top_k=8, image_size=scorer.image_size)
  g = beir.rerank_groups(collection)[0]
  scores = rerank_lib.rerank(scorer, g.query, list(g.docs), instruction=g.instruction)
  np.testing.assert_allclose(scores, [written[g.query_id][d] for d in g.doc_ids], rtol=1e-6)
  # q0's candidates d0-d2 carry images, and the model reads them.
  assert g.query_id == 'q0' and g.docs[0].image is not None and g.docs[0].image.shape == (16, 16, 3)
  without = rerank_lib.rerank(scorer, g.query, [Item(text=g.docs[0].text)],
                              instruction=g.instruction)
  assert abs(float(without[0]) - float(scores[0])) > 1e-6


def test_model_directory_scorer_matches_the_reranker(tmp_path):
  """A base/HF model directory (decoder + tokenizer) scores through decomp's own template."""
  import shutil

  from flax import nnx

  from decomp.data.types import Item
  from decomp.models.decoder import Decoder
  from decomp.models.hf import save_pretrained
  from decomp.models.prompt import encode_groups, label_token_ids
  from decomp.models.reranker import Reranker, load_tokenizer
  from decomp.train import cache
  from decomp.train import state as state_lib
  cfg = recipes.get_config('playground_quick')
  tok_dir = cache.playground_tokenizer_dir()
  tokenizer = load_tokenizer(tok_dir)
  decoder = Decoder(state_lib.decoder_config(cfg, len(tokenizer)), rngs=nnx.Rngs(1))
  model_dir = str(tmp_path / 'base')
  save_pretrained(decoder, model_dir)
  for name in os.listdir(tok_dir):
    shutil.copy(os.path.join(tok_dir, name), model_dir)
  scorer = rerank_lib.load_scorer(model_dir, None, batch_size=4)
  docs = ['a red square', 'the blue circle is small', 'green', 'a bar', 'another answer']
  got = rerank_lib.rerank(scorer, 'which shape is red', docs, instruction='Find the shape.')
  reranker = Reranker(decoder, label_token_ids(tokenizer, ('yes', 'no')), rngs=nnx.Rngs(0))
  from decomp.data.types import Group
  group = Group(query_id='q', task='t2t', instruction='Find the shape.',
                query=Item(text='which shape is red'), docs=tuple(Item(text=d) for d in docs),
                labels=(0,) * 5, doc_ids=tuple('abcde'), doc_kinds=('',) * 5)
  arrays = encode_groups([group], tokenizer, list_size=5, max_length=512)  # unpadded to 512
  out = reranker.readout(arrays['input_ids'], arrays['attention_mask'])
  np.testing.assert_allclose(got, np.asarray(out.yes - out.no)[0], rtol=1e-4, atol=1e-5)
  assert len(set(np.round(got, 5))) == len(docs)
  with pytest.raises(ValueError, match='unknown preset'):
    rerank_lib.load_scorer(model_dir, 'nope')
