"""The base-checkpoint recipe: cached, deterministic, HF layout, and trainable from."""

import json
import os
import warnings

import numpy as np
import pytest
from safetensors.numpy import load_file

from decomp.models import hf
from decomp.train import config as config_lib
from decomp.train import overrides as overrides_lib
from decomp.train import recipes
from decomp.train import logs
from decomp.playground import base as pretrain
from decomp.playground import sequences
from decomp.train.loop import train


def test_base_checkpoint_is_cached_deterministic_and_used(tmp_path, monkeypatch):
  cfg = overrides_lib.apply_overrides(recipes.get_config('playground_quick'), [
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
  assert (decoder.config.hidden_size, decoder.config.num_layers) == (cfg.model.hidden_size,
                                                                      cfg.model.num_layers)
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
  train(overrides_lib.apply_overrides(cfg, ['steps=2', 'finetune=lora', 'eval_every=0',
                                          'final_eval=false', 'example_log_every=0']), workdir)
  from flax import nnx

  from decomp.train.checkpoint import load_state
  from decomp.train.run import Run
  state, meta = load_state(workdir)
  assert 'frozen' not in state and meta['base']['path'] == again  # the adapters name their base
  frozen = nnx.to_pure_dict(Run.open(workdir).frozen)  # read from the base again
  saved = load_file(os.path.join(again, 'model.safetensors'))
  np.testing.assert_array_equal(frozen['decoder']['embed_tokens'],
                                saved['model.embed_tokens.weight'])
  mm = load_file(os.path.join(again, 'multimodal.safetensors'))
  np.testing.assert_array_equal(frozen['projector']['linear_1']['kernel'],
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

  cfg = recipes.get_config('playground')
  playground = Playground(sequences.pretraining_world(cfg))
  tokenizer = state_lib.resolve_tokenizer(cfg)
  rng = np.random.default_rng(0)
  texts, checked = [], 0
  for index in range(20):
    plan = playground.plan('train', index)
    questions = sequences.attribute_questions(plan, playground.config, rng, 4)
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
  assert max(len(seq) for seq in ids) < sequences.TEXT_TOKENS
  # The recipe names the questions only when used, so bases built without them keep their keys.
  assert 'pretrain_qa_per_group' not in pretrain.recipe(cfg)
  assert pretrain.recipe(overrides_lib.apply_overrides(cfg, ['pretrain_qa_per_group=2']))[
      'pretrain_qa_per_group'] == 2


def _colour_of(description):
  from decomp.data.playground import text
  meaning = {word: name for name, words in text.COLOUR_WORDS.items() for word in words}
  return {meaning[w] for w in text.words(description) if w in meaning}


def test_matching_questions_pair_the_target_and_weigh_only_the_answer():
  from decomp.data.playground import Playground, world
  from decomp.train import state as state_lib

  cfg = overrides_lib.apply_overrides(recipes.get_config('playground'),
                                   ['pretrain_match_per_group=4'])
  playground = Playground(sequences.pretraining_world(cfg))
  rng = np.random.default_rng(0)
  kinds, checked = set(), 0
  for index in range(24):
    plan = playground.plan('train', index)
    questions = sequences.matching_items(plan, playground.config, rng, 4)
    assert [answer for _, _, answer in questions] == ['yes', 'no'] * 2
    for query, doc, answer in questions:
      kind = ('edit' if query.image is not None and query.text else
              'image-caption' if query.image is not None else
              'caption-image' if doc.image is not None else 'text-text')
      assert doc.text if kind != 'caption-image' else doc.image.shape == (32, 32, 3)
      kinds.add(kind)
      if kind == 'text-text' and answer == 'yes':  # both sides describe the target
        colour = world.VALUES['colour'][plan.target[world.ATTRIBUTES.index('colour')]]
        assert _colour_of(query.text) == _colour_of(doc.text) == {colour}, (query, doc)
        checked += 1
  assert kinds == set(sequences.MATCH_KINDS) and checked >= 3

  # In a pre-training batch a question is the 'playground' preset's prompt, its loss the answer
  # alone, weighted ANSWER_WEIGHT; an image sits where its side puts it.
  tokenizer = state_lib.resolve_tokenizer(cfg)
  shapes = state_lib.model_shapes(cfg, tokenizer)
  stream = sequences.PretrainStream(cfg, tokenizer, shapes.vision.num_patches, shapes.vision)
  batch = stream.batch(96)
  yes, no = tokenizer.convert_tokens_to_ids(['yes', 'no'])
  image_id = tokenizer.convert_tokens_to_ids('<image>')
  answered = 0
  for row in range(96):
    positions = np.flatnonzero(batch['loss_mask'][row])
    ids = batch['input_ids'][row]
    assert tokenizer.unk_token_id not in ids[batch['attention_mask'][row] > 0]
    if len(positions) == 1 and batch['loss_mask'][row, positions[0]] == sequences.ANSWER_WEIGHT:
      assert tokenizer.decode(ids[:positions[0] + 1]).endswith('. does it match ?')
      assert ids[positions[0] + 1] in (yes, no)
      assert ids[positions[0] + 2] == tokenizer.eos_token_id
      has_image = bool(np.any(ids == image_id))
      assert has_image == bool(batch['image_valid'][row, 0])
      answered += 1
    else:  # a caption: every next text token counts once
      assert set(batch['loss_mask'][row, positions]) == {1.0} and len(positions) > 3
  assert 24 <= answered < 96
  # The recipe names the knobs only when used, so earlier bases keep their keys.
  plain = recipes.get_config('playground')
  assert {'pretrain_match_per_group', 'pretrain_vision_steps'}.isdisjoint(pretrain.recipe(plain))
  assert pretrain.recipe(cfg)['pretrain_match_per_group'] == 4
  for key, path in (('pretrain_match_per_group', 'base.match_per_group'),
                    ('pretrain_vision_steps', 'base.vision_steps')):
    with pytest.raises(ValueError, match=rf'{path}=-1: must be >= 0'):
      overrides_lib.apply_overrides(plain, [f'{key}=-1'])


def test_tower_pretraining_teaches_the_attributes_and_the_base_reports_both_accuracies(tmp_path):
  from flax import nnx
  from decomp.models.vision import VisionEncoder
  from decomp.train import state as state_lib

  cfg = overrides_lib.apply_overrides(recipes.get_config('playground_quick'), [
      'model=playground', 'pretrain_steps=4', 'pretrain_batch_size=8', 'quiet=true',
      'pretrain_vision_steps=300', 'pretrain_match_per_group=2'])
  untrained = overrides_lib.apply_overrides(cfg, ['pretrain_vision_steps=0'])
  vision = VisionEncoder(state_lib.vision_config(cfg), rngs=nnx.Rngs(0))
  before = pretrain.pretrain_tower(untrained, vision, eval_images=256)
  after = pretrain.pretrain_tower(cfg, vision, eval_images=256)
  assert set(after) == {'train_scenes', 'held_out_pairs'}
  # Colour (6 values) and position (5) are read off the pixels in 300 steps; untrained, chance.
  assert before['train_scenes']['colour'] < 0.4 < 0.8 < after['train_scenes']['colour']
  assert before['train_scenes']['position'] < 0.4 < 0.8 < after['train_scenes']['position']

  info = pretrain.build(overrides_lib.apply_overrides(cfg, ['pretrain_vision_steps=5']),
                        str(tmp_path / 'base'))
  assert set(info['tower_accuracy']) == {'train_scenes', 'held_out_pairs'}
  assert set(info['matching_accuracy']) == set(sequences.MATCH_KINDS)
  assert all(0.0 <= v <= 1.0 for v in info['matching_accuracy'].values())


def test_chat_matching_questions_are_written_in_the_rerankers_layout():
  from decomp.models.prompt import RerankPrompt
  from decomp.train import state as state_lib

  cfg = overrides_lib.apply_overrides(recipes.get_config('playground'), [
      'pretrain_match_per_group=4', 'pretrain_match_format=chat'])
  tokenizer = state_lib.resolve_tokenizer(cfg)
  shapes = state_lib.model_shapes(cfg, tokenizer)
  patches = shapes.vision.num_patches
  stream = sequences.PretrainStream(cfg, tokenizer, patches, shapes.vision)
  batch = stream.batch(96)
  assert batch['input_ids'].shape[1] == cfg.data.max_length + 2
  # The reranker's own template after the user turn: the answer follows exactly these tokens.
  _, _, suffix, _, _ = RerankPrompt(tokenizer, image_tokens=patches).segments(
      sequences.MATCH_INSTRUCTION)
  system = tokenizer(sequences.MATCH_INSTRUCTION, add_special_tokens=False)['input_ids']
  yes, no = tokenizer.convert_tokens_to_ids(['yes', 'no'])
  image_id = tokenizer.convert_tokens_to_ids('<image>')
  answers, with_image = [], 0
  for row in range(96):
    positions = np.flatnonzero(batch['loss_mask'][row])
    ids = list(batch['input_ids'][row])
    if not (len(positions) == 1 and batch['loss_mask'][row, positions[0]] == sequences.ANSWER_WEIGHT):
      continue
    end = positions[0] + 1
    assert ids[end - len(suffix):end] == list(suffix)
    assert ids[end] in (yes, no) and ids[end + 1] == tokenizer.eos_token_id
    assert any(ids[i:i + len(system)] == system for i in range(end)), 'no instruction'
    placeholders = ids[:end].count(image_id)
    assert placeholders in (0, patches)
    assert (placeholders > 0) == bool(batch['image_valid'][row, 0])
    with_image += placeholders > 0
    answers.append(ids[end])
  assert len(answers) >= 24 and with_image >= 8 and set(answers) == {yes, no}
  assert pretrain.recipe(cfg)['pretrain_match_format'] == 'chat'
  assert 'pretrain_match_format' not in pretrain.recipe(recipes.get_config('playground'))
  with pytest.raises(ValueError, match='match_format'):
    config_lib.validate(overrides_lib.apply_overrides(cfg, ['pretrain_match_format=xml']),
                        num_devices=1)


def test_a_frozen_vision_path_keeps_its_weights_and_the_base_reports_image_reading(tmp_path):
  cfg = overrides_lib.apply_overrides(recipes.get_config('playground_quick'), [
      'model=playground', 'pretrain_steps=6', 'pretrain_batch_size=8', 'quiet=true'])
  untrained = pretrain.build(overrides_lib.apply_overrides(cfg, ['pretrain_steps=0']),
                             str(tmp_path / 'init'))
  frozen = pretrain.build(overrides_lib.apply_overrides(cfg, ['pretrain_freeze_vision=true']),
                          str(tmp_path / 'frozen'))
  joint = pretrain.build(cfg, str(tmp_path / 'joint'))
  weights = {name: load_file(str(tmp_path / name / 'multimodal.safetensors'))
             for name in ('init', 'frozen', 'joint')}
  for key in weights['init']:
    np.testing.assert_array_equal(weights['frozen'][key], weights['init'][key], err_msg=key)
  assert any(not np.array_equal(weights['joint'][k], weights['init'][k]) for k in weights['init'])
  decoders = [load_file(str(tmp_path / n / 'model.safetensors')) for n in ('init', 'frozen')]
  assert any(not np.array_equal(decoders[0][k], decoders[1][k]) for k in decoders[0])
  assert pretrain.recipe(overrides_lib.apply_overrides(cfg, ['pretrain_freeze_vision=true']))[
      'pretrain_freeze_vision'] is True
  assert 'pretrain_freeze_vision' not in pretrain.recipe(cfg)
  # Captions after their own image and after another row's: both finite, both recorded; an
  # untrained vision path still tells images apart, so the two losses differ (a shuffle that
  # left every image in place would make them equal).
  for info in (untrained, frozen, joint):
    losses = info['caption_loss']
    assert set(losses) == {'own_image', 'other_image'}
    assert all(np.isfinite(v) and v > 0 for v in losses.values())
  assert untrained['caption_loss']['own_image'] != untrained['caption_loss']['other_image']


def test_matching_questions_with_random_negatives_never_ask_about_the_hard_ones():
  import types
  from decomp.data.playground import Playground, world

  playground = Playground(sequences.pretraining_world(recipes.get_config('playground')))
  colour = world.ATTRIBUTES.index('colour')
  target = np.array(playground.plan('train', 0).target)
  hard, easy = target.copy(), target.copy()
  hard[colour], easy[colour] = (target[colour] + 1) % 6, (target[colour] + 2) % 6
  plan = types.SimpleNamespace(target=target, doc_scenes=(target, hard, easy),
                               doc_kinds=('positive', 'hard', 'random'))
  names = {k: world.VALUES['colour'][s[colour]] for k, s in
           (('target', target), ('hard', hard), ('easy', easy))}

  def false_colours(negatives):
    rng = np.random.default_rng(0)
    items = sequences.matching_items(plan, playground.config, rng, 40, ('text-text',), negatives)
    return {c for _, doc, answer in items if answer == 'no' for c in _colour_of(doc.text)}

  assert false_colours('random') == {names['easy']}
  assert false_colours('group') == {names['easy'], names['hard']}
  with pytest.raises(ValueError, match='no random negative'):
    sequences.matching_items(types.SimpleNamespace(
        target=target, doc_scenes=(target, hard), doc_kinds=('positive', 'hard')),
        playground.config, np.random.default_rng(0), 2, ('text-text',), 'random')
  with pytest.raises(ValueError, match='match_negatives'):
    config_lib.validate(overrides_lib.apply_overrides(
        recipes.get_config('playground'), ['pretrain_match_negatives=hard']), num_devices=1)


def test_a_reranker_in_the_playground_prompt_reads_the_bases_own_question():
  """With ``prompt=playground`` the training engine encodes a (query, document) pair exactly as
  the base's pre-training asked its matching question (the answer then follows)."""
  from decomp.models.presets import get_preset
  from decomp.train import data as data_lib
  from decomp.train import state as state_lib

  cfg = overrides_lib.apply_overrides(recipes.get_config('playground'), [
      'prompt=playground', 'playground.tasks=["t2i","i2t","it2it"]', 'pretrain_match_per_group=2'])
  tokenizer = state_lib.resolve_tokenizer(cfg)
  shapes = state_lib.model_shapes(cfg, tokenizer)
  source = data_lib.make_source(cfg)
  groups = [source.train_group(i) for i in range(3)]
  encoded = data_lib.GroupData(cfg, source, tokenizer, shapes.vision).encode(
      groups, max(len(g.docs) for g in groups))
  stream = sequences.PretrainStream(cfg, tokenizer, shapes.vision.num_patches, shapes.vision)
  assert get_preset(cfg.readout.preset).label_words == ('yes', 'no')
  for g, group in enumerate(groups):
    for d, doc in enumerate(group.docs):
      mask = encoded['attention_mask'][g, d].astype(bool)
      ours = encoded['input_ids'][g, d][mask].tolist()
      theirs = stream.prompt.encode_pair('', group.query, doc, max_length=cfg.data.max_length)
      assert ours == theirs, (group.task, tokenizer.decode(ours), tokenizer.decode(theirs))
