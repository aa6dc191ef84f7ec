"""Training configuration: one dataclass, named presets, files, ``key=value`` overrides, checks.

A run is fully described by a :class:`TrainConfig`; ``train(config, workdir)`` writes it to
``workdir/config.json`` so that a later command (resume, figures, evaluation) can read it back with
:func:`from_file`.

>>> cfg = get_config('playground_quick')
>>> cfg = apply_overrides(cfg, ['steps=3', 'weight=cl', 'mesh.data=2'])
>>> (cfg.steps, cfg.weight, cfg.mesh, make_objective(cfg).name)
(3, 'cl', {'data': 2, 'model': 1}, 'w_cl-d_sft')
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import hashlib
import importlib.util
import json
import os
import typing
from typing import Any, Callable, Mapping, Sequence

from decomp import _params
from decomp import objectives as objectives_lib
from decomp.readout import LABEL_HEADS, LABEL_POOLINGS

LAYOUTS = ('data', 'fsdp', 'tensor')
FINETUNE_MODES = ('lora', 'full', 'head')
DTYPES = ('float32', 'bfloat16', 'float16')


@dataclasses.dataclass
class TrainConfig:
  """Every knob of a training run, one field per knob, grouped by section: model, what is
  trained, objective, data, optimiser, numerics and parallelism, logging/evaluation/checkpoints.

  The objective fields take registered names or import paths (``'package.module:attribute'``);
  ``config.json`` records a name registered in code by its import path, so a workdir re-launches
  itself in a fresh process.
  """

  name: str = 'custom'  # preset this config came from (informational)

  # --- model -------------------------------------------------------------------------------------
  model: str = 'playground'  # 'playground' (cached pretrained base), 'random' or an HF-layout dir
  tokenizer: str = ''  # tokenizer dir; '' = the model dir, or the playground tokenizer
  hidden_size: int = 128  # decoder width ('playground'/'random' models only)
  num_layers: int = 4  # decoder layers
  num_heads: int = 4  # attention heads
  num_kv_heads: int = 2  # key/value heads (grouped-query attention)
  intermediate_size: int = 384  # MLP width
  # Read images with a ViT + projector: 'auto' = yes for 'playground'/'random' models and for
  # checkpoints that carry a vision tower, no for text checkpoints; true adds a fresh one.
  vision: Any = 'auto'
  vision_hidden_size: int = 64  # ViT width
  vision_layers: int = 2  # ViT layers
  vision_heads: int = 4  # ViT heads
  image_size: int = 32  # images are resized to image_size x image_size
  patch_size: int = 16  # ViT patch size; image_tokens = (image_size / patch_size) ** 2
  pretrain_steps: int = 300  # steps of the base-checkpoint recipe ('playground' model)
  pretrain_learning_rate: float = 3e-3  # peak learning rate of the base-checkpoint recipe
  pretrain_batch_size: int = 32  # sequences per pre-training step
  # Yes/no questions about one attribute of a described scene, per pre-training group (half of
  # them true): '<description> . Does it match <value> ? yes'. They teach the base the label
  # words as content-dependent answers, as an LLM knows them; 0 (default): the base never sees
  # the label words, and their LM-head rows stay nearly parallel.
  pretrain_qa_per_group: int = 0
  # Image-text matching questions per pre-training group (half of them true; BLIP's ITM in
  # words): an image and a caption, two descriptions, or an image with an edit and a caption,
  # each asked as '{query} . {document} . Does it match ? yes|no' (the 'playground' prompt
  # preset), the loss on the answer alone (pretrain.matching_items).
  pretrain_match_per_group: int = 0
  # How matching questions are written: 'words' (the preset above) or 'chat', decomp's default
  # layout (system instruction, user turn 'Query: ... Document: ...', the answer after the
  # assistant tag) with a generic instruction (pretrain.MATCH_INSTRUCTION): the chat tuning a
  # VLM brings.
  pretrain_match_format: str = 'words'
  # The scenes of the questions answered "no": 'group', the training group's negatives (half
  # of them one or two attributes away); 'random', its random negatives only, which differ in
  # several attributes: the coarse signal a small base learns image-text matching from.
  pretrain_match_negatives: str = 'group'
  # Steps of the vision tower's own pre-training before the LM stage (naming each attribute of
  # rendered scenes; pretrain.pretrain_tower): the supervised tower a VLM starts from. 0: none.
  pretrain_vision_steps: int = 0
  # Keep the ViT and projector fixed during the LM stage (LLaVA keeps its vision encoder frozen):
  # trained jointly with a fresh LM, they collapse every image to one large constant token
  # (0.3% spread between images; the caption loss then ignores the image), see
  # docs/calibration.md. With a pre-trained tower the LM learns to read the images instead.
  pretrain_freeze_vision: bool = False
  label_words: tuple[str, ...] = ('yes', 'no')  # answer tokens read at the last position
  # The prompt: '' = decomp's template (the tokenizer's chat template around "Query: ...
  # Document: ..."); a reranker preset of decomp.models.presets ('qwen3-reranker',
  # 'monoqwen2-vl', 'gmr') renders the real model's own prompt and brings its label words.
  prompt: str = ''
  # 'first': z_y, z_n are the first two words' logits; 'pairs': the words alternate positive,
  # negative (yes, no, true, false, ...) and each side is the log-sum-exp of its words' logits.
  label_pooling: str = 'first'
  # 'lm_head': the label words' LM-head rows score every document; 'random': a fresh learnable
  # K x d matrix replaces them in the scores, weights, directions and ranking (the paper's D_Rand).
  label_head: str = 'lm_head'

  # --- what is trained ----------------------------------------------------------------------------
  # 'lora' (adapters), 'full' (all weights) or 'head' (LM head only). The playground base is
  # tiny (1M parameters): full fine-tuning learned a little faster in the calibration runs.
  finetune: str = 'full'
  lora_rank: int = 16  # LoRA rank
  lora_alpha: float = 32.0  # LoRA scale numerator (scale = alpha / rank)
  lora_targets: tuple[str, ...] = ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj',
                                   'down_proj')  # adapted projections
  lora_vision: bool = False  # with finetune=lora: adapters on a Qwen-VL vision tower too
  # finetune=head only: the frozen body's answer-position hidden states are computed once per
  # distinct prompt and kept under $DECOMP_CACHE/features (shared by every run on the same base),
  # so a head-only run costs a forward pass per new document, not per step (decomp/train/features.py).
  cache_features: bool = False
  train_lm_head: bool = False  # also train the LM head (the paper's "unfrozen head" ablation)

  # --- objective ----------------------------------------------------------------------------------
  # The objective (decomp.OBJECTIVES name or import path): its weight, direction, logged loss,
  # ranking score and readout needs. `weight` / `direction` replace its parts (a hybrid).
  objective: str = 'sft'
  weight: str = ''  # weight W (decomp.weights.WEIGHTS name or import path); '' = the objective's
  direction: str = ''  # direction D (decomp.directions.DIRECTIONS name or import path)
  weight_kwargs: dict = dataclasses.field(default_factory=dict)  # e.g. {'tau': 0.1} for tau_mask
  direction_kwargs: dict = dataclasses.field(default_factory=dict)  # extra direction arguments
  temperature: float = 1.0  # InfoNCE temperature for the CL weight / score

  # --- data ---------------------------------------------------------------------------------------
  data: str = 'playground'  # 'playground' or a directory of MRB-style JSONL
  # PlaygroundConfig overrides. The calibrated default probe reranks text (T->T) and is tested
  # on 2048 queries: with 256, the test set's own sampling noise (~1.5 points NDCG@10 x 100)
  # was as large as the seed spread. Image task families need longer budgets (docs/calibration.md).
  playground: dict = dataclasses.field(
      default_factory=lambda: {'tasks': ['t2t'], 'num_eval_queries': 2048})
  # Distinct training groups shared by every seed (0: the playground's unbounded stream, where
  # each seed reads its own stretch; JSONL data: the whole train file). With a pool, seeds differ
  # only in the order they visit it (a fresh permutation per epoch), as on a fixed dataset.
  train_pool: int = 0
  negatives: int = 4  # negatives per training group (list size = 1 + negatives)
  batch_size: int = 16  # groups per step (global, over all hosts)
  # Documents per chunk of the exact two-pass step (decomp.chunked): a forward over every
  # document without activations, the list's weights, then one chunk's forward + backward at a
  # time, so memory holds one chunk. 0: the whole list at once (one pass).
  doc_chunk: int = 0
  # Micro-batches of groups per step, their gradients accumulated with the whole batch's list
  # normaliser (equal to the one large batch). 1: none.
  accumulate_steps: int = 1
  max_length: int = 64  # tokens per prompt (image placeholders included); fixed batch shape
  # Bucket lengths: each batch is padded to the smallest that holds its longest prompt, so mixed
  # lengths do not all pay for the longest (a compiled shape per bucket). () = max_length always.
  length_buckets: tuple[int, ...] = ()
  eval_groups: int = 256  # validation groups per periodic evaluation (0 = the whole split)
  test_groups: int = 0  # test groups of the final evaluation (0 = the whole split)
  eval_list_size: int = 0  # candidates per evaluation query (0 = all the split provides)
  eval_batch_size: int = 16  # groups per evaluation forward pass

  # --- optimiser ----------------------------------------------------------------------------------
  steps: int = 200  # optimiser steps
  learning_rate: float = 1e-3  # peak learning rate (AdamW)
  warmup_steps: int = 10  # linear warm-up steps
  end_learning_rate_factor: float = 0.1  # cosine decays to peak * this factor
  weight_decay: float = 0.0  # AdamW decoupled weight decay
  b1: float = 0.9  # AdamW beta1
  b2: float = 0.999  # AdamW beta2
  clip_norm: float = 1.0  # global gradient-norm clip (0 = off)

  # --- numerics and parallelism -------------------------------------------------------------------
  dtype: str = 'float32'  # activation dtype
  param_dtype: str = 'float32'  # parameter dtype
  mesh: dict = dataclasses.field(default_factory=lambda: {'data': -1, 'model': 1})  # axis -> size
  layout: str = 'data'  # 'data' (replicated params), 'fsdp' (params sharded over 'data'), 'tensor'
  axis_rules: dict = dataclasses.field(default_factory=dict)  # logical name -> mesh axis, on top
  #   of the layout's rules, e.g. {"embed": "data", "vision_embed": null}
  num_devices: int = 0  # use the first num_devices devices (0 = all)
  seed: int = 0  # the run's seed: adapter/head init and the order of training groups
  base_seed: int = 0  # seed of the pretrained base (shared by every run's seed, as in the paper)

  # --- logging, evaluation, checkpoints -----------------------------------------------------------
  log_every: int = 1  # steps between lines of steps.jsonl (the 3 global norms run only on those)
  example_log_every: int = 10  # steps between per-example log rows (0 = off)
  example_grad_norms: bool = False  # exact per-example parameter-gradient norms (small models)
  eval_every: int = 50  # steps between validation evaluations (0 = none)
  final_eval: bool = True  # evaluate on the test split at the end (results.json)
  eval_score: str = 'auto'  # ranking score: 'sft' (P(yes)), 'cl' (z_y), 'auto' (the objective's)
  checkpoint_every: int = 100  # steps between checkpoints (0 = only the last step)
  keep_checkpoints: int = 2  # checkpoints kept on disk
  quiet: bool = False  # no progress bar (CI)
  # A non-finite loss, gradient or parameter: 'error' stops the run (named error, last good
  # checkpoint kept, no results.json); 'skip_step' keeps the old state and counts the step.
  on_nonfinite: str = 'error'

  @property
  def list_size(self) -> int:
    """Documents per training group: one positive and ``negatives`` negatives."""
    return 1 + self.negatives


def playground() -> TrainConfig:
  """The built-in CPU config: the pretrained playground reranker, fully fine-tuned with SFT on
  the T->T playground (calibrated: ~0.5 s/step on one core, test NDCG@10 0.6-0.7 at 200 steps)."""
  return TrainConfig(name='playground')


def playground_quick() -> TrainConfig:
  """A shrunk playground run for tests and smoke runs: seconds per hundred steps on CPU."""
  return TrainConfig(
      name='playground_quick', model='random', hidden_size=32, num_layers=2, num_heads=2,
      num_kv_heads=1, intermediate_size=64, vision_hidden_size=32, vision_layers=1,
      vision_heads=2, image_size=16, patch_size=8, pretrain_steps=50, finetune='full',
      negatives=3, batch_size=8, max_length=64, eval_groups=16, test_groups=16, eval_batch_size=8,
      steps=20, learning_rate=3e-3, warmup_steps=2, log_every=1, example_log_every=5,
      eval_every=10, checkpoint_every=10,
      playground={})  # every task family (images included): the smoke runs exercise all paths


# The multimodal main job's base: the tower pre-trained, then frozen while the LM learns the
# captions and 32 matching questions per group (random negatives) in 3000 steps (~7.5 min on one
# core). Jointly trained, the ViT and projector collapse every image to one token; with
# hard negatives in the questions, or fewer steps, image matching stays near chance
# (docs/calibration.md, "Image families").
MULTIMODAL_BASE = dict(pretrain_vision_steps=1000, pretrain_freeze_vision=True,
                       pretrain_match_per_group=32, pretrain_match_negatives='random',
                       pretrain_steps=3000)


def playground_multimodal() -> TrainConfig:
  """The main job (``make demo``): T->T, T->I, I->T and IT->IT on the playground, the LM head
  trained on the frozen features of a base that reads its images (:data:`MULTIMODAL_BASE`),
  each prompt the base's own matching question (the 'playground' prompt preset); 1024 test
  queries per family."""
  return dataclasses.replace(
      playground(), name='playground_multimodal', finetune='head', cache_features=True,
      prompt='playground', **MULTIMODAL_BASE,
      playground={'tasks': ['t2t', 't2i', 'i2t', 'it2it'], 'num_eval_queries': 1024})


NAMED_CONFIGS: dict[str, Callable[[], TrainConfig]] = {
    'playground': playground,
    'playground_quick': playground_quick,
    'playground_multimodal': playground_multimodal,
}


def from_file(path: str) -> TrainConfig:
  """Reads a config from a ``.json`` (e.g. a workdir's ``config.json``) or a ``.py`` file.

  A ``.py`` file must define ``get_config()`` returning a :class:`TrainConfig` (or a dict of
  fields).
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'config file {path!r} does not exist')
  if path.endswith('.json'):
    with open(path) as f:
      try:
        data = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f'config file {path!r} is not valid JSON: {e}') from None
    return from_dict(data, source=path)
  if path.endswith('.py'):
    spec = importlib.util.spec_from_file_location('_decomp_user_config', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, 'get_config'):
      raise ValueError(f'config file {path!r} defines no get_config()')
    cfg = module.get_config()
    if isinstance(cfg, Mapping):
      cfg = from_dict(cfg, source=path)
    if not isinstance(cfg, TrainConfig):
      raise TypeError(f'{path}: get_config() returned {type(cfg).__name__}, not a TrainConfig')
    return cfg
  raise ValueError(f'config file {path!r}: expected a .json or .py file')


def get_config(name_or_file: str = 'playground') -> TrainConfig:
  """A named preset (``playground``, ``playground_quick``) or a config file."""
  if name_or_file in NAMED_CONFIGS:
    return NAMED_CONFIGS[name_or_file]()
  if name_or_file.endswith(('.py', '.json')):
    return from_file(name_or_file)
  raise ValueError(
      f'unknown config {name_or_file!r}: expected one of {sorted(NAMED_CONFIGS)} or a .py/.json '
      'file')


def _field_types() -> dict[str, Any]:
  return typing.get_type_hints(TrainConfig)


def _unknown_key_error(key: str, source: str) -> KeyError:
  names = [f.name for f in dataclasses.fields(TrainConfig)]
  close = difflib.get_close_matches(key, names, n=3)
  hint = f'; did you mean {", ".join(close)}?' if close else ''
  return KeyError(f'{source}: unknown config key {key!r}{hint}')


def from_dict(data: Mapping[str, Any], *, source: str = 'config') -> TrainConfig:
  """Builds a config from a mapping (as written to ``config.json``); unknown keys are errors."""
  types = _field_types()
  kwargs = {}
  for key, value in data.items():
    if key not in types:
      raise _unknown_key_error(key, source)
    if isinstance(value, list):
      value = tuple(value)
    kwargs[key] = value
  return TrainConfig(**kwargs)


OBJECTIVE_FIELDS = ('objective', 'weight', 'direction')


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
  """JSON-able dict of the config. Objective fields are recorded portably: a name registered in
  code (or an objective object) by its import path, so another process resolves it."""
  out = {}
  for f in dataclasses.fields(cfg):
    value = getattr(cfg, f.name)
    if f.name in OBJECTIVE_FIELDS and value != '':
      value = objectives_lib.portable_name(f.name, value)
    elif isinstance(value, tuple):
      value = list(value)
    out[f.name] = value
  return out


def canonical_dict(config: TrainConfig | Mapping[str, Any]) -> dict[str, Any]:
  """The config as written to ``config.json``, with every field present: a dict read from a run
  written before a field existed gets that field's default, so configs of different code ages
  compare equal when they train the same run."""
  cfg = from_dict(config) if isinstance(config, Mapping) else config
  return json.loads(json.dumps(to_dict(cfg)))


def config_hash(data: Mapping[str, Any]) -> str:
  """Short stable hash of a JSON-able mapping (cache keys)."""
  blob = json.dumps(data, sort_keys=True, default=str).encode()
  return hashlib.sha256(blob).hexdigest()[:16]


def _coerce(key: str, text: str, current: Any, annotation: Any) -> Any:
  """Parses ``text`` into the type of the field (or of its current value)."""
  def bad(kind):
    return ValueError(f'config key {key!r}: cannot read {text!r} as {kind}')
  if annotation is Any and text.strip().lower() in ('true', 'false'):
    return text.strip().lower() == 'true'  # a tri-state field ('auto', true, false)
  if isinstance(current, bool) or annotation is bool:
    lowered = text.strip().lower()
    if lowered in ('1', 'true', 'yes', 'on'):
      return True
    if lowered in ('0', 'false', 'no', 'off'):
      return False
    raise bad('a boolean')
  if isinstance(current, int) or annotation is int:
    try:
      return int(text)
    except ValueError:
      raise bad('an integer') from None
  if isinstance(current, float) or annotation is float:
    try:
      return float(text)
    except ValueError:
      raise bad('a number') from None
  if isinstance(current, (tuple, list)):
    text = text.strip()
    if text.startswith(('[', '(')):
      try:
        value = ast.literal_eval(text)
      except (ValueError, SyntaxError):
        raise bad('a list') from None
      return tuple(value)
    return tuple(part.strip() for part in text.split(',') if part.strip())
  if isinstance(current, dict):
    try:
      value = json.loads(text)
    except json.JSONDecodeError:
      raise bad('a JSON object') from None
    if not isinstance(value, dict):
      raise bad('a JSON object')
    return value
  return text  # str fields and objective names


def _literal(text: str) -> Any:
  """Value inside a dict field (``mesh.data=4``): a Python/JSON literal, else the raw string."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    lowered = text.lower()
    if lowered in ('true', 'false'):
      return lowered == 'true'
    return text


def apply_overrides(cfg: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
  """Returns a copy of ``cfg`` with ``key=value`` overrides applied.

  Values are parsed to the field's type; dict fields take JSON (``mesh={"data": 4}``) or a dotted
  key (``mesh.data=4``, ``weight_kwargs.tau=0.1``); tuple fields take ``a,b`` or a list literal.
  """
  types = _field_types()
  changes: dict[str, Any] = {}
  for item in overrides:
    if '=' not in item:
      raise ValueError(f'override {item!r} is not of the form key=value')
    key, text = item.split('=', 1)
    key = key.strip()
    field_name, _, sub = key.partition('.')
    if field_name not in types:
      raise _unknown_key_error(field_name, 'override')
    current = changes.get(field_name, getattr(cfg, field_name))
    if sub:
      if not isinstance(current, dict):
        raise ValueError(f'override {item!r}: {field_name!r} is not a dict field')
      value = dict(current)
      value[sub] = _literal(text)
    else:
      value = _coerce(field_name, text, current, types[field_name])
    changes[field_name] = value
  return dataclasses.replace(cfg, **changes)


def label_words(cfg: TrainConfig) -> tuple[str, ...]:
  """The label words the reranker reads: the prompt preset's, else ``cfg.label_words``."""
  if cfg.prompt:
    from decomp.models.presets import get_preset
    return tuple(get_preset(cfg.prompt).label_words)
  return tuple(cfg.label_words)


def make_objective(cfg: TrainConfig) -> objectives_lib.Objective:
  """The :class:`~decomp.Objective` of a config: ``objective`` with its parts replaced by
  ``weight`` / ``direction`` when given, and parameters bound.

  ``temperature`` is bound to the weight when it takes one (``cl``, ``cl_rescaled``);
  ``weight_kwargs`` / ``direction_kwargs`` must all be accepted.
  """
  try:
    base = objectives_lib.resolve_objective(cfg.objective)
    objective = base.with_parts(weight=cfg.weight or None, direction=cfg.direction or None)
    # The config's temperature reaches a weight that takes one, unless the weight binds its own.
    weight_params = {} if 'temperature' in objective.weight.params else _params.accepted(
        objective.weight.fn, {'temperature': cfg.temperature})
    weight_params.update(cfg.weight_kwargs)
    return objective.with_parts(weight_params=weight_params,
                                direction_params=cfg.direction_kwargs)
  except (ValueError, TypeError) as e:
    raise ValueError(f'config objective={cfg.objective!r} (weight={cfg.weight!r}, '
                     f'direction={cfg.direction!r}): {e}') from None


def validate(cfg: TrainConfig, *, num_devices: int | None = None,
             max_negatives: int | None = None, num_processes: int = 1) -> None:
  """Checks a config before any compute; raises ValueError naming the bad key.

  Args:
    num_devices: global device count (checks the mesh and the batch split).
    max_negatives: negatives the data offers per training group (checks ``negatives``).
    num_processes: processes of a multi-host run (the batch must split over them).
  """
  def bad(key, message):
    raise ValueError(f'config {key}={getattr(cfg, key)!r}: {message}')

  objective = make_objective(cfg)
  if not objective.has_loss:
    bad('objective', f'{objective.name!r} has no loss to log as `loss`: give its weight one '
                     '(decomp.Weight(fn, loss=...)) or the objective (decomp.Objective(..., '
                     'loss=...))')
  for key in ('steps', 'batch_size', 'max_length', 'eval_batch_size', 'keep_checkpoints'):
    if not isinstance(getattr(cfg, key), int) or getattr(cfg, key) < 1:
      bad(key, 'must be a positive integer')
  for key in ('num_devices', 'log_every', 'example_log_every', 'eval_every', 'checkpoint_every',
              'warmup_steps', 'eval_groups', 'test_groups', 'eval_list_size', 'pretrain_steps'):
    if not isinstance(getattr(cfg, key), int) or getattr(cfg, key) < 0:
      bad(key, 'must be a non-negative integer')
  if not isinstance(cfg.negatives, int) or cfg.negatives < 1:
    bad('negatives', 'needs at least one negative per group')
  if max_negatives is not None and cfg.negatives > max_negatives:
    bad('negatives', f'the data offers only {max_negatives} negatives per group')
  if not isinstance(cfg.doc_chunk, int) or isinstance(cfg.doc_chunk, bool) or not (
      0 <= cfg.doc_chunk <= cfg.list_size):
    bad('doc_chunk', f'expected 0 (the whole list at once) or 1..{cfg.list_size} (documents per '
                     f'chunk of a list of 1 + negatives={cfg.negatives})')
  if (not isinstance(cfg.accumulate_steps, int) or isinstance(cfg.accumulate_steps, bool)
      or cfg.accumulate_steps < 1 or cfg.batch_size % cfg.accumulate_steps):
    divisors = [d for d in range(1, cfg.batch_size + 1) if cfg.batch_size % d == 0]
    bad('accumulate_steps', f'expected a divisor of batch_size={cfg.batch_size}: {divisors}')
  if cfg.length_buckets:
    if any(not isinstance(b, int) or b < 1 for b in cfg.length_buckets):
      bad('length_buckets', 'must be positive integers')
    if max(cfg.length_buckets) < cfg.max_length:
      bad('length_buckets', f'the longest bucket must hold max_length={cfg.max_length} '
                            '(a prompt is truncated to max_length, then padded to a bucket)')
    if num_processes > 1:
      bad('length_buckets', 'pads each process\'s rows to their own bucket: use it with one '
                            'process (the processes of a multi-host run must agree on shapes)')
  if cfg.learning_rate <= 0:
    bad('learning_rate', 'must be positive')
  if cfg.temperature <= 0:
    bad('temperature', 'must be positive')
  if cfg.clip_norm < 0:
    bad('clip_norm', 'must be >= 0 (0 = no clipping)')
  if cfg.finetune not in FINETUNE_MODES:
    bad('finetune', f'expected one of {FINETUNE_MODES}')
  if cfg.finetune == 'lora' and cfg.lora_rank < 1:
    bad('lora_rank', 'must be >= 1')
  if cfg.layout not in LAYOUTS:
    bad('layout', f'expected one of {LAYOUTS}')
  for name, axes in cfg.axis_rules.items():
    axes = (axes,) if isinstance(axes, str) or axes is None else tuple(axes)
    unknown = [a for a in axes if a is not None and a not in cfg.mesh]
    if unknown:
      bad('axis_rules', f'logical name {name!r} maps to {unknown}, not axes of mesh {cfg.mesh}')
  for key in ('dtype', 'param_dtype'):
    if getattr(cfg, key) not in DTYPES:
      bad(key, f'expected one of {DTYPES}')
  if cfg.eval_score != 'auto' and cfg.eval_score not in objectives_lib.RANK_SCORES:
    bad('eval_score', f"expected 'auto' or one of {sorted(objectives_lib.RANK_SCORES)}")
  if cfg.vision not in ('auto', True, False):
    bad('vision', "expected 'auto', true or false")
  if cfg.train_pool < 0:
    bad('train_pool', 'must be >= 0 (0 = the unbounded stream)')
  if cfg.pretrain_qa_per_group < 0:
    bad('pretrain_qa_per_group', 'must be >= 0')
  if cfg.pretrain_match_per_group < 0:
    bad('pretrain_match_per_group', 'must be >= 0')
  if cfg.pretrain_vision_steps < 0:
    bad('pretrain_vision_steps', 'must be >= 0')
  if cfg.pretrain_match_negatives not in ('group', 'random'):
    bad('pretrain_match_negatives', "expected 'group' or 'random'")
  if cfg.pretrain_match_format not in ('words', 'chat'):
    bad('pretrain_match_format', "expected 'words' or 'chat'")
  if not isinstance(cfg.pretrain_freeze_vision, bool):
    bad('pretrain_freeze_vision', 'expected true or false')
  if len(cfg.label_words) < 2:
    bad('label_words', 'needs at least the yes and the no word')
  if cfg.cache_features and cfg.finetune != 'head':
    bad('cache_features', f'needs finetune=head (with finetune={cfg.finetune!r} the body trains, '
                          'so its hidden states change every step)')
  if cfg.cache_features and num_processes > 1:
    bad('cache_features', 'is single-process (each host would keep its own cache)')
  if cfg.prompt:
    from decomp.models.presets import PRESETS
    if cfg.prompt not in PRESETS:
      bad('prompt', f"expected '' (decomp's template) or a reranker preset {sorted(PRESETS)}")
    elif tuple(cfg.label_words) not in (TrainConfig.label_words, PRESETS[cfg.prompt].label_words):
      bad('label_words', f'prompt={cfg.prompt!r} reads its own label words '
                         f'{PRESETS[cfg.prompt].label_words}; leave label_words unset')
  if cfg.label_pooling not in LABEL_POOLINGS:
    bad('label_pooling', f'expected one of {LABEL_POOLINGS}')
  elif cfg.label_pooling == 'pairs' and len(cfg.label_words) % 2:
    bad('label_words', "label_pooling='pairs' needs (positive, negative) word pairs: an even "
                       f'count, got {len(cfg.label_words)}')
  if cfg.label_head not in LABEL_HEADS:
    bad('label_head', f'expected one of {LABEL_HEADS}')
  elif cfg.label_head == 'random' and 'log_normalizer' in objective.needs:
    # log p(yes) = z_y - log sum_v exp z_v needs z_y to be one of the vocabulary's logits.
    bad('label_head', f"objective {objective.name!r} reads the vocabulary log-normaliser, which "
                      "label_head='random' (no label token) does not score with")
  # A fresh ViT's patches (a checkpoint's tower has its own, checked when the model is built).
  fresh_vit = cfg.vision is True or (cfg.vision == 'auto' and cfg.model in ('random', 'playground'))
  if fresh_vit and cfg.image_size % cfg.patch_size:
    bad('image_size', f'must be a multiple of patch_size={cfg.patch_size}')
  if num_devices is not None and cfg.num_devices:
    if cfg.num_devices > num_devices:
      bad('num_devices', f'only {num_devices} devices are available')
    num_devices = cfg.num_devices
  if num_devices is not None:
    from decomp.train import mesh as mesh_lib
    try:
      sizes = mesh_lib.resolve_mesh_shape(cfg.mesh, num_devices)
    except ValueError as e:
      raise ValueError(f'config mesh={cfg.mesh!r}: {e}') from None
    split = 1
    for axis in mesh_lib.BATCH_AXES:
      split *= sizes.get(axis, 1)
    split = max(split, num_processes)
    for key in ('batch_size', 'eval_batch_size'):
      if getattr(cfg, key) % split:
        bad(key, f'must be divisible by the {split} data-parallel shards of mesh {sizes}')
    if (cfg.batch_size // max(cfg.accumulate_steps, 1)) % split:
      bad('accumulate_steps', f'each of the {cfg.accumulate_steps} micro-batches of '
                              f'batch_size={cfg.batch_size} must split over the {split} '
                              f'data-parallel shards of mesh {sizes}')
  elif num_processes > 1 and cfg.batch_size % num_processes:
    bad('batch_size', f'must be divisible by the {num_processes} processes')
