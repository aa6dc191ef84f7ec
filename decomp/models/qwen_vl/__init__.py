"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: the model (:mod:`.model`), its vision towers
(:mod:`.vision`, :mod:`.vision3`), M-RoPE (:mod:`.mrope`), the image processor (:mod:`.image`),
checkpoints (:mod:`.hf`), tower LoRA (:mod:`.lora`) and the family record (:mod:`.family`)."""

from decomp.models.qwen_vl.model import (VL_ARCHITECTURES, QwenVL, QwenVLConfig, VLInputs,
                                         prepare_inputs, vl_architecture_of)

__all__ = ['QwenVL', 'QwenVLConfig', 'VLInputs', 'VL_ARCHITECTURES', 'prepare_inputs',
           'vl_architecture_of']
