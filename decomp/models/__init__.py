"""Backbones, one package per family behind one protocol (:mod:`decomp.models.backbone`), chosen
by a checkpoint's `architectures` through one table (:mod:`decomp.models.families`); a
SigLIP/CLIP vision tower, LoRA, sharding rules, reranker presets, and the yes/no reranker built
from them.

`load_pretrained(dir)` returns the model of any architecture in SUPPORTED_ARCHITECTURES;
`save_pretrained(model, dir)` writes it back for transformers."""

from decomp.models.backbone import Backbone, Family, ImageAdapter, ImageTower
from decomp.models.families import (FAMILIES, SUPPORTED_ARCHITECTURES, load_pretrained,
                                    save_pretrained)
from decomp.models.config import DecoderConfig
from decomp.models.decoder import Decoder
from decomp.models.hf import CheckpointError, read_config
from decomp.models.lora import (LoRALinear, LoRAParam, apply_lora, has_lora, is_lm_head,
                                merge_lora, trainable_filter)
from decomp.models.build import RerankerSpec, build_reranker, make_reranker
from decomp.models.prompt import (RerankPrompt, bucket_length, encode_groups, encode_pair,
                                  encode_pairs, image_token_id, label_token_ids)
from decomp.models.qwen_vl.mrope import PatchLayout, bucket_size, patch_layout, rope_index
from decomp.models.presets import PRESETS, EncodedPrompt, RerankPreset, collate, get_preset
from decomp.models.qwen_vl.vision3 import Qwen3VisionTower
from decomp.models.qwen_vl.image import QwenImageProcessor, smart_resize
from decomp.models.qwen_vl.vision import QwenVisionConfig, QwenVisionTower
from decomp.models.qwen_vl import QwenVL, QwenVLConfig, VLInputs, prepare_inputs
from decomp.models.reranker import Reranker, load_reranker, load_tokenizer
from decomp.models.sharding import (DEFAULT_RULES, FSDP_RULES, logical_to_mesh_sharding,
                                    logical_to_partition_spec, model_shardings, shard_model)
from decomp.models.vision import (CLIP_MEAN, CLIP_STD, SIGLIP_MEAN, SIGLIP_STD, ImageEncoder,
                                  Projector, VisionConfig, VisionEncoder, image_preprocess,
                                  load_vision_pretrained)
from decomp.models.qwen_vl.lora import VISION_LORA_TARGETS, apply_vision_lora, merge_vision_lora

__all__ = [
    "Backbone", "FAMILIES", "Family", "ImageAdapter", "ImageTower",
    "CLIP_MEAN", "CLIP_STD", "CheckpointError", "DEFAULT_RULES", "Decoder", "DecoderConfig",
    "EncodedPrompt", "FSDP_RULES", "ImageEncoder", "LoRALinear", "LoRAParam", "PRESETS",
    "PatchLayout", "Projector", "Qwen3VisionTower", "QwenImageProcessor", "QwenVL", "QwenVLConfig",
    "QwenVisionConfig", "QwenVisionTower", "RerankPreset", "RerankPrompt", "Reranker", "RerankerSpec", "build_reranker",
    "make_reranker", "RerankerSpec", "build_reranker", "make_reranker",
    "SIGLIP_MEAN", "SIGLIP_STD", "SUPPORTED_ARCHITECTURES", "VISION_LORA_TARGETS", "VLInputs",
    "VisionConfig", "VisionEncoder", "apply_lora", "apply_vision_lora", "bucket_length",
    "bucket_size", "collate", "encode_groups", "encode_pair", "encode_pairs", "get_preset",
    "has_lora", "image_preprocess", "image_token_id", "is_lm_head", "label_token_ids",
    "load_pretrained", "load_reranker", "load_tokenizer", "load_vision_pretrained",
    "logical_to_mesh_sharding", "logical_to_partition_spec", "merge_lora", "merge_vision_lora",
    "model_shardings", "patch_layout", "prepare_inputs", "read_config", "rope_index",
    "save_pretrained", "shard_model", "smart_resize", "trainable_filter",
]
