"""One way to open a trained run: ``Run.open(workdir, step=None)``.

The sequence config -> objective -> tokenizer -> shapes -> mesh -> model definition -> restore is
written here once; training's resume (:mod:`decomp.train.loop`), ``evaluate_workdir``,
``decomp.rerank`` and the figures start from it. Opening reads the model item of a checkpoint
and never builds an optimizer, a data source or a playground base. A run of adapters or a head
saved only what trained: its frozen weights are read from the base the checkpoint names, checked
by content hash (:mod:`decomp.train.base_ref`). :meth:`Run.save_pretrained` writes the trained
model back in HF layout, LoRA folded in.

>>> run = Run.open('runs/probe/sft/seed0')                              # doctest: +SKIP
>>> scores = run.scores_fn()(run.params, run.frozen, run.encoder.encode(groups, 1))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax

from decomp.objectives import Objective
from decomp.train import base_ref
from decomp.train import checkpoint as ckpt_lib
from decomp.train import config as config_lib
from decomp.train import data as data_lib
from decomp.train import logs
from decomp.train import mesh as mesh_lib
from decomp.train import overrides as overrides_lib
from decomp.train import state as state_lib
from decomp.train import step as step_lib


def make_mesh(cfg: config_lib.TrainConfig):
  devices = jax.devices()[:cfg.parallel.num_devices] if cfg.parallel.num_devices else None
  return mesh_lib.make_mesh(cfg.parallel.mesh, devices)


@dataclasses.dataclass
class Run:
  """A trained run, ready to score: its config, model definition and restored weights.

  Attributes:
    config: the run's :class:`~decomp.train.config.TrainConfig` (from ``config.json``).
    objective: its objective; ``score`` names the ranking score it is judged by.
    tokenizer, encoder: the run's tokenizer and its group encoder (:class:`data.Encoder`).
    model: the :class:`~decomp.train.state.ModelState` (graphdef, shardings, spec).
    params, frozen: the restored weights; ``step``: the checkpoint's step.
  """
  workdir: str
  config: config_lib.TrainConfig
  objective: Objective
  tokenizer: Any
  encoder: data_lib.Encoder
  model: state_lib.ModelState
  mesh: Any
  params: Any
  frozen: Any
  step: int
  score: str

  @classmethod
  def open(cls, workdir: str, step: int | None = None, *, overrides: Sequence[str] = (),
           mesh=None, allow_code: bool = False, base_directory: str | None = None) -> 'Run':
    """Opens ``workdir`` at checkpoint ``step`` (default: the newest intact one).

    Args:
      overrides: ``key=value`` changes of how the run is evaluated only
        (:func:`config.free_on_evaluation`, e.g. ``eval_batch_size``, ``mesh.data``).
      mesh: a device mesh (default: the config's mesh on the available devices).
      allow_code: resolve objective parts named by import paths outside the installed packages
        (a received workdir's config.json can name code that runs on import: docs/trust.md).
      base_directory: where the base of a run of adapters or a head is now (default: the path
        its checkpoint recorded); its content must be the one trained on.

    Raises:
      FileNotFoundError: no ``config.json`` or no checkpoint; CorruptCheckpointError; ValueError
        (an override that changes what was trained); BaseChangedError (the checkpoint holds no
        frozen weights and its base is gone or changed).
    """
    workdir = os.path.abspath(workdir)
    cfg = read_config(workdir, allow_code=allow_code)
    if overrides:
      cfg = evaluation_config(cfg, overrides)
    objective, tokenizer, encoder, mesh, model = _model(cfg, state_lib.shape_directory(cfg),
                                                        mesh)
    target = {'params': model.params, 'frozen': model.frozen}
    if _is_legacy(workdir, step):  # one item with the optimizer state: shape it to restore
      tx, _ = step_lib.optimizer_for(cfg)
      target['opt_state'] = abstract_opt_state(tx, model, mesh)
    with ckpt_lib.Checkpoints(workdir, read_only=True) as checkpoints:
      state, meta = checkpoints.restore(target, step)
    if 'frozen' not in state:  # adapters or a head: the frozen weights are the base's
      directory = base_ref.check(meta.get('base'), base_directory)
      built_from = model.spec.checkpoint and os.path.abspath(model.spec.checkpoint)
      if directory != built_from:  # a playground base (shapes were the config's), or moved
        model = state_lib.build_model_state(cfg, mesh, tokenizer, objective, directory)
      state['frozen'] = model.initialize()[1]
    from decomp.train.evaluate import primary_score
    return cls(workdir=workdir, config=cfg, objective=objective, tokenizer=tokenizer,
               encoder=encoder, model=model, mesh=mesh, params=state['params'],
               frozen=state['frozen'], step=int(meta['step']),
               score=primary_score(cfg, objective))

  @classmethod
  def from_model_dir(cls, directory: str, *, preset: str = '', max_length: int = 512,
                     dtype: str = 'float32', score: str | None = None, mesh=None,
                     image_size: int | None = None) -> 'Run':
    """A model directory (HF layout: config.json + safetensors + tokenizer) as an untrained run:
    the same engine, prompt encoder and scoring as a trained run, its weights loaded as they
    are. ``preset`` names a :data:`decomp.models.presets.PRESETS` prompt ('' = decomp's own
    template); ``score`` defaults to ``'sft'`` (``z_y - z_n``, the logit of P(yes));
    ``image_size``: the square side a vision tower reads images at (None: the config's)."""
    model_fields = {'path': os.path.abspath(directory), 'dtype': dtype}
    if image_size is not None:
      model_fields['image_size'] = image_size
    cfg = config_lib.replace(
        config_lib.TrainConfig(name='model_dir'), model=model_fields,
        readout={'preset': preset}, data={'max_length': max_length, 'playground': {}},
        parallel={'mesh': {'data': -1, 'model': 1}})
    objective, tokenizer, encoder, mesh, model = _model(
        cfg, state_lib.checkpoint_directory(cfg), mesh)
    params, frozen = model.initialize()
    return cls(workdir='', config=cfg, objective=objective, tokenizer=tokenizer,
               encoder=encoder, model=model, mesh=mesh, params=params, frozen=frozen, step=0,
               score=score or 'sft')

  @property
  def image_size(self) -> int | None:
    """The side images are read at (None: the model reads no images)."""
    return self.config.model.image_size if self.encoder.vision is not None else None

  def scores_fn(self):
    """``arrays -> {score name: [B, n]}``: the jitted evaluation forward pass."""
    return jax.jit(step_lib.make_eval_step(self.model.graphdef))

  def save_pretrained(self, directory: str, *, max_shard_size: int | str | None = None) -> None:
    """Writes the trained reranker's language model in HF layout (config.json + safetensors,
    LoRA adapters folded in) with its tokenizer, and a LLaVA ViT + projector beside it
    (``multimodal.*``): a directory ``model=DIR`` and transformers read back. The reranker's
    readout (label words, prompt preset) is the config's, not written.

    Raises:
      ValueError: the run scores with weights an HF model has no place for (a random label
        head, a projection direction) or its image tower is a family's own (not exported).
    """
    from flax import nnx

    from decomp.models import save_pretrained
    from decomp.models.build import save_multimodal
    spec = self.model.spec
    if spec.label_head == 'random' or spec.projection:
      raise ValueError(f'{self.workdir}: the run scores with a '
                       f'{"random label head" if spec.label_head == "random" else "projection direction"}'
                       ', which an HF causal LM cannot hold; save_pretrained writes only runs '
                       'that read the LM head')
    if spec.family_config is not None and self.encoder.vision is not None:
      raise ValueError(f'{self.workdir}: exporting a model with its own image tower is not '
                       'supported (only text decoders and a LLaVA ViT + projector)')
    model = nnx.merge(self.model.graphdef, self.params, self.frozen)
    save_pretrained(model.decoder, directory, max_shard_size=max_shard_size)
    self.tokenizer.save_pretrained(directory)
    if spec.vision is not None:
      save_multimodal(directory, model.vision, model.projector, spec.image_token_id)


def _model(cfg: config_lib.TrainConfig, directory: str | None, mesh):
  """``(objective, tokenizer, encoder, mesh, model state)`` of ``cfg`` on ``directory``'s
  shapes (None: the config's random shape); nothing is allocated."""
  objective = config_lib.make_objective(cfg)
  tokenizer = state_lib.resolve_tokenizer(cfg, directory)
  shapes = state_lib.model_shapes(cfg, tokenizer, directory)
  mesh = mesh if mesh is not None else make_mesh(cfg)
  model = state_lib.build_model_state(cfg, mesh, tokenizer, objective, directory)
  return objective, tokenizer, data_lib.Encoder(cfg, tokenizer, shapes.image_input), mesh, model


def read_config(workdir: str, *, allow_code: bool = False) -> config_lib.TrainConfig:
  """The config a workdir was trained with (``config.json``; older flat ones are migrated).
  Import paths outside the installed packages are refused unless ``allow_code``
  (:func:`decomp.trust.check_trusted_import_paths`)."""
  from decomp import trust
  path = os.path.join(workdir, logs.CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{workdir} holds no {logs.CONFIG_FILE}: not a decomp run')
  trust.check_trusted_import_paths(logs.read_json(path), allow_code=allow_code)
  return overrides_lib.from_file(path)


def evaluation_config(trained: config_lib.TrainConfig,
                      overrides: Sequence[str]) -> config_lib.TrainConfig:
  """``trained`` with ``overrides`` that may change only how the run is evaluated: the fields of
  :func:`config.free_on_evaluation` and ``data.playground.num_eval_queries`` (more queries from
  the same world). Anything else raises ValueError naming it."""
  cfg = overrides_lib.apply_overrides(trained, overrides)
  old, new = config_lib.flat_dict(trained), config_lib.flat_dict(cfg)
  free = config_lib.free_on_evaluation()
  for path in old:
    if old[path] == new[path] or path in free:
      continue
    if path == 'data.playground':
      changed = {k for k in set(old[path]) | set(new[path])
                 if old[path].get(k) != new[path].get(k)}
      if changed <= {'num_eval_queries'}:
        continue
      raise ValueError(f'playground keys {sorted(changed)} change the world the run was '
                       "trained in; only 'num_eval_queries' may change")
    raise ValueError(f'{path!r} changes what was trained ({old[path]!r} -> {new[path]!r}); only '
                     f'{sorted(free)} may change')
  return cfg


def abstract_opt_state(tx, model: state_lib.ModelState, mesh):
  """The optimizer state of ``model``'s params as shapes + shardings (nothing allocated)."""
  shardings = state_lib.optimizer_shardings(tx, model.params, mesh, model.rules)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      jax.eval_shape(tx.init, model.params), shardings)


def _is_legacy(workdir: str, step: int | None) -> bool:
  directory = os.path.join(workdir, ckpt_lib.CHECKPOINT_DIR)
  steps = [int(s) for s in os.listdir(directory) if s.isdigit()] if os.path.isdir(
      directory) else []
  if not steps:
    return False
  chosen = step if step is not None else max(steps)
  return os.path.isdir(os.path.join(directory, str(chosen), ckpt_lib.LEGACY_ITEM))
