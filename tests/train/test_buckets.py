"""Length buckets: each batch padded to the smallest bucket that holds it, with the same training
numbers as fixed padding, and bucket lists that cannot work refused early."""

import numpy as np
import pytest

from decomp.data.types import Group, Item
from decomp.models import prompt as prompt_lib
from decomp.train import config as config_lib
from decomp.train import overrides as overrides_lib
from decomp.train import recipes
from decomp.train import logs
from decomp.train import state as state_lib
from decomp.train.loop import train

LEAN = ['vision=false', 'num_layers=1', 'eval_every=0', 'final_eval=false', 'quiet=true',
        'example_log_every=0', 'steps=6', 'checkpoint_every=0', 'num_devices=1',
        'mesh={"data": 1}', 'playground.tasks=["t2t"]']


def quick(*overrides):
  return overrides_lib.apply_overrides(recipes.get_config('playground_quick'),
                                    [*LEAN, *overrides])


def _group(doc_words):
  return Group(query_id='q', task='t2t', instruction='find', query=Item(text='red cube'),
               docs=(Item(text=' '.join(['cube'] * doc_words)), Item(text='sphere')),
               labels=(1, 0), doc_ids=('a', 'b'), doc_kinds=('', ''))


def test_a_batch_takes_the_smallest_bucket_that_holds_it():
  tokenizer = state_lib.resolve_tokenizer(quick())
  short = prompt_lib.encode_groups([_group(2)], tokenizer, list_size=2, max_length=96,
                                   lengths=(32, 64, 96))
  long = prompt_lib.encode_groups([_group(40)], tokenizer, list_size=2, max_length=96,
                                  lengths=(32, 64, 96))
  assert short['input_ids'].shape[-1] == 32 and long['input_ids'].shape[-1] == 64
  fixed = prompt_lib.encode_groups([_group(2)], tokenizer, list_size=2, max_length=96,
                                   pad_multiple=96)
  # The same tokens, left-padded into a shorter row.
  np.testing.assert_array_equal(fixed['input_ids'][..., -32:], short['input_ids'])
  assert fixed['attention_mask'][..., :-32].sum() == 0
  with pytest.raises(ValueError, match='fits none of the bucket lengths'):
    prompt_lib.encode_groups([_group(40)], tokenizer, list_size=2, max_length=96, lengths=(32,))


def test_bucketed_training_follows_fixed_padding(tmp_path):
  fixed, bucketed = str(tmp_path / 'fixed'), str(tmp_path / 'bucketed')
  train(quick('max_length=96'), fixed)
  train(quick('max_length=96', 'length_buckets=[32,48,64,96]'), bucketed)
  ref, got = logs.read_steps(fixed), logs.read_steps(bucketed)
  for key in ('loss', 'grad_norm', 'param_norm'):
    np.testing.assert_allclose([r[key] for r in got], [r[key] for r in ref], rtol=1e-5,
                               err_msg=key)
  # The playground's T->T prompts fit a bucket shorter than max_length.
  from decomp.train import data as data_lib
  cfg = quick('max_length=96', 'length_buckets=[32,48,64,96]')
  arrays, _ = data_lib.make_data(cfg, state_lib.resolve_tokenizer(cfg)).train_batch(0, 8)
  assert arrays['input_ids'].shape[-1] < 96


@pytest.mark.parametrize('override, message', [
    ('length_buckets=[16,32]', 'the longest bucket must hold max_length=64'),
    ('length_buckets=[0,64]', 'must be positive integers'),
])
def test_bad_bucket_lists_are_named(override, message):
  with pytest.raises(ValueError, match=message):
    config_lib.validate(quick(override))


def test_evaluation_sorted_by_length_equals_one_group_at_a_time():
  """Evaluation sorts groups by length into token-sized batches, each padded to a rung of the
  length ladder and to fewer than twice its groups: the same scores as one group per batch at
  max_length."""
  import jax
  from decomp.train import data as data_lib
  from decomp.train import evaluate as evaluate_lib
  from decomp.train import mesh as mesh_lib
  cfg = quick('max_length=96', 'eval_batch_size=8', 'playground.tasks=["t2t","i2t"]')
  tokenizer = state_lib.resolve_tokenizer(cfg)
  data = data_lib.make_data(cfg, tokenizer)
  mesh = mesh_lib.make_mesh({'data': 1}, jax.devices()[:1])
  objective = config_lib.make_objective(cfg)
  model = state_lib.build_model_state(cfg, mesh, tokenizer, objective)
  params, frozen = model.initialize()
  sorted_eval = evaluate_lib.Evaluator(cfg, model, data, mesh, objective)
  one_by_one = evaluate_lib.Evaluator(
      overrides_lib.apply_overrides(cfg, ['eval_batch_size=1', 'length_buckets=[96]']), model,
      data, mesh, objective)
  got = sorted_eval.scores('val', params, frozen, 6)
  ref = one_by_one.scores('val', params, frozen, 6)
  for key in ('sft', 'cl', 'labels', 'where'):
    np.testing.assert_allclose(got[key], ref[key], rtol=1e-5, atol=1e-5, err_msg=key)
  batches = sorted_eval._batches_of('val', 6)
  order = np.concatenate([indices for indices, _ in batches]).tolist()
  assert sorted(order) == list(range(6)) and order != list(range(6))  # longest first, undone
  for indices, arrays in batches:  # padded to a rung below max_length, rows < 2x the groups
    rows, _, length = arrays['input_ids'].shape
    assert len(indices) <= rows < 2 * len(indices) and length < 96
