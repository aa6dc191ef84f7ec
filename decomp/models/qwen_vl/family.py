"""The Qwen-VL family record: Qwen2-VL, Qwen2.5-VL and Qwen3-VL in the table of
:mod:`decomp.models.families`, and the :class:`ImageAdapter` through which the data feeds their
towers (placeholders, fixed-size patches, M-RoPE positions)."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from decomp.models.backbone import Family
from decomp.models.qwen_vl.hf import load_vl_pretrained, save_vl_pretrained
from decomp.models.qwen_vl.image import QwenImageProcessor
from decomp.models.qwen_vl.lora import apply_vision_lora
from decomp.models.qwen_vl.model import VL_ARCHITECTURES, QwenVL, QwenVLConfig
from decomp.models.qwen_vl.mrope import rope_index

IMAGE_PAD, VISION_START, VISION_END = '<|image_pad|>', '<|vision_start|>', '<|vision_end|>'


@dataclasses.dataclass(frozen=True)
class QwenVLImages:
  """How the data feeds a Qwen-VL tower: every image resized to ``image_size`` square and cut
  into the tower's patches; ``<|image_pad|>`` placeholders between ``<|vision_start|>`` and
  ``<|vision_end|>``; M-RoPE positions as transformers' ``get_rope_index``."""

  config: QwenVLConfig
  image_token: str = IMAGE_PAD
  image_wrap: tuple[str, str] | None = (VISION_START, VISION_END)

  @property
  def image_token_id(self) -> int:
    return self.config.image_token_id

  def tokens_per_image(self, image_size: int) -> int:
    v = self.config.vision
    return (image_size // v.patch_size) ** 2 // v.spatial_merge_size ** 2

  def check(self, tokenizer, image_size: int) -> None:
    vl = self.config
    found = tokenizer.get_vocab().get(IMAGE_PAD)
    if found != vl.image_token_id:
      raise ValueError(f'the tokenizer maps {IMAGE_PAD} to {found} but the '
                       f'{vl.hf_architecture} checkpoint expects image_token_id '
                       f'{vl.image_token_id}')
    factor = vl.vision.patch_size * vl.vision.spatial_merge_size
    if image_size % factor:
      raise ValueError(f'config image_size={image_size}: the {vl.hf_architecture} tower reads '
                       f'images whose side is a multiple of patch_size x spatial_merge_size = '
                       f'{factor}')

  def patches(self, images: Sequence[Any], image_size: int) -> np.ndarray:
    v = self.config.vision
    processor = QwenImageProcessor(patch_size=v.patch_size,
                                   temporal_patch_size=v.temporal_patch_size,
                                   merge_size=v.spatial_merge_size)
    return processor.fixed_size_patches(images, image_size)

  def positions(self, input_ids: np.ndarray, attention_mask: np.ndarray, image_valid: np.ndarray,
                image_size: int) -> np.ndarray:
    """``[B, n, 3, T]`` M-RoPE positions of prompts whose images are all ``image_size`` square
    (transformers' get_rope_index over each prompt's valid tokens)."""
    v = self.config.vision
    b, n, t = input_ids.shape
    side = image_size // v.patch_size
    grid = np.tile([[1, side, side]], (int(image_valid.sum()), 1))
    positions = rope_index(input_ids.reshape(b * n, t), attention_mask.reshape(b * n, t),
                           grid if len(grid) else None, image_token_id=self.config.image_token_id,
                           spatial_merge_size=v.spatial_merge_size)
    return np.ascontiguousarray(positions.reshape(3, b, n, t).transpose(1, 2, 0, 3))

  def apply_lora(self, tower, *, rank: int, alpha: float, rngs) -> None:
    apply_vision_lora(tower, rank=rank, alpha=alpha, rngs=rngs)


def _create(config: QwenVLConfig, *, dtype, param_dtype, rngs, remat: str | bool = 'none') -> QwenVL:
  return QwenVL(config, dtype=dtype, param_dtype=param_dtype, remat=remat, rngs=rngs)


QWEN_VL = Family(
    name='qwen-vl', read_config=QwenVLConfig.from_hf, create=_create, load=load_vl_pretrained,
    save=save_vl_pretrained, model_type=QwenVL, backbone=lambda model: model.decoder,
    text_config=lambda config: config.text, tower=lambda model: model.visual,
    images=QwenVLImages)

# `architectures` name -> family, for the table in decomp.models.families.
ARCHITECTURES = {name: QWEN_VL for name in VL_ARCHITECTURES.values()}
