"""From a TrainConfig to data and a sharded reranker state.

* :func:`make_data` -> :class:`GroupData` over the playground or MRB-style JSONL: deterministic
  batches by group index (each process encodes only its rows), evaluation groups, per-example ids.
* :func:`build_model_state` -> :class:`ModelState`: the reranker split into ``graphdef``,
  trainable ``params`` and ``frozen`` state, created directly sharded
  (``nnx.eval_shape`` -> shardings from logical names -> ``jit(init, out_shardings=...)``).

Models: ``'random'`` (random weights of the config's shape), ``'playground'`` (the cached base
checkpoint of :mod:`decomp.train.pretrain`), or a directory in the base-checkpoint layout (HF
decoder ``config.json`` + ``model.safetensors`` + tokenizer, optionally ``multimodal.json`` +
``multimodal.safetensors`` with the ViT and projector).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from decomp.data import types as data_types
from decomp.models import sharding as sharding_lib
from decomp.models.config import DecoderConfig
from decomp.models.decoder import Decoder
from decomp.models.lora import apply_lora, is_lm_head, trainable_filter
from decomp.models.reranker import Reranker, encode_groups, image_token_id, label_token_ids
from decomp.models.vision import Projector, VisionConfig, VisionEncoder
from decomp.readout import Readout, pool_label_logits
from decomp.train import config as config_lib
from decomp.train import logs

MULTIMODAL_CONFIG = 'multimodal.json'
MULTIMODAL_WEIGHTS = 'multimodal.safetensors'
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


def cache_dir() -> str:
  """``$DECOMP_CACHE`` or ``~/.cache/decomp``: built tokenizers and base checkpoints."""
  return os.environ.get('DECOMP_CACHE') or os.path.join(os.path.expanduser('~'), '.cache',
                                                         'decomp')


def _build_once(path: str, build: Callable[[str], Any]) -> str:
  """Builds ``path`` (a directory) once: into a temporary sibling, then an atomic rename, so a
  killed build never leaves a half-written directory behind. Concurrent callers (parallel runs
  of a sweep, the processes of a multi-host run) wait on a lock file and reuse the result."""
  import fcntl
  import shutil
  if os.path.isdir(path):
    return path
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  with open(path + '.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the holder exits, even if killed
    try:
      if os.path.isdir(path):
        return path
      tmp = tempfile.mkdtemp(dir=parent, prefix='.' + os.path.basename(path) + '.')
      try:
        build(tmp)
        os.rename(tmp, path)
      finally:
        shutil.rmtree(tmp, ignore_errors=True)
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
  return path


def playground_tokenizer_dir() -> str:
  """The playground's word-level tokenizer, built once under :func:`cache_dir`."""
  from decomp.data import tokenizer as tokenizer_lib
  key = config_lib.config_hash({'vocabulary': tokenizer_lib.vocabulary()})
  return _build_once(os.path.join(cache_dir(), f'tokenizer-{key}'),
                     lambda d: tokenizer_lib.build_tokenizer(d))


def model_dir(cfg: config_lib.TrainConfig) -> str | None:
  """The checkpoint directory the config trains from (None for random weights)."""
  if cfg.model == 'random':
    return None
  if cfg.model == 'playground':
    from decomp.train import pretrain
    return pretrain.base_checkpoint(cfg)
  if not os.path.isdir(cfg.model):
    raise FileNotFoundError(f'config model={cfg.model!r}: not "playground", "random" or an '
                            'existing directory')
  return cfg.model


def load_tokenizer(cfg: config_lib.TrainConfig, directory: str | None):
  """``cfg.tokenizer``, else the model directory's tokenizer, else the playground's."""
  from decomp.models.reranker import load_tokenizer as load
  has_own = directory and any(os.path.exists(os.path.join(directory, f))
                              for f in ('tokenizer.json', 'tokenizer_config.json'))
  return load(cfg.tokenizer or (directory if has_own else playground_tokenizer_dir()))


def decoder_config(cfg: config_lib.TrainConfig, vocab_size: int) -> DecoderConfig:
  """The decoder shape of a 'random' / playground model (Qwen2 layout)."""
  if cfg.hidden_size % cfg.num_heads:
    raise ValueError(f'config hidden_size={cfg.hidden_size} is not divisible by '
                     f'num_heads={cfg.num_heads}')
  return DecoderConfig(
      architecture='qwen2', vocab_size=vocab_size, hidden_size=cfg.hidden_size,
      intermediate_size=cfg.intermediate_size, num_layers=cfg.num_layers,
      num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
      head_dim=cfg.hidden_size // cfg.num_heads, attention_bias=True,
      max_position_embeddings=max(512, cfg.max_length), tie_word_embeddings=False)


def vision_config(cfg: config_lib.TrainConfig) -> VisionConfig:
  return VisionConfig(family='siglip', hidden_size=cfg.vision_hidden_size,
                      intermediate_size=4 * cfg.vision_hidden_size,
                      num_layers=cfg.vision_layers, num_heads=cfg.vision_heads,
                      image_size=cfg.image_size, patch_size=cfg.patch_size)


# --- data -----------------------------------------------------------------------------------------


def _take_negatives(group: data_types.Group, negatives: int,
                    positives: int | None = None) -> data_types.Group:
  """The group's first ``positives`` positives (all when None) and first ``negatives``
  negatives, in list order (which the data sources randomise)."""
  keep, seen_neg, seen_pos = [], 0, 0
  for i, label in enumerate(group.labels):
    if label > 0:
      if positives is None or seen_pos < positives:
        keep.append(i)
        seen_pos += 1
    elif seen_neg < negatives:
      keep.append(i)
      seen_neg += 1
  pick = lambda seq: tuple(seq[i] for i in keep)
  teacher = None if group.teacher_scores is None else pick(group.teacher_scores)
  return dataclasses.replace(group, docs=pick(group.docs), labels=pick(group.labels),
                             doc_ids=pick(group.doc_ids), doc_kinds=pick(group.doc_kinds),
                             teacher_scores=teacher)


def group_meta(groups: Sequence[data_types.Group], list_size: int) -> dict[str, np.ndarray]:
  """Ids of a batch for the per-example log: ``query_id/task/modality [B]``, ``doc_id/doc_kind/
  label/where [B, n]``."""
  b = len(groups)
  doc_id = np.full((b, list_size), '', dtype=object)
  doc_kind = np.full((b, list_size), '', dtype=object)
  label = np.zeros((b, list_size), np.int32)
  where = np.zeros((b, list_size), bool)
  for i, g in enumerate(groups):
    k = len(g.docs)
    doc_id[i, :k], doc_kind[i, :k] = g.doc_ids, g.doc_kinds
    label[i, :k], where[i, :k] = g.labels, True
  as_str = lambda a: np.asarray(a.tolist(), dtype=str)
  return {'query_id': np.asarray([g.query_id for g in groups], dtype=str),
          'task': np.asarray([g.task for g in groups], dtype=str),
          'modality': np.asarray([g.modality or data_types.TASK_MODALITY.get(g.task, '')
                                  for g in groups], dtype=str),
          'doc_id': as_str(doc_id), 'doc_kind': as_str(doc_kind), 'label': label, 'where': where}


def playground_config(cfg: config_lib.TrainConfig):
  """The run's PlaygroundConfig: defaults, the config's image size, then ``cfg.playground``.

  The world (and so the val/test benchmark) is fixed by ``playground.seed`` (default 0), not the
  run's seed: seeds differ in initialisation and training order only, over one benchmark.
  """
  from decomp.data.playground import PlaygroundConfig
  options = {'seed': 0, 'image_size': cfg.image_size, **cfg.playground}
  fields = {f.name for f in dataclasses.fields(PlaygroundConfig)}
  unknown = sorted(set(options) - fields)
  if unknown:
    raise ValueError(f'config playground: unknown PlaygroundConfig keys {unknown}')
  for key in ('tasks', 'num_values', 'hard_attribute_diffs'):
    if isinstance(options.get(key), list):
      options[key] = tuple(options[key])
  return PlaygroundConfig(**options)


TRAIN_STREAM_STRIDE = 10_000_000  # train groups per run seed before streams would overlap


def epoch_order(seed: int, index: int, pool_size: int) -> int:
  """Which of ``pool_size`` training groups step-group ``index`` reads: the pool is visited epoch
  by epoch, each epoch in its own permutation seeded by (seed, epoch)."""
  epoch, offset = divmod(index, pool_size)
  return int(_epoch_permutation(seed, epoch, pool_size)[offset])


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, pool_size: int) -> np.ndarray:
  # One permutation per epoch, not per group: a 100k-group file costs 13 ms a batch otherwise.
  order = np.random.default_rng([seed, epoch]).permutation(pool_size)
  order.flags.writeable = False
  return order


class PlaygroundSource:
  """Groups of the procedural playground (``cfg.playground`` are PlaygroundConfig overrides)."""

  def __init__(self, cfg: config_lib.TrainConfig):
    from decomp.data.playground import Playground
    self.playground = Playground(playground_config(cfg))
    self.max_negatives = self.playground.config.negatives
    self.seed = cfg.seed
    self.train_pool = cfg.train_pool
    # Without a pool each run seed reads its own stretch of the unbounded train stream.
    self.train_offset = TRAIN_STREAM_STRIDE * cfg.seed

  def train_group(self, index: int) -> data_types.Group:
    if self.train_pool:  # a fixed training set shared by every seed, visited in the seed's order
      return self.playground.group('train', epoch_order(self.seed, index, self.train_pool))
    return self.playground.group('train', self.train_offset + index)

  def split_groups(self, split: str, count: int) -> list[data_types.Group]:
    return self.playground.groups(split, 0, self._split_count(split, count))

  def split_plans(self, split: str, count: int) -> list:
    """The scenes behind ``split_groups(split, count)``, group by group."""
    return [self.playground.plan(split, i) for i in range(self._split_count(split, count))]

  def _split_count(self, split: str, count: int) -> int:
    total = self.playground.num_groups(split)
    # The playground cycles through tasks by index, so a prefix covers every task.
    return total if not count else min(count, total)


class JsonlSource:
  """MRB-style JSONL (``decomp.data.mrb``): ``<dir>/train.jsonl``, ``val.jsonl``, ``test.jsonl``.

  Whole files are read once; documents are shuffled per row with the seed (ties in scores must
  not favour the positives). Training visits the train groups epoch by epoch, each epoch in a
  seeded permutation, so group ``index`` is a pure function of (seed, index) as on the playground.
  """

  SPLIT_FILES = {'train': 'train.jsonl', 'val': 'val.jsonl', 'test': 'test.jsonl'}

  def __init__(self, cfg: config_lib.TrainConfig):
    from decomp.data import mrb
    self.directory = cfg.data
    self.seed = cfg.seed
    self.train_pool = cfg.train_pool
    self._load = lambda path: mrb.load_jsonl(
        path, image_size=cfg.image_size if cfg.vision else None, load_images=cfg.vision,
        shuffle_seed=cfg.seed)[0]
    self._splits: dict[str, list[data_types.Group]] = {}
    train = self._split('train')
    if not train:
      raise ValueError(f'{self._path("train")} holds no groups')
    self.max_negatives = min(sum(1 for label in g.labels if label <= 0) for g in train)

  def _path(self, split: str) -> str:
    return os.path.join(self.directory, self.SPLIT_FILES[split])

  def _split(self, split: str) -> list[data_types.Group]:
    if split not in self._splits:
      path = self._path(split)
      if not os.path.exists(path):
        raise FileNotFoundError(f'config data={self.directory!r}: {path} does not exist')
      self._splits[split] = self._load(path)
    return self._splits[split]

  def train_group(self, index: int) -> data_types.Group:
    groups = self._split('train')
    pool = min(self.train_pool, len(groups)) if self.train_pool else len(groups)
    return groups[epoch_order(self.seed, index, pool)]

  def split_groups(self, split: str, count: int) -> list[data_types.Group]:
    groups = self._split(split)
    return list(groups if not count else groups[:count])


class GroupData:
  """Training and evaluation batches of a group source for one config and tokenizer.

  Training lists hold one positive and ``cfg.negatives`` negatives (``list_size``); evaluation
  lists keep every candidate (or ``eval_list_size``).
  """

  def __init__(self, cfg: config_lib.TrainConfig, source):
    self.cfg = cfg
    self.source = source
    self.max_negatives = source.max_negatives
    self.tokenizer = None
    self.image_tokens = 0
    self.vision = None

  def attach(self, tokenizer, *, image_tokens: int, vision: VisionConfig | None) -> None:
    self.tokenizer = tokenizer
    self.image_tokens = image_tokens
    self.vision = vision

  def encode(self, groups: Sequence[data_types.Group], list_size: int) -> dict[str, np.ndarray]:
    """Numpy model inputs ``[B, n, ...]`` (fixed ``T = max_length``: one compiled shape)."""
    cfg = self.cfg
    kwargs = {}
    if self.vision is not None:
      kwargs = dict(image_tokens=self.image_tokens, image_size=cfg.image_size,
                    image_mean=self.vision.image_mean, image_std=self.vision.image_std)
    else:
      groups = [_drop_images(g) for g in groups]
    arrays = encode_groups(groups, self.tokenizer, list_size=list_size,
                           max_length=cfg.max_length, padding_side='left',
                           pad_multiple=cfg.max_length, **kwargs)
    arrays['labels'] = arrays['labels'].astype(np.int32)
    return arrays

  def train_batch(self, start: int, count: int, process_index: int = 0,
                  process_count: int = 1) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """This process's share of the global batch of groups ``start .. start+count-1``."""
    local = count // process_count
    first = start + process_index * local
    groups = [_take_negatives(self.source.train_group(i), self.cfg.negatives, positives=1)
              for i in range(first, first + local)]
    return self.encode(groups, self.cfg.list_size), group_meta(groups, self.cfg.list_size)

  def eval_groups(self, split: str, count: int) -> list[data_types.Group]:
    """The first ``count`` groups of a split (0: all), candidates cut to ``eval_list_size``."""
    groups = self.source.split_groups(split, count)
    if self.cfg.eval_list_size:
      groups = [_take_negatives(g, self.cfg.eval_list_size - 1, positives=1) for g in groups]
    return groups

  def eval_plans(self, split: str, count: int) -> list | None:
    """The playground plans of ``eval_groups(split, count)`` (what each negative gets wrong), or
    None for data without plans or with candidates cut (``eval_list_size``)."""
    if self.cfg.eval_list_size or not hasattr(self.source, 'split_plans'):
      return None
    return self.source.split_plans(split, count)

  @staticmethod
  def eval_list_size(groups: Sequence[data_types.Group]) -> int:
    return max(len(g.docs) for g in groups)


def _drop_images(group: data_types.Group) -> data_types.Group:
  """Text-only models read image items by their caption; pure images become a placeholder."""
  def strip(item):
    if item.image is None and not getattr(item, 'image_path', None):
      return item
    return data_types.Item(text=item.text or 'image')
  return dataclasses.replace(group, query=strip(group.query),
                             docs=tuple(strip(d) for d in group.docs))


def make_data(cfg: config_lib.TrainConfig) -> GroupData:
  """The config's data: the playground, or a directory of MRB-style JSONL splits."""
  if cfg.data == 'playground':
    return GroupData(cfg, PlaygroundSource(cfg))
  if os.path.isdir(cfg.data):
    return GroupData(cfg, JsonlSource(cfg))
  raise ValueError(f'config data={cfg.data!r}: expected "playground" or a directory with '
                   'train.jsonl / val.jsonl / test.jsonl')


# --- model ----------------------------------------------------------------------------------------


def rules_for(layout: str) -> Mapping[str, Any]:
  """Logical-name rules of a layout: 'data' replicates every weight, 'tensor' splits heads/MLP/
  vocab over the 'model' axis, 'fsdp' additionally splits the model width over 'data'."""
  if layout == 'data':
    return {}
  if layout == 'fsdp':
    return dict(sharding_lib.FSDP_RULES)
  return dict(sharding_lib.DEFAULT_RULES)


def trainable(cfg: config_lib.TrainConfig):
  """The nnx filter of what the config trains (a random label head and the projection direction
  always train: they start random)."""
  if cfg.finetune == 'head':
    base = nnx.All(nnx.Param, is_lm_head)
  else:
    base = trainable_filter(lora=cfg.finetune == 'lora', train_lm_head=cfg.train_lm_head)
  return nnx.Any(base, nnx.All(nnx.Param, nnx.PathContains('projection')),
                 nnx.All(nnx.Param, nnx.PathContains('random_label_rows')))


@dataclasses.dataclass
class ModelState:
  """A reranker split for functional training, before any weight is allocated.

  ``params`` (trainable) and ``frozen`` are ``nnx.State`` of ``jax.ShapeDtypeStruct`` with their
  shardings (restore targets); ``initialize()`` creates the real, sharded states (random init
  and/or pretrained weights). ``graphdef`` rebuilds the :class:`Reranker` with
  ``nnx.merge(graphdef, params, frozen)``.
  """
  graphdef: Any
  params: Any
  frozen: Any
  params_shardings: Any
  frozen_shardings: Any
  tokenizer: Any
  rules: Mapping[str, Any]
  initialize: Callable[[], tuple[Any, Any]]

  @staticmethod
  def readout(model: Reranker, batch: Mapping[str, jax.Array], log_normalizer: bool) -> Readout:
    return model.readout(batch['input_ids'], batch['attention_mask'], batch.get('pixel_values'),
                         batch.get('image_valid'), log_normalizer=log_normalizer)

  @staticmethod
  def label_rows(model: Reranker) -> jax.Array:
    return model.label_rows()

  @staticmethod
  def readout_from_hidden(model: Reranker) -> Callable[[jax.Array], Readout]:
    """``h [..., d] -> Readout``: label logits, vocabulary log-normaliser, projection score."""
    rows = model.label_rows()

    def fn(h):
      logits = jnp.einsum('...d,kd->...k', h, rows.astype(h.dtype),
                          preferred_element_type=jnp.float32)
      extra = None
      if model.projection is not None:
        extra = {'projection': jnp.einsum('...d,d->...', h.astype(jnp.float32),
                                          model.projection[...].astype(jnp.float32))}
      yes, no = pool_label_logits(logits, model.label_pooling)
      return Readout(yes=yes, no=no, log_normalizer=model.decoder.log_normalizer(h), hidden=h,
                     extra_scores=extra)

    return fn

  @staticmethod
  def needs_log_normalizer(direction) -> bool:
    return direction == 'cl_logprob' or callable(direction)


def _base_configs(directory: str, cfg) -> tuple[DecoderConfig, VisionConfig | None]:
  """Shapes of a base-checkpoint directory, read from its JSON files (no weights loaded)."""
  from decomp.models import hf
  dconfig = hf.read_config(directory)
  mm_config = os.path.join(directory, MULTIMODAL_CONFIG)
  if not (cfg.vision and os.path.exists(mm_config)):
    return dconfig, None
  meta = logs.read_json(mm_config)
  try:
    return dconfig, VisionConfig(**meta['vision'])
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f'{mm_config}: bad vision config ({e})') from None


def _load_base(directory: str, cfg, mesh, rules, dtype, param_dtype,
               multimodal: bool) -> dict[str, Any]:
  """Pretrained weights of a base-checkpoint directory, already on ``mesh``: the decoder's nnx
  state and, with ``multimodal``, the ViT + projector tensors (replicated)."""
  from decomp.models import hf
  decoder = hf.load_pretrained(directory, dtype=dtype, param_dtype=param_dtype, mesh=mesh,
                               rules=rules)
  base = {'decoder': nnx.state(decoder)}
  if multimodal:
    from safetensors.numpy import load_file
    weights_path = os.path.join(directory, MULTIMODAL_WEIGHTS)
    try:
      tensors = load_file(weights_path)
    except Exception as e:
      raise ValueError(f'{weights_path}: missing, corrupt or unreadable ({e})') from e
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    base['multimodal'] = {k: jax.device_put(v, replicated) for k, v in tensors.items()}
  return base


def build_model_state(cfg: config_lib.TrainConfig, mesh, data: GroupData,
                      *, directory: str | None | bool = False) -> ModelState:
  """The reranker of ``cfg`` as sharded ``params``/``frozen`` states on ``mesh``.

  Random weights come from ``nnx.Rngs(cfg.seed)``; pretrained ones from :func:`model_dir`.
  LoRA adapters, a fresh projector (when the checkpoint has none), a random label head and the
  projection direction are initialised from the seed too, inside the same jitted init.
  """
  directory = model_dir(cfg) if directory is False else directory
  dtype, param_dtype = DTYPES[cfg.dtype], DTYPES[cfg.param_dtype]
  rules = {**rules_for(cfg.layout), **{k: tuple(v) if isinstance(v, list) else v
                                       for k, v in cfg.axis_rules.items()}}
  tokenizer = load_tokenizer(cfg, directory)
  labels = label_token_ids(tokenizer, cfg.label_words)
  pretrained_vision = False
  if directory is None:
    dconfig = decoder_config(cfg, len(tokenizer))
    vconfig = vision_config(cfg) if cfg.vision else None
  else:
    dconfig, vconfig = _base_configs(directory, cfg)
    pretrained_vision = vconfig is not None
    if cfg.vision and vconfig is None:
      vconfig = vision_config(cfg)  # a text checkpoint: a fresh ViT + projector
    if len(tokenizer) > dconfig.vocab_size:
      raise ValueError(f'{directory}: the tokenizer has {len(tokenizer)} tokens but the model '
                       f'only {dconfig.vocab_size} embeddings')
  if vconfig is not None and vconfig.image_size != cfg.image_size:
    raise ValueError(f'config image_size={cfg.image_size} but the checkpoint ViT reads '
                     f'{vconfig.image_size}px images')
  image_id = image_token_id(tokenizer) if vconfig is not None else None
  data.attach(tokenizer, image_tokens=vconfig.num_patches if vconfig else 0, vision=vconfig)
  projection = cfg.direction == 'projection'
  keep = trainable(cfg)

  def make(base):
    rngs = nnx.Rngs(cfg.seed)
    decoder = Decoder(dconfig, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    if base is not None:
      nnx.update(decoder, base['decoder'])
    vision = projector = None
    if vconfig is not None:
      vision = VisionEncoder(vconfig, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
      projector = Projector(vconfig.hidden_size, dconfig.hidden_size, dtype=dtype,
                            param_dtype=param_dtype, rngs=rngs)
      if base is not None and base.get('multimodal') is not None:
        _assign_multimodal(vision, projector, base['multimodal'])
    model = Reranker(decoder, labels, vision=vision, projector=projector,
                     image_token_id=image_id, projection_direction=projection,
                     label_pooling=cfg.label_pooling, label_head=cfg.label_head, rngs=rngs)
    if cfg.finetune == 'lora':
      apply_lora(model.decoder, rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                 targets=cfg.lora_targets, rngs=rngs)
    return model

  def init(base):
    _, params, frozen = nnx.split(make(base), keep, ...)
    return params, frozen

  abstract = nnx.eval_shape(lambda: make(None))
  graphdef, abs_params, abs_frozen = nnx.split(abstract, keep, ...)
  if not jax.tree.leaves(abs_params):
    raise ValueError(f'config finetune={cfg.finetune!r}, train_lm_head={cfg.train_lm_head}: '
                     'nothing to train')
  params_sh = sharding_lib.model_shardings(abs_params, mesh, rules)
  frozen_sh = sharding_lib.model_shardings(abs_frozen, mesh, rules)
  with_sharding = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)

  def initialize():
    base = None
    if directory is not None:
      base = _load_base(directory, cfg, mesh, rules, dtype, param_dtype, pretrained_vision)
    return jax.jit(init, out_shardings=(params_sh, frozen_sh))(base)

  return ModelState(graphdef=graphdef, params=jax.tree.map(with_sharding, abs_params, params_sh),
                    frozen=jax.tree.map(with_sharding, abs_frozen, frozen_sh),
                    params_shardings=params_sh, frozen_shardings=frozen_sh, tokenizer=tokenizer,
                    rules=rules, initialize=initialize)


def multimodal_tensors(vision: VisionEncoder, projector: Projector) -> dict[str, np.ndarray]:
  """Flat ``{'vision.<path>' / 'projector.<path>': array}`` of the ViT and projector weights."""
  out = {}
  for prefix, module in (('vision', vision), ('projector', projector)):
    for path, value in nnx.to_flat_state(nnx.state(module, nnx.Param)):
      name = prefix + '.' + '.'.join(str(k) for k in path)
      out[name] = np.asarray(jax.device_get(value.get_value()))
  return out


def _assign_multimodal(vision, projector, tensors: Mapping[str, Any]) -> None:
  for prefix, module in (('vision', vision), ('projector', projector)):
    state = nnx.state(module, nnx.Param)
    flat = []
    for path, variable in nnx.to_flat_state(state):
      name = prefix + '.' + '.'.join(str(k) for k in path)
      if name not in tensors:
        raise ValueError(f'{MULTIMODAL_WEIGHTS}: tensor {name!r} is missing')
      value = tensors[name]
      if tuple(value.shape) != tuple(variable.get_value().shape):
        raise ValueError(f'{MULTIMODAL_WEIGHTS}: tensor {name!r} has shape {value.shape}, '
                         f'expected {variable.get_value().shape}')
      flat.append((path, variable.replace(jnp.asarray(value, variable.get_value().dtype))))
    nnx.update(module, nnx.from_flat_state(flat))


def optimizer_shardings(tx, params, mesh, rules):
  """Shardings of ``tx.init(params)``: moment trees are ``nnx.State`` copies of the params (their
  Variables keep the logical names, so they shard like the params); counters are replicated."""
  abstract = jax.eval_shape(tx.init, params)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def one(leaf):
    if isinstance(leaf, nnx.Variable):
      names = sharding_lib.variable_names(leaf)
      shape = tuple(leaf.get_value().shape)
      if names is None:
        return leaf.replace(replicated)
      return leaf.replace(sharding_lib.logical_to_mesh_sharding(names, mesh, rules, shape=shape))
    return replicated

  return jax.tree.map(one, abstract, is_leaf=lambda x: isinstance(x, nnx.Variable))
