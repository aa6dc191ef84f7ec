"""A Qwen2.5-VL reranker training step: decomp's engine step vs transformers/PyTorch.

  python -m benchmarks.vl_step [--groups 2] [--docs 4] [--length 128] [--repeats 8]

Same random weights on both sides (a transformers ``Qwen2_5_VLForConditionalGeneration`` saved
and loaded by ``decomp.models``): LM hidden 256, 4 layers, 4 heads (2 kv), MLP 768, vocabulary
4096; vision tower 4 layers, width 128, 4 heads, patch 14, merge 2, 112 px windows with block 3
full; each document one 112 x 112 image (64 patches, 16 visual tokens) in a prompt of
``--length`` tokens, left padded. One update = forward, SFT loss on the yes/no logits at the last
position, backward, AdamW, every weight trained (vision tower included).

- torch: ``model(input_ids, attention_mask, pixel_values, image_grid_thw, logits_to_keep=1)``,
  the loss, ``backward``, ``AdamW.step`` (its usual recipe, eager attention; torch's default
  threads).
- decomp: the training engine's own step (``decomp.train.step.make_train_step`` with the SFT
  objective, its diagnostics and logged norms included) on the engine's batch layout (pixel
  patches ``[B, n, 1, 64, 1176]``, M-RoPE positions from the data).

The two losses are compared before timing; then the sides alternate (``time_alternating``).
Memory: XLA's temporary buffers of the compiled step, and for torch the bytes autograd saves for
backward (its activation memory), both besides the weights and optimizer state. Not a test:
prints one table row (JSON with --json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

VOCAB, IMAGE, VIDEO, START, END = 4096, 4000, 4001, 4002, 4003
YES_ID, NO_ID = 17, 23
IMAGE_PX, PATCH, MERGE, TEMPORAL = 112, 14, 2, 2


def make_torch_model(seed: int = 0):
  import torch
  from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
  config = Qwen2_5_VLConfig(
      text_config=dict(vocab_size=VOCAB, hidden_size=256, intermediate_size=768,
                       num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=2048, rms_norm_eps=1e-6,
                       rope_parameters={'rope_type': 'default', 'rope_theta': 1e6,
                                        'mrope_section': [8, 12, 12]}),
      vision_config=dict(depth=4, hidden_size=128, intermediate_size=256, num_heads=4,
                         out_hidden_size=256, patch_size=PATCH, temporal_patch_size=TEMPORAL,
                         spatial_merge_size=MERGE, window_size=IMAGE_PX,
                         fullatt_block_indexes=[3], in_channels=3),
      image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START,
      vision_end_token_id=END, tie_word_embeddings=False)
  config._attn_implementation = 'eager'
  torch.manual_seed(seed)
  return Qwen2_5_VLForConditionalGeneration(config)


def make_batch(groups: int, docs: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
  """The engine's batch: [B, n, T] left-padded prompts, each with one image block."""
  from decomp.models.qwen_vl.mrope import rope_index
  rng = np.random.default_rng(seed)
  tokens = (IMAGE_PX // PATCH) ** 2 // MERGE ** 2
  patches = (IMAGE_PX // PATCH) ** 2
  b, n, t = groups, docs, length
  ids = np.zeros((b, n, t), np.int32)
  mask = np.zeros((b, n, t), np.int32)
  for i in range(b):
    for j in range(n):
      text = t - tokens - 2 - int(rng.integers(0, 8))  # a few tokens of left padding
      before = text // 3
      row = (list(rng.integers(30, 3900, before)) + [START] + [IMAGE] * tokens + [END]
             + list(rng.integers(30, 3900, text - before)))
      ids[i, j, t - len(row):], mask[i, j, t - len(row):] = row, 1
  grid = np.tile([[1, IMAGE_PX // PATCH, IMAGE_PX // PATCH]], (b * n, 1))
  positions = rope_index(ids.reshape(b * n, t), mask.reshape(b * n, t), grid,
                         image_token_id=IMAGE, spatial_merge_size=MERGE)
  labels = np.zeros((b, n), np.int32)
  labels[:, 0] = 1
  pixels = rng.normal(size=(b, n, 1, patches, 3 * TEMPORAL * PATCH * PATCH)).astype(np.float32)
  return {'input_ids': ids, 'attention_mask': mask, 'pixel_values': pixels,
          'image_valid': np.ones((b, n, 1), bool),
          'positions': positions.reshape(3, b, n, t).transpose(1, 2, 0, 3).copy(),
          'labels': labels, 'where': np.ones((b, n), bool)}


def torch_step_fn(model, batch):
  """(step, saved_bytes): one AdamW update as a PyTorch reranker trains, and the bytes autograd
  saves for backward in one forward."""
  import torch
  from benchmarks.common import LEARNING_RATE, torch_sft_loss
  b, n, t = batch['input_ids'].shape
  ids = torch.from_numpy(batch['input_ids'].reshape(b * n, t).astype(np.int64))
  mask = torch.from_numpy(batch['attention_mask'].reshape(b * n, t).astype(np.int64))
  pixels = torch.from_numpy(batch['pixel_values'].reshape(-1, batch['pixel_values'].shape[-1]))
  grid = torch.tensor([[1, IMAGE_PX // PATCH, IMAGE_PX // PATCH]] * (b * n))
  # What the processor returns beside the ids; transformers 5.x finds the images' M-RoPE
  # positions through it (without it every position is 1-D).
  token_types = (ids == IMAGE).long()
  labels = torch.from_numpy(batch['labels'])
  opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)

  def loss_of():
    logits = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, image_grid_thw=grid,
                   mm_token_type_ids=token_types, use_cache=False,
                   logits_to_keep=1).logits[:, -1]
    return torch_sft_loss(logits[:, YES_ID].float().reshape(b, n),
                          logits[:, NO_ID].float().reshape(b, n), labels)

  def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_of()
    loss.backward()
    opt.step()
    return float(loss.detach())

  seen, total = set(), [0]

  def pack(x):
    key = (x.untyped_storage().data_ptr(), x.untyped_storage().nbytes())
    if key not in seen:
      seen.add(key)
      total[0] += key[1]
    return x

  with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
    loss = loss_of()
  first_loss = float(loss.detach())
  del loss
  model.zero_grad(set_to_none=True)
  return step, total[0], first_loss


def decomp_step_fn(path: str, batch):
  """The engine's compiled step on the checkpoint at ``path`` -> (run, temp_mb, first_loss)."""
  import jax
  from flax import nnx

  from benchmarks.common import LEARNING_RATE, _compiled
  from decomp.models.build import RerankerSpec, build_reranker
  from decomp.models.families import read_checkpoint
  from decomp.objectives import resolve_objective
  from decomp.train import step as step_lib
  _, vl = read_checkpoint(path)
  model = build_reranker(RerankerSpec(decoder=vl.text, label_ids=(YES_ID, NO_ID),
                                      family_config=vl, checkpoint=path))
  graphdef, params, frozen = nnx.split(model, nnx.Param, ...)
  tx, schedule = step_lib.make_optimizer(peak=LEARNING_RATE, steps=1000, warmup_steps=0,
                                         end_factor=1.0, weight_decay=0.0, b1=0.9, b2=0.999,
                                         clip_norm=0.0)
  fn = step_lib.make_train_step(graphdef, tx, schedule, resolve_objective('sft'))
  opt_state = tx.init(params)
  dbatch = jax.device_put(batch)
  step = jax.numpy.zeros((), jax.numpy.int32)

  def update(params, opt_state, batch):
    return fn(params, frozen, opt_state, step, batch)

  compiled, compile_s, memory, _ = _compiled(update, (params, opt_state, dbatch))
  state = [params, opt_state]
  first = {}

  def run():
    state[0], state[1], metrics = compiled(state[0], state[1], dbatch)
    first.setdefault('loss', metrics['scalars']['loss'])
    return metrics['scalars']['loss']

  return run, memory.get('temp_mb'), compile_s, first


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser()
  parser.add_argument('--groups', type=int, default=2)
  parser.add_argument('--docs', type=int, default=4)
  parser.add_argument('--length', type=int, default=128)
  parser.add_argument('--repeats', type=int, default=8)
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args(argv)
  import jax

  from benchmarks.common import paired_ratio, time_alternating
  batch = make_batch(args.groups, args.docs, args.length)
  torch_model = make_torch_model()
  with tempfile.TemporaryDirectory() as path:
    torch_model.save_pretrained(path)
    decomp_run, temp_mb, compile_s, first = decomp_step_fn(path, batch)
  torch_run, saved_bytes, torch_loss = torch_step_fn(torch_model, batch)
  ours = float(jax.device_get(decomp_run()))
  if not np.isclose(ours, torch_loss, rtol=1e-4, atol=1e-5):
    raise SystemExit(f'losses differ before any update: decomp {ours} vs torch {torch_loss}')
  timing = time_alternating({'decomp': lambda: decomp_run(), 'torch': torch_run}, warmup=2,
                            repeats=args.repeats, sync=jax.block_until_ready)
  row = {'shape': f'{args.groups} x {args.docs} x {args.length}, one 112px image per document',
         'loss_decomp': ours, 'loss_torch': torch_loss,
         'decomp_s': timing['decomp']['median_s'], 'torch_s': timing['torch']['median_s'],
         'speedup': paired_ratio(timing, 'torch', 'decomp'), 'decomp_compile_s': compile_s,
         'decomp_temp_mb': temp_mb, 'torch_saved_for_backward_mb': saved_bytes / 2**20}
  if args.json:
    print(json.dumps(row))
  else:
    print('| shape | decomp step s | torch step s | speedup (paired median) | decomp XLA temp MB '
          '| torch saved-for-backward MB |')
    print('|---|---|---|---|---|---|')
    print(f"| {row['shape']} | {row['decomp_s']:.3f} | {row['torch_s']:.3f} | "
          f"{row['speedup']:.2f}x | {row['decomp_temp_mb']:.0f} | "
          f"{row['torch_saved_for_backward_mb']:.0f} |")
  return row


if __name__ == '__main__':
  main()
