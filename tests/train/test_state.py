"""What a model has follows what it is: a text checkpoint gets no vision tower unless asked, a
checkpoint's shape is its own (config shape fields that would be ignored are refused), and the
tokenizer and shapes are resolved without building any model."""

import dataclasses
import os

import pytest
from flax import nnx

from decomp.models import hf
from decomp.models.build import RerankerSpec, make_reranker
from decomp.train import cache
from decomp.train import config as config_lib
from decomp.train import overrides as overrides_lib
from decomp.train import recipes
from decomp.train import state as state_lib


@pytest.fixture(scope='module')
def text_checkpoint(tmp_path_factory):
  """A random Qwen2-layout text checkpoint with the playground tokenizer beside it."""
  cfg = recipes.get_config('playground_quick')
  tokenizer = state_lib.resolve_tokenizer(cfg)
  shapes = state_lib.model_shapes(config_lib.replace(cfg, model={'vision': False}), tokenizer)
  model = make_reranker(RerankerSpec(decoder=shapes.decoder, label_ids=(1, 2)), nnx.Rngs(0))
  path = str(tmp_path_factory.mktemp('text_ckpt'))
  hf.save_pretrained(model.decoder, path)
  tokenizer.save_pretrained(path)
  return path


def _cfg(path, *overrides):
  return overrides_lib.apply_overrides(recipes.get_config('playground'),
                                    [f'model={path}', *overrides])


def test_a_text_checkpoint_reads_no_images_unless_asked(text_checkpoint):
  cfg = _cfg(text_checkpoint)
  tokenizer = state_lib.resolve_tokenizer(cfg)
  assert state_lib.data_shapes(cfg, tokenizer).vision is None  # vision='auto'
  asked = state_lib.data_shapes(_cfg(text_checkpoint, 'vision=true'), tokenizer)
  assert asked.vision is not None and not asked.vision_pretrained  # a fresh ViT + projector
  # The playground reads images by default; its base is not built to know its shapes.
  playground = recipes.get_config('playground_quick')
  assert state_lib.data_shapes(playground, tokenizer).vision is not None


def test_shape_fields_that_do_not_apply_are_refused(text_checkpoint):
  _cfg(text_checkpoint)
  with pytest.raises(ValueError, match=r"hidden_size=256.*do not apply to model="):
    _cfg(text_checkpoint, 'hidden_size=256')


def test_a_checkpoint_without_a_tokenizer_is_refused(text_checkpoint, tmp_path):
  import shutil
  bare = tmp_path / 'bare'
  shutil.copytree(text_checkpoint, bare)
  for name in os.listdir(bare):
    if name.startswith(('tokenizer', 'vocab', 'merges', 'special_tokens')):
      os.remove(bare / name)
  with pytest.raises(FileNotFoundError, match='holds no tokenizer'):
    state_lib.resolve_tokenizer(_cfg(str(bare)))
  from decomp.train.loop import train  # training refuses it before touching the workdir
  with pytest.raises(FileNotFoundError, match=r'bare holds no tokenizer .*set model.tokenizer=DIR'):
    train(_cfg(str(bare), 'finetune=lora'), str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()
  assert len(state_lib.resolve_tokenizer(_cfg(str(bare), f'tokenizer={text_checkpoint}')))


def test_the_tokenizer_comes_from_the_checkpoint_or_the_playground(text_checkpoint):
  own = state_lib.resolve_tokenizer(_cfg(text_checkpoint))
  assert len(own) == len(state_lib.resolve_tokenizer(recipes.get_config('playground')))
  assert os.path.isdir(cache.playground_tokenizer_dir())
