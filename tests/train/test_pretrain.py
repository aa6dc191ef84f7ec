"""The base-checkpoint recipe: cached, deterministic, HF layout, and trainable from."""

import json
import os
import warnings

import numpy as np
import pytest
from safetensors.numpy import load_file

from decomp.models import hf
from decomp.train import config as config_lib
from decomp.train import logs
from decomp.train import pretrain
from decomp.train.loop import train


def test_base_checkpoint_is_cached_deterministic_and_used(tmp_path, monkeypatch):
  cfg = config_lib.apply_overrides(config_lib.get_config('playground_quick'), [
      'model=playground', 'pretrain_steps=30', 'pretrain_batch_size=16', 'quiet=true'])
  monkeypatch.setenv('DECOMP_CACHE', str(tmp_path / 'cache_a'))
  path = pretrain.base_checkpoint(cfg)
  assert os.path.basename(path).startswith('base-')
  assert {'config.json', 'model.safetensors', 'tokenizer.json', 'multimodal.json',
          'multimodal.safetensors', 'pretrain.json'} <= set(os.listdir(path))
  info = logs.read_json(os.path.join(path, 'pretrain.json'))
  losses = np.asarray(info['losses'])
  assert len(losses) == 30 and losses[-5:].mean() < losses[:5].mean() - 0.5, losses
  # HF layout: the models' own loader reads it; the shape is the config's.
  decoder = hf.load_pretrained(path)
  assert (decoder.config.hidden_size, decoder.config.num_layers) == (cfg.hidden_size,
                                                                      cfg.num_layers)
  # Cached: a second call returns the same directory without building, and says nothing.
  assert info['source_fingerprint'] == pretrain.source_fingerprint()
  mtime = os.path.getmtime(os.path.join(path, 'model.safetensors'))
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    assert pretrain.base_checkpoint(cfg) == path
  assert os.path.getmtime(os.path.join(path, 'model.safetensors')) == mtime
  # A base built by other sources is still used (a sweep keeps one base), with a warning.
  monkeypatch.setattr(pretrain, 'source_fingerprint', lambda: 'edited-sources')
  with pytest.warns(UserWarning, match='built by other decomp sources'):
    assert pretrain.base_checkpoint(cfg) == path
  monkeypatch.undo()
  monkeypatch.setenv('DECOMP_CACHE', str(tmp_path / 'cache_a'))
  # Deterministic: a fresh cache with the same seed gives bit-identical weights.
  monkeypatch.setenv('DECOMP_CACHE', str(tmp_path / 'cache_b'))
  again = pretrain.base_checkpoint(cfg)
  assert again != path and os.path.basename(again) == os.path.basename(path)
  for name in ('model.safetensors', 'multimodal.safetensors'):
    a, b = load_file(os.path.join(path, name)), load_file(os.path.join(again, name))
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)

  # Fine-tuning starts from these weights: the trained run's frozen base equals the checkpoint.
  workdir = str(tmp_path / 'run')
  train(config_lib.apply_overrides(cfg, ['steps=2', 'finetune=lora', 'eval_every=0',
                                          'final_eval=false', 'example_log_every=0']), workdir)
  from decomp.train.checkpoint import load_state
  state, _ = load_state(workdir)
  saved = load_file(os.path.join(again, 'model.safetensors'))
  embed = state['frozen']['decoder']['embed_tokens']['value']
  np.testing.assert_array_equal(embed, saved['model.embed_tokens.weight'])
  mm = load_file(os.path.join(again, 'multimodal.safetensors'))
  np.testing.assert_array_equal(state['frozen']['projector']['linear_1']['kernel']['value'],
                                mm['projector.linear_1.kernel'])
  assert 'lora_a' in json.dumps(list(_paths(state['params'])))


def _paths(tree, prefix=''):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _paths(v, f'{prefix}/{k}')
  else:
    yield prefix


def test_attribute_questions_are_true_then_false_and_in_vocabulary():
  from decomp.data.playground import Playground, text, world
  from decomp.train import state as state_lib

  cfg = config_lib.get_config('playground')
  playground = Playground(pretrain.pretraining_world(cfg))
  tokenizer = state_lib.resolve_tokenizer(cfg)
  rng = np.random.default_rng(0)
  texts, checked = [], 0
  for index in range(20):
    plan = playground.plan('train', index)
    questions = pretrain.attribute_questions(plan, playground.config, rng, 4)
    assert [q.rsplit(' ', 1)[1] for _, q in questions] == ['yes', 'no', 'yes', 'no']
    for _, question in questions:
      description, asked = question.split(' . Does it match ')
      value = asked.rsplit(' ? ', 1)[0]
      texts.append(question)
      for attribute, table in (('colour', text.COLOUR_WORDS), ('size', text.SIZE_WORDS),
                               ('texture', text.TEXTURE_WORDS)):
        meaning = {word: name for name, words in table.items() for word in words}
        if value in meaning:  # the asked value is this attribute's: true iff the answer is yes
          index = world.ATTRIBUTES.index(attribute)
          truth = world.VALUES[attribute][plan.target[index]]
          assert (meaning[value] == truth) == question.endswith('yes'), question
          checked += 1
  assert checked >= 20
  ids = tokenizer(texts, add_special_tokens=False)['input_ids']
  assert all(tokenizer.unk_token_id not in seq for seq in ids)
  assert max(len(seq) for seq in ids) < pretrain.TEXT_TOKENS
  # The recipe names the questions only when used, so bases built without them keep their keys.
  assert 'pretrain_qa_per_group' not in pretrain.recipe(cfg)
  assert pretrain.recipe(config_lib.apply_overrides(cfg, ['pretrain_qa_per_group=2']))[
      'pretrain_qa_per_group'] == 2


def _colour_of(description):
  from decomp.data.playground import text
  meaning = {word: name for name, words in text.COLOUR_WORDS.items() for word in words}
  return {meaning[w] for w in text.words(description) if w in meaning}


def test_matching_questions_pair_the_target_and_weigh_only_the_answer():
  from decomp.data.playground import Playground, world
  from decomp.train import state as state_lib

  cfg = config_lib.apply_overrides(config_lib.get_config('playground'),
                                   ['pretrain_match_per_group=4'])
  playground = Playground(pretrain.pretraining_world(cfg))
  rng = np.random.default_rng(0)
  kinds, checked = set(), 0
  for index in range(24):
    plan = playground.plan('train', index)
    questions = pretrain.matching_examples(plan, playground.config, rng, 4)
    assert [after.rsplit(' ', 1)[1] for _, _, after, _ in questions] == ['yes', 'no'] * 2
    for image, before, after, answer_only in questions:
      assert answer_only and after.endswith(('Does it match ? yes', 'Does it match ? no'))
      texts = [t for t in before.split(' . ') + after.split(' . ') if t and 'Does it' not in t]
      kind = ('caption-image' if before else 'text-text' if image is None
              else 'edit' if len(texts) == 2 else 'image-caption')
      kinds.add(kind)
      if kind == 'text-text' and after.endswith('yes'):  # both sides describe the target
        colour = world.VALUES['colour'][plan.target[world.ATTRIBUTES.index('colour')]]
        assert _colour_of(texts[0]) == _colour_of(texts[1]) == {colour}, after
        checked += 1
  assert kinds == set(pretrain.MATCH_KINDS) and checked >= 3

  # In a pre-training batch a question's loss is its answer alone, weighted ANSWER_WEIGHT; an
  # image sits where its kind puts it (after the caption for caption-image).
  tokenizer = state_lib.resolve_tokenizer(cfg)
  shapes = state_lib.model_shapes(cfg, tokenizer)
  stream = pretrain._Sequences(cfg, tokenizer, shapes.vision.num_patches, shapes.vision)
  batch = stream.batch(96)
  yes, no = tokenizer.convert_tokens_to_ids(['yes', 'no'])
  image_id = tokenizer.convert_tokens_to_ids('<image>')
  answered = 0
  for row in range(96):
    positions = np.flatnonzero(batch['loss_mask'][row])
    ids = batch['input_ids'][row]
    assert tokenizer.unk_token_id not in ids[batch['attention_mask'][row] > 0]
    if len(positions) == 1 and batch['loss_mask'][row, positions[0]] == pretrain.ANSWER_WEIGHT:
      assert ids[positions[0] + 1] in (yes, no)
      assert ids[positions[0] + 2] == tokenizer.eos_token_id
      has_image = bool(np.any(ids == image_id))
      assert has_image == bool(batch['image_valid'][row, 0])
      answered += 1
    else:  # a caption: every next text token counts once
      assert set(batch['loss_mask'][row, positions]) == {1.0} and len(positions) > 3
  assert 24 <= answered < 96
  # The recipe names the knobs only when used, so earlier bases keep their keys.
  plain = config_lib.get_config('playground')
  assert {'pretrain_match_per_group', 'pretrain_vision_steps'}.isdisjoint(pretrain.recipe(plain))
  assert pretrain.recipe(cfg)['pretrain_match_per_group'] == 4
  for key in ('pretrain_match_per_group', 'pretrain_vision_steps'):
    with pytest.raises(ValueError, match=key):
      config_lib.validate(config_lib.apply_overrides(plain, [f'{key}=-1']), num_devices=1)


def test_tower_pretraining_teaches_the_attributes_and_the_base_reports_both_accuracies(tmp_path):
  from flax import nnx
  from decomp.models.vision import VisionEncoder
  from decomp.train import state as state_lib

  cfg = config_lib.apply_overrides(config_lib.get_config('playground_quick'), [
      'model=playground', 'pretrain_steps=4', 'pretrain_batch_size=8', 'quiet=true',
      'pretrain_vision_steps=300', 'pretrain_match_per_group=2'])
  untrained = config_lib.apply_overrides(cfg, ['pretrain_vision_steps=0'])
  vision = VisionEncoder(state_lib.vision_config(cfg), rngs=nnx.Rngs(0))
  before = pretrain.pretrain_tower(untrained, vision, eval_images=256)
  after = pretrain.pretrain_tower(cfg, vision, eval_images=256)
  assert set(after) == {'train_scenes', 'held_out_pairs'}
  # Colour (6 values) and position (5) are read off the pixels in 300 steps; untrained, chance.
  assert before['train_scenes']['colour'] < 0.4 < 0.8 < after['train_scenes']['colour']
  assert before['train_scenes']['position'] < 0.4 < 0.8 < after['train_scenes']['position']

  info = pretrain.build(config_lib.apply_overrides(cfg, ['pretrain_vision_steps=5']),
                        str(tmp_path / 'base'))
  assert set(info['tower_accuracy']) == {'train_scenes', 'held_out_pairs'}
  assert set(info['matching_accuracy']) == set(pretrain.MATCH_KINDS)
  assert all(0.0 <= v <= 1.0 for v in info['matching_accuracy'].values())
