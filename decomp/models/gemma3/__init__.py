"""Gemma 3 text (`Gemma3ForCausalLM`): the config (:mod:`.config`), the NNX model
(:mod:`.model`) and checkpoints + family record (:mod:`.family`)."""

from decomp.models.gemma3.config import Gemma3TextConfig
from decomp.models.gemma3.family import load_pretrained, save_pretrained
from decomp.models.gemma3.model import Gemma3

__all__ = ['Gemma3', 'Gemma3TextConfig', 'load_pretrained', 'save_pretrained']
