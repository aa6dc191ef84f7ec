"""QwenVLConfig reads published config.json files (pre-5 layouts) as transformers 5 reads them."""

import pytest

from decomp.models.qwen_vl import QwenVLConfig

# Shaped like the published Qwen2-VL-2B-Instruct config.json (transformers 4.4x: text keys flat,
# rope_scaling {type: mrope}, vision `in_chans`, no vision hidden_act).
QWEN2_VL_2B = {
    'architectures': ['Qwen2VLForConditionalGeneration'], 'attention_dropout': 0.0,
    'bos_token_id': 151643, 'eos_token_id': 151645, 'vision_start_token_id': 151652,
    'vision_end_token_id': 151653, 'vision_token_id': 151654, 'image_token_id': 151655,
    'video_token_id': 151656, 'hidden_act': 'silu', 'hidden_size': 1536,
    'initializer_range': 0.02, 'intermediate_size': 8960, 'max_position_embeddings': 32768,
    'max_window_layers': 28, 'model_type': 'qwen2_vl', 'num_attention_heads': 12,
    'num_hidden_layers': 28, 'num_key_value_heads': 2, 'rms_norm_eps': 1e-06,
    'rope_theta': 1000000.0, 'sliding_window': 32768, 'tie_word_embeddings': True,
    'torch_dtype': 'bfloat16', 'transformers_version': '4.41.2', 'use_cache': True,
    'use_sliding_window': False,
    'vision_config': {'depth': 32, 'embed_dim': 1280, 'mlp_ratio': 4, 'num_heads': 16,
                      'in_chans': 3, 'hidden_size': 1536, 'patch_size': 14,
                      'spatial_merge_size': 2, 'spatial_patch_size': 14,
                      'temporal_patch_size': 2},
    'rope_scaling': {'type': 'mrope', 'mrope_section': [16, 24, 24]}, 'vocab_size': 151936}
# Shaped like Qwen2.5-VL-3B-Instruct's.
QWEN25_VL_3B = {
    'architectures': ['Qwen2_5_VLForConditionalGeneration'], 'attention_dropout': 0.0,
    'bos_token_id': 151643, 'eos_token_id': 151645, 'vision_start_token_id': 151652,
    'vision_end_token_id': 151653, 'vision_token_id': 151654, 'image_token_id': 151655,
    'video_token_id': 151656, 'hidden_act': 'silu', 'hidden_size': 2048,
    'initializer_range': 0.02, 'intermediate_size': 11008, 'max_position_embeddings': 128000,
    'max_window_layers': 70, 'model_type': 'qwen2_5_vl', 'num_attention_heads': 16,
    'num_hidden_layers': 36, 'num_key_value_heads': 2, 'rms_norm_eps': 1e-06,
    'rope_theta': 1000000.0, 'sliding_window': 32768, 'tie_word_embeddings': True,
    'torch_dtype': 'bfloat16', 'transformers_version': '4.41.2', 'use_cache': True,
    'use_sliding_window': False,
    'vision_config': {'depth': 32, 'hidden_act': 'silu', 'hidden_size': 1280,
                      'intermediate_size': 3420, 'num_heads': 16, 'in_chans': 3,
                      'out_hidden_size': 2048, 'patch_size': 14, 'spatial_merge_size': 2,
                      'spatial_patch_size': 14, 'window_size': 112,
                      'fullatt_block_indexes': [7, 15, 23, 31], 'tokens_per_second': 2,
                      'temporal_patch_size': 2},
    'rope_scaling': {'type': 'mrope', 'mrope_section': [16, 24, 24]}, 'vocab_size': 151936}
# Shaped like Qwen3-VL-2B-Instruct's (text_config with rope_scaling and its own tie flag).
QWEN3_VL_2B = {
    'architectures': ['Qwen3VLForConditionalGeneration'], 'image_token_id': 151655,
    'model_type': 'qwen3_vl', 'tie_word_embeddings': True, 'video_token_id': 151656,
    'vision_end_token_id': 151653, 'vision_start_token_id': 151652,
    'text_config': {'attention_bias': False, 'attention_dropout': 0.0, 'bos_token_id': 151643,
                    'dtype': 'bfloat16', 'eos_token_id': 151645, 'head_dim': 128,
                    'hidden_act': 'silu', 'hidden_size': 2048, 'initializer_range': 0.02,
                    'intermediate_size': 6144, 'max_position_embeddings': 262144,
                    'model_type': 'qwen3_vl_text', 'num_attention_heads': 16,
                    'num_hidden_layers': 28, 'num_key_value_heads': 8, 'rms_norm_eps': 1e-06,
                    'rope_scaling': {'mrope_interleaved': True, 'mrope_section': [24, 20, 20],
                                     'rope_type': 'default'},
                    'rope_theta': 5000000, 'tie_word_embeddings': True, 'use_cache': True,
                    'vocab_size': 151936},
    'vision_config': {'deepstack_visual_indexes': [5, 11, 17], 'depth': 24,
                      'hidden_act': 'gelu_pytorch_tanh', 'hidden_size': 1024,
                      'in_channels': 3, 'initializer_range': 0.02, 'intermediate_size': 4096,
                      'model_type': 'qwen3_vl', 'num_heads': 16,
                      'num_position_embeddings': 2304, 'out_hidden_size': 2048,
                      'patch_size': 16, 'spatial_merge_size': 2, 'temporal_patch_size': 2}}


@pytest.mark.parametrize('published', [QWEN2_VL_2B, QWEN25_VL_3B, QWEN3_VL_2B],
                         ids=['qwen2-vl-2b', 'qwen2.5-vl-3b', 'qwen3-vl-2b'])
def test_published_configs_read_as_transformers_reads_them(published):
  from transformers import AutoConfig
  ours = QwenVLConfig.from_hf(published)
  # transformers 5.24 converts the published layout on load; its 5.x dict gives the same config.
  theirs = AutoConfig.for_model(**published).to_dict()
  assert 'text_config' in theirs
  assert QwenVLConfig.from_hf(theirs) == ours
  # And our own 5.x dict reads back the same.
  assert QwenVLConfig.from_hf(ours.to_hf()) == ours
  t, v = ours.text, ours.vision
  assert t.tie_word_embeddings and t.vocab_size == 151936
  if published is QWEN3_VL_2B:
    assert (t.architecture, t.head_dim, t.qk_norm, t.mrope_interleaved) == ('qwen3', 128, True,
                                                                            True)
    assert t.rope_theta == 5e6 and t.mrope_section == (24, 20, 20)
    assert (v.patch_size, v.deepstack_visual_indexes, v.num_position_embeddings) == (
        16, (5, 11, 17), 2304)
  else:
    assert (t.architecture, t.attention_bias, t.rope_theta, t.mrope_section) == (
        'qwen2', True, 1e6, (16, 24, 24))
    assert v.out_hidden_size == t.hidden_size and v.patch_dim == 3 * 2 * 14 * 14
  if published is QWEN2_VL_2B:
    assert (v.hidden_size, v.intermediate_size, v.hidden_act) == (1280, 5120, 'quick_gelu')
  if published is QWEN25_VL_3B:
    assert (v.window_merged, v.fullatt_block_indexes) == (4, (7, 15, 23, 31))
