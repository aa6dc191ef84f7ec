"""Training configuration: one frozen section per lifecycle, each checking its own fields.

(Over 400 lines: the sections' field comments are the reference of every knob, kept together.)

A run is fully described by a :class:`TrainConfig`: ``model`` (a checkpoint directory or a
random shape), ``readout`` (prompt preset and label words), ``finetune`` (what trains),
``objective``, ``data``, ``optim``, ``parallel``, ``eval_log``, and ``base``, the playground
base's recipe (read only by :mod:`decomp.playground.base`, never by the engine). What a field
means for resuming a run and for re-evaluating one is metadata on the field
(:func:`free_on_resume`, :func:`free_on_evaluation`), read in one place.

Overrides (:mod:`decomp.train.overrides`) take full paths (``optim.learning_rate=3e-4``) or the
short keys the docs use (``learning_rate=3e-4``, ``model=DIR``, ``finetune=lora``):

>>> from decomp.train.overrides import apply_overrides
>>> from decomp.train.recipes import get_config
>>> cfg = get_config('playground_quick')
>>> cfg = apply_overrides(cfg, ['steps=3', 'weight=cl', 'mesh.data=2'])
>>> (cfg.optim.steps, cfg.objective.weight, cfg.parallel.mesh, make_objective(cfg).name)
(3, 'cl', {'data': 2, 'model': 1}, 'w_cl-d_sft')
>>> apply_overrides(cfg, ['b1=2'])
Traceback (most recent call last):
...
decomp.train.knobs.ConfigError: config optim.b1=2.0: must be < 1
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import typing
from typing import Any, Mapping

from decomp import _params
from decomp import objectives as objectives_lib
from decomp.models.remat import REMAT_POLICIES
from decomp.readout import LABEL_HEADS, LABEL_POOLINGS
from decomp.train.knobs import (ConfigError, Section, bad_value, check_playground_options, defaults,
                                knob)

LAYOUTS = ('data', 'fsdp', 'tensor')
# What trains: the adapters, every weight but the LM head, the LM head alone; '+lm_head' adds
# the LM head (the paper's "unfrozen head" ablation).
FINETUNE_MODES = ('full', 'full+lm_head', 'lora', 'lora+lm_head', 'head')
DTYPES = ('float32', 'bfloat16', 'float16')
NONFINITE_POLICIES = ('error', 'skip_step')


@dataclasses.dataclass(frozen=True)
class ModelConfig(Section):
  """What model is trained: a checkpoint directory (HF layout), ``'random'`` weights of the shape
  below, or ``'playground'`` (resolved to the playground base's directory by the entry point)."""
  SECTION: typing.ClassVar[str] = 'model'
  path: str = knob('playground')
  tokenizer: str = knob('')  # tokenizer dir; '' = the model dir's (required for a directory)
  # Read images with a ViT + projector: 'auto' = yes for 'playground'/'random' models and for
  # checkpoints that carry a vision tower, no for text checkpoints; true adds a fresh one.
  vision: Any = knob('auto', choices=('auto', True, False))
  dtype: str = knob('float32', choices=DTYPES, evaluate=True)  # activation dtype
  param_dtype: str = knob('float32', choices=DTYPES)
  # The shape of a 'random' / 'playground' model (a checkpoint directory has its own).
  hidden_size: int = knob(128, min=1, shape=True)
  num_layers: int = knob(4, min=1, shape=True)
  num_heads: int = knob(4, min=1, shape=True)
  num_kv_heads: int = knob(2, min=1, shape=True)  # grouped-query attention
  intermediate_size: int = knob(384, min=1, shape=True)
  vision_hidden_size: int = knob(64, min=1, shape=True)
  vision_layers: int = knob(2, min=1, shape=True)
  vision_heads: int = knob(4, min=1, shape=True)
  patch_size: int = knob(16, min=1, shape=True)  # image_tokens = (image_size / patch_size) ** 2
  image_size: int = knob(32, min=1)  # images are resized to image_size x image_size

  @property
  def is_random_shape(self) -> bool:
    return self.path in ('random', 'playground')

  def _check(self):
    if not self.path:
      raise self.bad('path', "expected 'playground', 'random' or a checkpoint directory")
    if self.is_random_shape:
      if self.hidden_size % self.num_heads:
        raise self.bad('hidden_size', f'must be divisible by num_heads={self.num_heads}')
      if self.num_heads % self.num_kv_heads:
        raise self.bad('num_kv_heads', f'must divide num_heads={self.num_heads}')
      if (self.hidden_size // self.num_heads) % 2:
        raise self.bad('hidden_size', f'hidden_size / num_heads = '
                       f'{self.hidden_size // self.num_heads} must be even (the RoPE head width)')
      if self.vision is not False:
        if self.vision_hidden_size % self.vision_heads:
          raise self.bad('vision_hidden_size', f'must be divisible by vision_heads='
                         f'{self.vision_heads}')
        if self.image_size % self.patch_size:
          raise self.bad('image_size', f'must be a multiple of patch_size={self.patch_size}')


@dataclasses.dataclass(frozen=True)
class ReadoutConfig(Section):
  """How a document is asked and read: the prompt preset and the label words."""
  SECTION: typing.ClassVar[str] = 'readout'
  # '' = decomp's template (the tokenizer's chat template around "Query: ... Document: ...");
  # a name of decomp.models.presets.PRESETS renders that model's own prompt and label words.
  preset: str = knob('')
  label_words: tuple[str, ...] = knob(('yes', 'no'))  # answer tokens read at the last position
  # 'first': z_y, z_n are the first two words' logits; 'pairs': the words alternate positive,
  # negative and each side is the log-sum-exp of its words' logits.
  label_pooling: str = knob('first', choices=LABEL_POOLINGS)
  # 'lm_head': the label words' LM-head rows score; 'random': a fresh learnable K x d matrix
  # replaces them in scores, weights, directions and ranking (the paper's D_Rand).
  label_head: str = knob('lm_head', choices=LABEL_HEADS)

  def _check(self):
    if len(self.label_words) < 2:
      raise self.bad('label_words', 'needs at least the yes and the no word')
    if self.preset:
      from decomp.models.presets import PRESETS
      if self.preset not in PRESETS:
        raise self.bad('preset', f"expected '' (decomp's template) or one of {sorted(PRESETS)}")
      if self.label_words not in (ReadoutConfig.label_words, PRESETS[self.preset].label_words):
        raise self.bad('label_words', f'preset {self.preset!r} reads its own label words '
                       f'{PRESETS[self.preset].label_words}; leave label_words unset')
    if self.label_pooling == 'pairs' and len(self.words) % 2:
      raise self.bad('label_words', "label_pooling='pairs' needs (positive, negative) word "
                     f'pairs: an even count, got {len(self.words)}')

  @property
  def words(self) -> tuple[str, ...]:
    """The label words the reranker reads: the preset's, else ``label_words``."""
    if self.preset:
      from decomp.models.presets import get_preset
      return tuple(get_preset(self.preset).label_words)
    return tuple(self.label_words)


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(Section):
  """What trains, and how adapters look."""
  SECTION: typing.ClassVar[str] = 'finetune'
  # 'full' (every weight but the LM head), 'lora' (adapters), 'head' (the LM head alone); the
  # '+lm_head' forms train the LM head too. The playground base is tiny (1M parameters): full
  # fine-tuning learned a little faster in the calibration runs.
  trains: str = knob('full', choices=FINETUNE_MODES)
  lora_rank: int = knob(16, min=1)
  lora_alpha: float = knob(32.0, above=0)  # scale = alpha / rank
  lora_targets: tuple[str, ...] = knob(('q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj',
                                        'up_proj', 'down_proj'))
  lora_vision: bool = knob(False)  # adapters on a native VL vision tower too
  # trains=head only: the frozen body's answer-position hidden states are computed once per
  # distinct prompt and kept under $DECOMP_CACHE/features (decomp/train/features.py).
  cache_features: bool = knob(False)

  @property
  def mode(self) -> str:
    """'full', 'lora' or 'head' (without the LM-head suffix)."""
    return self.trains.split('+')[0]

  @property
  def lm_head(self) -> bool:
    """The LM head trains."""
    return self.trains == 'head' or self.trains.endswith('+lm_head')

  def _check(self):
    if self.mode != 'lora':
      default = defaults(FinetuneConfig)
      changed = [k for k in ('lora_rank', 'lora_alpha', 'lora_targets', 'lora_vision')
                 if getattr(self, k) != default[k]]
      if changed:
        raise self.bad(changed[0], f'LoRA settings apply to trains=lora only, not '
                       f'trains={self.trains!r}')
    if not self.lora_targets:
      raise self.bad('lora_targets', 'needs at least one projection name')
    if self.cache_features and self.trains != 'head':
      raise self.bad('cache_features', f'needs trains=head (with trains={self.trains!r} the '
                     'body trains, so its hidden states change every step)')


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig(Section):
  """The objective (a decomp.OBJECTIVES name or import path) and the parts that replace its
  weight W / direction D (a hybrid)."""
  SECTION: typing.ClassVar[str] = 'objective'
  name: str = knob('sft')
  weight: str = knob('')  # decomp.weights.WEIGHTS name or import path; '' = the objective's
  direction: str = knob('')  # decomp.directions.DIRECTIONS name or import path
  weight_kwargs: dict = knob({})  # e.g. {'tau': 0.1} for tau_mask
  direction_kwargs: dict = knob({})
  temperature: float = knob(1.0, above=0)  # InfoNCE temperature of a weight that takes one

  def _check(self):
    if not self.name:
      raise self.bad('name', 'names no objective')
    for key, value in self.weight_kwargs.items():
      if isinstance(value, float) and not math.isfinite(value):
        raise self.bad('weight_kwargs', f'{key}={value} is not finite')
    if 'temperature' in self.weight_kwargs and self.temperature != 1.0:
      raise self.bad('weight_kwargs', 'sets temperature and so does objective.temperature: '
                     'give it once')


@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
  """Where groups come from and how batches are shaped."""
  SECTION: typing.ClassVar[str] = 'data'
  source: str = knob('playground')  # 'playground' or a directory of MRB-style JSONL
  # PlaygroundConfig overrides (decomp.data.playground). With 256 test queries the test set's
  # own sampling noise (~1.5 NDCG points) was as large as the seed spread: 2048 by default.
  playground: dict = knob({'tasks': ['t2t'], 'num_eval_queries': 2048})
  # Distinct training groups shared by every seed (0: the playground's unbounded stream; JSONL
  # data: the whole train file). With a pool, seeds differ only in the order they visit it.
  train_pool: int = knob(0, min=0)
  negatives: int = knob(4, min=1)  # negatives per training group (list size = 1 + negatives)
  batch_size: int = knob(16, min=1)  # groups per step (global, over all hosts)
  max_length: int = knob(64, min=1)  # tokens per prompt (image placeholders included)
  # Each batch is padded to the smallest bucket that holds its longest prompt (a compiled shape
  # per bucket). () = max_length always.
  length_buckets: tuple[int, ...] = knob(())
  # Data rows may name files outside the data folder (absolute paths, '..'): off by default, a
  # row must not make the reader open any file on the machine.
  allow_outside_paths: bool = knob(False)
  # Images with more pixels are refused by name from their header (0: no limit).
  max_image_pixels: int = knob(50_000_000, min=0)

  @property
  def list_size(self) -> int:
    return 1 + self.negatives

  def _check(self):
    if any(b < 1 for b in self.length_buckets):
      raise self.bad('length_buckets', 'must be positive integers')
    if self.length_buckets and max(self.length_buckets) < self.max_length:
      raise self.bad('length_buckets', f'the longest bucket must hold max_length='
                     f'{self.max_length} (a prompt is cut to max_length, then padded to a bucket)')
    if self.source != 'playground' and self.playground not in (
        {}, defaults(DataConfig)['playground']):
      raise self.bad('playground', f"applies to data=playground only, not {self.source!r}")
    check_playground_options(self.playground)


@dataclasses.dataclass(frozen=True)
class OptimConfig(Section):
  """AdamW with linear warm-up and cosine decay, and what to do with a non-finite step."""
  SECTION: typing.ClassVar[str] = 'optim'
  steps: int = knob(200, min=1)
  learning_rate: float = knob(1e-3, above=0)  # peak
  warmup_steps: int = knob(10, min=0)
  end_learning_rate_factor: float = knob(0.1, min=0, max=1)  # cosine decays to peak * this
  weight_decay: float = knob(0.0, min=0)  # decoupled
  b1: float = knob(0.9, min=0, below=1)
  b2: float = knob(0.999, min=0, below=1)
  clip_norm: float = knob(1.0, min=0)  # global gradient-norm clip (0 = off)
  # Adam's first moment in bfloat16 (optax's mu_dtype; the second moment stays float32): a third
  # less optimizer memory and checkpoint; resumes stay bit-exact (the state is saved as it is).
  mu_dtype: str = knob('float32', choices=('float32', 'bfloat16'))
  # A non-finite loss, gradient or parameter: 'error' stops the run (named error, last good
  # checkpoint kept); 'skip_step' keeps the old state and counts the step.
  on_nonfinite: str = knob('error', choices=NONFINITE_POLICIES, resume=True)
  # With skip_step: the run fails by name once more than this share of its steps were skipped.
  max_skipped_fraction: float = knob(0.1, min=0, max=1, resume=True)


@dataclasses.dataclass(frozen=True)
class ParallelConfig(Section):
  """Devices, mesh and layout, and how a step splits its work."""
  SECTION: typing.ClassVar[str] = 'parallel'
  mesh: dict = knob({'data': -1, 'model': 1}, evaluate=True)  # axis -> size (-1: the rest)
  # 'data' (replicated params), 'fsdp' (params sharded over 'data'), 'tensor'
  layout: str = knob('data', choices=LAYOUTS, evaluate=True)
  axis_rules: dict = knob({})  # logical name -> mesh axis, on top of the layout's rules
  num_devices: int = knob(0, min=0, evaluate=True)  # the first num_devices devices (0 = all)
  # Documents per chunk of the exact two-pass step (decomp.chunked); 0: the whole list at once.
  doc_chunk: int = knob(0, min=0)
  # Micro-batches per step, gradients accumulated with the whole batch's list normaliser.
  accumulate_steps: int = knob(1, min=1)
  # What each decoder layer / vision block keeps for the backward pass: 'none' (all), 'block'
  # (its input only: one more forward, least memory), 'dots' (its projections' outputs too).
  # Same values and gradients under each (decomp.models.remat; cost in docs/config.md).
  remat: str = knob('none', choices=tuple(REMAT_POLICIES), resume=True, evaluate=True)

  def _check(self):
    for name, axes in self.axis_rules.items():
      axes = (axes,) if isinstance(axes, str) or axes is None else tuple(axes)
      unknown = [a for a in axes if a is not None and a not in self.mesh]
      if unknown:
        raise self.bad('axis_rules', f'logical name {name!r} maps to {unknown}, not axes of '
                       f'mesh {self.mesh}')
    for axis, size in self.mesh.items():
      if isinstance(size, bool) or not isinstance(size, int) or size == 0 or size < -1:
        raise self.bad('mesh', f'axis {axis!r} has size {size!r}: expected a positive integer '
                       'or -1 (the remaining devices)')


@dataclasses.dataclass(frozen=True)
class EvalLogConfig(Section):
  """Logs, evaluation and checkpoints."""
  SECTION: typing.ClassVar[str] = 'eval_log'
  log_every: int = knob(1, min=1, resume=True)  # steps between lines of steps.jsonl
  example_log_every: int = knob(10, min=0, resume=True)  # per-example log rows (0 = off)
  example_grad_norms: bool = knob(False)  # exact per-example gradient norms (small models)
  eval_every: int = knob(50, min=0, resume=True)  # steps between validations (0 = none)
  final_eval: bool = knob(True, resume=True)  # the test split at the end (results.json)
  eval_score: str = knob('auto', evaluate=True)  # 'sft' (P(yes)), 'cl' (z_y), 'auto'
  eval_groups: int = knob(256, min=0, resume=True, evaluate=True)  # 0 = the whole split
  test_groups: int = knob(0, min=0, resume=True, evaluate=True)  # 0 = the whole split
  eval_list_size: int = knob(0, min=0, evaluate=True)  # candidates per query (0 = all)
  # Evaluation batches hold eval_batch_size groups at max_length (more when prompts are shorter).
  eval_batch_size: int = knob(16, min=1, evaluate=True)
  checkpoint_every: int = knob(100, min=0, resume=True)  # 0 = only the last step
  keep_checkpoints: int = knob(2, min=1, resume=True)
  quiet: bool = knob(False, resume=True, evaluate=True)  # no progress bar

  def _check(self):
    if self.eval_list_size == 1:
      raise self.bad('eval_list_size', 'a list of one document ranks trivially (NDCG 1): use 0 '
                     '(all candidates) or at least 2')
    if self.eval_score != 'auto' and self.eval_score not in objectives_lib.RANK_SCORES:
      raise self.bad('eval_score', f"expected 'auto' or one of "
                     f'{sorted(objectives_lib.RANK_SCORES)}')


@dataclasses.dataclass(frozen=True)
class BaseConfig(Section):
  """The playground base's recipe (decomp.playground.base): read only when model.path is
  'playground', refused otherwise. Its fields, the model's shape and the playground world make
  the base's cache key."""
  SECTION: typing.ClassVar[str] = 'base'
  steps: int = knob(300, min=0)
  learning_rate: float = knob(3e-3, above=0)
  batch_size: int = knob(32, min=1)
  # Yes/no questions about one attribute of a described scene per group (half true): they teach
  # the label words as content-dependent answers. 0: the base never sees the label words.
  qa_per_group: int = knob(0, min=0)
  # Image-text matching questions per group ('{query} . {document} . Does it match ? yes|no').
  match_per_group: int = knob(0, min=0)
  match_format: str = knob('words', choices=('words', 'chat'))
  # The "no" questions' scenes: 'group' (the group's negatives) or 'random' (coarse mismatches).
  match_negatives: str = knob('group', choices=('group', 'random'))
  vision_steps: int = knob(0, min=0)  # the vision tower's own pre-training steps first
  # Keep ViT + projector fixed in the LM stage: trained jointly with a fresh LM they collapse
  # every image to one constant token (docs/calibration.md).
  freeze_vision: bool = knob(False)
  seed: int = knob(0, min=0)  # shared by every run's seed, as in the paper


SECTIONS: dict[str, type] = {
    'model': ModelConfig, 'readout': ReadoutConfig, 'finetune': FinetuneConfig,
    'objective': ObjectiveConfig, 'data': DataConfig, 'optim': OptimConfig,
    'parallel': ParallelConfig, 'eval_log': EvalLogConfig, 'base': BaseConfig,
}


@dataclasses.dataclass(frozen=True)
class TrainConfig(Section):
  """Every knob of a training run, in sections (see the module docstring)."""
  SECTION: typing.ClassVar[str] = ''
  name: str = knob('custom', resume=True)  # the named config this came from (informational)
  seed: int = knob(0, min=0)  # adapter/head init and the order of training groups
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  readout: ReadoutConfig = dataclasses.field(default_factory=ReadoutConfig)
  finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)
  objective: ObjectiveConfig = dataclasses.field(default_factory=ObjectiveConfig)
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
  parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
  eval_log: EvalLogConfig = dataclasses.field(default_factory=EvalLogConfig)
  base: BaseConfig = dataclasses.field(default_factory=BaseConfig)

  def _check(self):
    for name, section in SECTIONS.items():
      if not isinstance(getattr(self, name), section):
        raise bad_value(name, getattr(self, name), f'expected a {section.__name__}')
    base_default = defaults(BaseConfig)
    changed = [k for k, v in base_default.items() if getattr(self.base, k) != v]
    if self.model.path != 'playground' and changed:
      raise bad_value(f'base.{changed[0]}', getattr(self.base, changed[0]),
                 f"the playground base's recipe applies to model=playground only, not "
                 f'model={self.model.path!r}')
    if not self.model.is_random_shape:
      if not os.path.isdir(self.model.path):
        raise bad_value('model.path', self.model.path, "not 'playground', 'random' or an "
                        'existing checkpoint directory')
      model_default = defaults(ModelConfig)
      changed = [f.name for f in dataclasses.fields(ModelConfig) if f.metadata['shape']
                 and getattr(self.model, f.name) != model_default[f.name]]
      if changed:
        raise bad_value(f'model.{changed[0]}', getattr(self.model, changed[0]),
                   f'shape fields of random/playground models do not apply to model='
                   f'{self.model.path!r}, whose checkpoint fixes its shape')
    if self.parallel.doc_chunk > self.data.list_size:
      raise bad_value('parallel.doc_chunk', self.parallel.doc_chunk, f'expected 0 (the whole list '
                 f'at once) or 1..{self.data.list_size} (documents per chunk of a list of 1 + '
                 f'negatives={self.data.negatives})')
    if self.data.batch_size % self.parallel.accumulate_steps:
      divisors = [d for d in range(1, self.data.batch_size + 1) if self.data.batch_size % d == 0]
      raise bad_value('parallel.accumulate_steps', self.parallel.accumulate_steps,
                 f'expected a divisor of batch_size={self.data.batch_size}: {divisors}')

  @property
  def list_size(self) -> int:
    """Documents per training group: one positive and ``negatives`` negatives."""
    return self.data.list_size


def replace(cfg: TrainConfig, **sections: Mapping[str, Any]) -> TrainConfig:
  """``cfg`` with fields of its sections replaced: ``replace(cfg, optim={'steps': 3})``; top-level
  fields (``name``, ``seed``) are given directly."""
  changes = {}
  for key, value in sections.items():
    if key in SECTIONS:
      changes[key] = dataclasses.replace(getattr(cfg, key), **value)
    else:
      changes[key] = value
  return dataclasses.replace(cfg, **changes)


def fields(cfg: TrainConfig | None = None):
  """``(path, field, value)`` for every leaf field, e.g. ``('optim.steps', Field, 200)``."""
  cfg = cfg or TrainConfig()
  for f in dataclasses.fields(TrainConfig):
    if f.name in SECTIONS:
      section = getattr(cfg, f.name)
      for g in dataclasses.fields(section):
        yield f'{f.name}.{g.name}', g, getattr(section, g.name)
    else:
      yield f.name, f, getattr(cfg, f.name)


def free_on_resume() -> frozenset[str]:
  """Paths that may differ between a run and its resumption: they change no trained value."""
  return frozenset(p for p, f, _ in fields() if f.metadata.get('resume'))


def free_on_evaluation() -> frozenset[str]:
  """Paths ``evaluate_workdir`` may change: how a run is evaluated, not what was trained."""
  return frozenset(p for p, f, _ in fields() if f.metadata.get('evaluate'))


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
  """JSON-able nested dict of the config. Objective names registered in code are recorded by
  their import path, so another process resolves them."""
  out: dict[str, Any] = {}
  for path, _, value in fields(cfg):
    section, _, name = path.rpartition('.')
    if section == 'objective' and name in ('name', 'weight', 'direction') and value != '':
      value = objectives_lib.portable_name('objective' if name == 'name' else name, value)
    elif isinstance(value, tuple):
      value = list(value)
    (out.setdefault(section, {}) if section else out)[name] = value
  return out


def flat_dict(cfg: TrainConfig) -> dict[str, Any]:
  """``{path: value}`` of every field, JSON-normalised (tuples as lists, objective names as
  import paths): configs read from files and built in code compare equal."""
  nested = json.loads(json.dumps(to_dict(cfg)))
  return {path: (nested[path.split('.')[0]][path.split('.')[1]] if '.' in path else nested[path])
          for path, _, _ in fields(cfg)}


def config_hash(data: Mapping[str, Any]) -> str:
  """Short stable hash of a JSON-able mapping (cache keys)."""
  blob = json.dumps(data, sort_keys=True, default=str).encode()
  return hashlib.sha256(blob).hexdigest()[:16]


def label_words(cfg: TrainConfig) -> tuple[str, ...]:
  """The label words the reranker reads: the preset's, else ``readout.label_words``."""
  return cfg.readout.words


def make_objective(cfg: TrainConfig) -> objectives_lib.Objective:
  """The :class:`~decomp.Objective` of a config: ``objective.name`` with its parts replaced by
  ``objective.weight`` / ``objective.direction`` when given, and parameters bound.

  ``objective.temperature`` is bound to the weight when it takes one (``cl``, ``cl_rescaled``);
  ``weight_kwargs`` / ``direction_kwargs`` must all be accepted.
  """
  oc = cfg.objective
  try:
    base = objectives_lib.resolve_objective(oc.name)
    objective = base.with_parts(weight=oc.weight or None, direction=oc.direction or None)
    weight_params = {} if 'temperature' in objective.weight.params else _params.accepted(
        objective.weight.fn, {'temperature': oc.temperature})
    weight_params.update(oc.weight_kwargs)
    objective = objective.with_parts(weight_params=weight_params,
                                     direction_params=oc.direction_kwargs)
  except (ValueError, TypeError) as e:
    raise ConfigError(f'config objective={oc.name!r} (weight={oc.weight!r}, '
                      f'direction={oc.direction!r}): {e}') from None
  if not objective.has_loss:
    raise ConfigError(f'config objective={objective.name!r} has no loss to log as `loss`: give '
                      'its weight one (decomp.Weight(fn, loss=...)) or the objective '
                      '(decomp.Objective(..., loss=...))')
  if cfg.readout.label_head == 'random' and 'log_normalizer' in objective.needs:
    # log p(yes) = z_y - log sum_v exp z_v needs z_y to be one of the vocabulary's logits.
    raise ConfigError(f"config readout.label_head='random': objective {objective.name!r} reads "
                      'the vocabulary log-normaliser, which a random label head does not score '
                      'with')
  return objective


def validate(cfg: TrainConfig, *, num_devices: int | None = None,
             max_negatives: int | None = None, num_processes: int = 1) -> None:
  """The checks that need the run's surroundings (the sections check themselves on creation):
  the objective resolves, the data offers the negatives, the mesh fits the devices and the
  batches split over the data shards and processes. Raises ConfigError naming the field."""
  make_objective(cfg)
  data, parallel = cfg.data, cfg.parallel
  if max_negatives is not None and data.negatives > max_negatives:
    raise bad_value('data.negatives', data.negatives,
               f'the data offers only {max_negatives} negatives per group')
  if data.length_buckets and num_processes > 1:
    raise bad_value('data.length_buckets', data.length_buckets, "pads each process's rows to their "
               'own bucket: use it with one process (the processes of a multi-host run must '
               'agree on shapes)')
  if cfg.finetune.cache_features and num_processes > 1:
    raise bad_value('finetune.cache_features', True,
               'is single-process (each host would keep its own cache)')
  if num_devices is not None and parallel.num_devices:
    if parallel.num_devices > num_devices:
      raise bad_value('parallel.num_devices', parallel.num_devices,
                 f'only {num_devices} devices are available')
    num_devices = parallel.num_devices
  if num_devices is None:
    if num_processes > 1 and data.batch_size % num_processes:
      raise bad_value('data.batch_size', data.batch_size,
                 f'must be divisible by the {num_processes} processes')
    return
  from decomp.train import mesh as mesh_lib
  try:
    sizes = mesh_lib.resolve_mesh_shape(parallel.mesh, num_devices)
  except ValueError as e:
    raise ConfigError(f'config parallel.mesh={parallel.mesh!r}: {e}') from None
  split = 1
  for axis in mesh_lib.BATCH_AXES:
    split *= sizes.get(axis, 1)
  split = max(split, num_processes)
  if data.batch_size % split:
    raise bad_value('data.batch_size', data.batch_size,
               f'must be divisible by the {split} data-parallel shards of mesh {sizes}')
  if (data.batch_size // parallel.accumulate_steps) % split:
    raise bad_value('parallel.accumulate_steps', parallel.accumulate_steps,
               f'each of the {parallel.accumulate_steps} micro-batches of batch_size='
               f'{data.batch_size} must split over the {split} data-parallel shards of mesh '
               f'{sizes}')
