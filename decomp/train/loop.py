"""``train(config, workdir)``: the training loop, with logs, evaluation, checkpoints and resume.

Order of work (as in big_vision / the flax examples):

1. read and check the config (names, negatives, mesh against the devices, model shapes, the
   evaluation splits) before any compute; then lock the workdir (``decomp.train.workdir``);
2. build the mesh, derive parameter shardings from the models' logical names (``jax.eval_shape``
   of the model: nothing is allocated), then create the state directly sharded with
   ``jit(init, out_shardings=...)``;
3. restore the newest intact checkpoint of the workdir if there is one (exact resume), else
   start; only then is ``config.json`` written;
4. a donated, jitted update step per batch; the previous step's metrics are fetched after the
   next step is dispatched, so logging never stalls the device. Those metrics carry the step's
   finiteness flag (``decomp.train.nonfinite``): a diverged run stops with a named error before
   any later checkpoint or ``results.json`` is written.

Multi-host: call ``jax.distributed.initialize`` first (the CLI does, from ``--coordinator`` etc.).
Every process reads only its share of each batch; process 0 writes the logs and results; Orbax
writes checkpoints cooperatively.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from decomp import _lists
from decomp.train import checkpoint as ckpt_lib
from decomp.train import config as config_lib
from decomp.train import evaluate as evaluate_lib
from decomp.train import logs
from decomp.train import mesh as mesh_lib
from decomp.train import nonfinite
from decomp.train import preflight
from decomp.train import data as data_lib
from decomp.train import state as state_lib
from decomp.train import step as step_lib
from decomp.train import workdir as workdir_lib
from decomp.train.errors import NonFiniteError

RESUMABLE_CHANGES = workdir_lib.RESUMABLE_CHANGES
_check_resumable = workdir_lib.check_resumable


def _shard_batch(arrays: Mapping[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """This process's rows of a batch -> global arrays split over the data axes."""
  return {k: jax.make_array_from_process_local_data(mesh_lib.batch_sharding(mesh, v.ndim), v)
          for k, v in arrays.items()}


class _Progress:
  """tqdm bar with loss, examples/s and ETA (a no-op in quiet mode / non-primary processes)."""

  def __init__(self, enabled: bool, total: int, initial: int):
    self._bar = None
    if enabled:
      from tqdm.auto import tqdm
      self._bar = tqdm(total=total, initial=initial, desc='train', dynamic_ncols=True)

  def update(self, record: Mapping[str, Any]) -> None:
    if self._bar is not None:
      self._bar.set_postfix(loss=f'{record["loss"]:.4f}',
                            ex_s=f'{record.get("examples_per_s", 0.0):.0f}', refresh=False)
      self._bar.update(1)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


def _per_example_columns(step: int, per_doc: Mapping[str, np.ndarray],
                         meta: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Flattens ``[B, n]`` device results and the batch's ids into one row per document."""
  b, n = meta['doc_id'].shape
  cols = {'step': np.full(b * n, step, np.int64),
          'query_id': np.repeat(meta['query_id'], n),
          'doc_id': meta['doc_id'].reshape(-1),
          'position': np.tile(np.arange(n, dtype=np.int32), b),
          'label': meta['label'].reshape(-1).astype(np.int32),
          'doc_kind': meta['doc_kind'].reshape(-1),
          'task': np.repeat(meta['task'], n),
          'modality': np.repeat(meta['modality'], n)}
  valid = meta['where'].reshape(-1)
  for key, value in per_doc.items():
    cols[key] = np.asarray(value, np.float32).reshape(-1)
  return {k: v[valid] for k, v in cols.items()}


def _norms_due(cfg: config_lib.TrainConfig):
  """``step -> bool`` (steps counted from 1, as logged): the steps that run the update step
  with its three global norms (:func:`decomp.train.step.make_train_step`): those whose
  steps.jsonl line is written (every ``log_every``-th and the last) and those that save a
  checkpoint, so the divergence guard has checked the parameters of every checkpoint. Every
  step with ``on_nonfinite='skip_step'``: a non-finite update must be dropped on the step that
  made it, or the non-finite parameters would be kept."""
  if cfg.on_nonfinite == 'skip_step' or cfg.log_every == 1:
    return lambda step: True
  return lambda step: (step % cfg.log_every == 0 or step == cfg.steps
                       or bool(cfg.checkpoint_every and step % cfg.checkpoint_every == 0))


def optimizer(cfg: config_lib.TrainConfig):
  return step_lib.make_optimizer(
      peak=cfg.learning_rate, steps=cfg.steps, warmup_steps=cfg.warmup_steps,
      end_factor=cfg.end_learning_rate_factor, weight_decay=cfg.weight_decay, b1=cfg.b1,
      b2=cfg.b2, clip_norm=cfg.clip_norm)


def abstract_state(cfg: config_lib.TrainConfig, run, tx, mesh):
  """The whole train state as shapes + shardings (nothing allocated): params/frozen from the
  models' logical names, the optimizer state mirroring the params. Returns it and the optimizer
  state's shardings."""
  opt_shardings = state_lib.optimizer_shardings(tx, run.params, mesh, run.rules)
  abstract = {
      'params': run.params, 'frozen': run.frozen,
      'opt_state': jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                jax.eval_shape(tx.init, run.params), opt_shardings)}
  return abstract, opt_shardings


def train(config: config_lib.TrainConfig | str, workdir: str, *,
          overrides: tuple[str, ...] = ()) -> dict:
  """Trains a reranker as ``config`` says; writes and resumes ``workdir``; returns the results.

  Args:
    config: a :class:`TrainConfig`, a preset name or a config file.
    workdir: the run's directory (created). If it holds checkpoints of the same config, training
      continues from the latest one and reaches exactly the parameters of an uninterrupted run.
    overrides: ``key=value`` strings applied to ``config``.

  Returns:
    The dict written to ``workdir/results.json``: ``steps``, ``final`` (last step's log record),
    ``validation`` (last validation metrics), ``test`` (test metrics).
  """
  cfg = config_lib.get_config(config) if isinstance(config, str) else config
  cfg = config_lib.apply_overrides(cfg, overrides)
  primary = jax.process_index() == 0
  preflight.check_config(cfg)
  objective = config_lib.make_objective(cfg)
  tokenizer = state_lib.resolve_tokenizer(cfg)
  state_lib.check_applies(cfg)
  data = data_lib.make_data(cfg, tokenizer, state_lib.data_shapes(cfg, tokenizer).image_input)
  config_lib.validate(cfg, num_devices=jax.device_count(), max_negatives=data.max_negatives,
                      num_processes=jax.process_count())
  preflight.check_splits(cfg, data)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  lock = workdir_lib.WorkdirLock(workdir)
  if primary:  # one run per workdir (the processes of a multi-host run share it)
    lock.acquire()
  try:
    return _train_locked(cfg, workdir, data, tokenizer, objective, primary)
  finally:
    lock.release()


def _train_locked(cfg: config_lib.TrainConfig, workdir: str, data, tokenizer, objective,
                  primary: bool) -> dict:
  """``train`` once the config and data are checked and the workdir is locked."""
  workdir_lib.check_resumable(workdir, cfg)

  devices = jax.devices()[:cfg.num_devices] if cfg.num_devices else None
  mesh = mesh_lib.make_mesh(cfg.mesh, devices)
  run = state_lib.build_model_state(cfg, mesh, tokenizer, objective)
  tx, schedule = optimizer(cfg)

  abstract, opt_shardings = abstract_state(cfg, run, tx, mesh)
  replicated = mesh_lib.replicated(mesh)

  checkpoints = ckpt_lib.Checkpoints(workdir, keep=cfg.keep_checkpoints)
  try:
    state, start, skipped_steps = _initial_state(cfg, workdir, run, tx, checkpoints, abstract,
                                                 opt_shardings)
  except BaseException:
    checkpoints.close()
    raise
  if primary:  # the run can start: record its config, drop what a killed run logged after its
    # last checkpoint
    logs.write_json_atomic(os.path.join(workdir, logs.CONFIG_FILE), config_lib.to_dict(cfg))
    logs.truncate_jsonl(os.path.join(workdir, logs.STEPS_FILE), start)
    logs.truncate_jsonl(os.path.join(workdir, logs.EVAL_FILE), start)
    logs.truncate_examples(workdir, start)

  state_shardings = jax.tree.map(lambda a: a.sharding, state)

  def jitted_step(global_norms: bool):
    return jax.jit(
        nonfinite.guard_step(step_lib.make_train_step(
            run.graphdef, tx, schedule, objective, cl_temperature=cfg.temperature,
            example_grad_norms=cfg.example_grad_norms, doc_chunk=cfg.doc_chunk,
            micro_batches=cfg.accumulate_steps, global_norms=global_norms),
            skip=cfg.on_nonfinite == 'skip_step'),
        in_shardings=(state_shardings['params'], state_shardings['frozen'],
                      state_shardings['opt_state'], replicated, None),
        # Metrics are small: replicated, so every process can read them (multi-host).
        out_shardings=(state_shardings['params'], state_shardings['opt_state'], replicated),
        donate_argnums=(0, 2))

  # Two compiled steps, with and without the global norms; the second compiles on first use.
  train_steps = {True: jitted_step(True), False: jitted_step(False)}
  norms_due = _norms_due(cfg)
  features = None
  if cfg.cache_features:
    from decomp.train.features import FeatureCache
    # A copy: the step donates the params' buffers (the body's features do not read them).
    features = FeatureCache(run, params=jax.tree.map(jnp.copy, state['params']),
                            frozen=state['frozen'], seed=cfg.seed,
                            put=lambda arrays: _shard_batch(arrays, mesh))
  evaluator = evaluate_lib.Evaluator(cfg, run, data, mesh, objective,
                                     transform=features.replace if features else None)

  step_log = logs.JsonLinesLogger(os.path.join(workdir, logs.STEPS_FILE), enabled=primary)
  eval_log = logs.JsonLinesLogger(os.path.join(workdir, logs.EVAL_FILE), enabled=primary)
  example_log = logs.ExampleLogger(workdir, process_index=jax.process_index())
  progress = _Progress(primary and not cfg.quiet, cfg.steps, start)
  params, frozen, opt_state = state['params'], state['frozen'], state['opt_state']
  last_record: dict = {}
  validation: dict = {}
  pending = None  # (step, device metrics, host meta, tokens) of the step before the current one
  last_time = time.perf_counter()

  def finish(item):
    """Fetches one step's metrics (blocks until that step is done) and writes its logs."""
    nonlocal last_time, last_record, skipped_steps
    step, metrics, meta, tokens = item
    scalars, per_doc = jax.device_get((metrics['scalars'], metrics['per_doc']))
    scalars = dict(scalars)
    bad = nonfinite.quantities(scalars.pop(nonfinite.KEY))
    rows = meta['doc_id'].shape[0]  # this process's groups are rows [k * rows, (k+1) * rows)
    first = jax.process_index() * rows
    per_doc = {k: v[first:first + rows] for k, v in per_doc.items()}
    now = time.perf_counter()
    elapsed, last_time = now - last_time, now
    record = {'step': step, **{k: float(v) for k, v in scalars.items()},
              'examples_per_s': meta['doc_id'].size * jax.process_count() / elapsed,
              'tokens_per_s': tokens * jax.process_count() / elapsed, 'step_time_s': elapsed}
    if cfg.on_nonfinite == 'skip_step':
      skipped_steps += bool(bad)
      record.update(skipped=bool(bad), skipped_steps=skipped_steps)
    last_record = record
    if step % cfg.log_every == 0 or step == cfg.steps or bad:
      step_log.log(record)
    if bad and cfg.on_nonfinite == 'error':
      _diverged(cfg, step, bad, checkpoints)
    if cfg.example_log_every and (step % cfg.example_log_every == 0 or step == cfg.steps):
      example_log.write(step, _per_example_columns(step, per_doc, meta))
    progress.update(record)

  try:
    for step in range(start + 1, cfg.steps + 1):
      arrays, meta = data.train_batch((step - 1) * cfg.batch_size, cfg.batch_size,
                                      jax.process_index(), jax.process_count())
      # Under jit the losses cannot check label values: the host does, on every batch.
      arrays['labels'] = _lists.relevance_labels(arrays['labels'], arrays['where'],
                                              context=f'training batch of step {step}: ')
      tokens = int(arrays['attention_mask'].sum())
      if features is not None:
        arrays = features.replace(arrays)
      batch = _shard_batch(arrays, mesh)
      params, opt_state, metrics = train_steps[norms_due(step)](
          params, frozen, opt_state, jnp.asarray(step - 1, jnp.int32), batch)
      if pending is not None:
        finish(pending)
      checkpoints.poll()
      pending = (step, metrics, meta, tokens)
      if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
        finish(pending)
        pending = None
        validation = {'step': step, **evaluator.run('val', params, frozen, cfg.eval_groups)}
        eval_log.log(validation)
        last_time = time.perf_counter()  # throughput counts training only
      if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps:
        if pending is not None:
          finish(pending)
          pending = None
        checkpoints.save(step, {'params': params, 'frozen': frozen, 'opt_state': opt_state},
                         {'data_index': step * cfg.batch_size, 'skipped_steps': skipped_steps})
        last_time = time.perf_counter()
    if pending is not None:
      finish(pending)
    progress.close()
    checkpoints.wait()
    if features is not None:
      features.flush()
    if cfg.eval_every:
      validation = {'step': cfg.steps, **evaluator.run('val', params, frozen, cfg.eval_groups)}
      # A finished run started again re-evaluates but logs the final validation only once.
      if primary and not any(e.get('step') == cfg.steps for e in logs.read_evals(workdir)):
        eval_log.log(validation)
    test = evaluator.run('test', params, frozen, cfg.test_groups) if cfg.final_eval else {}
    if features is not None:
      features.flush()
    if not last_record and primary:
      records = logs.read_steps(workdir)
      last_record = records[-1] if records else {}
    results = {'steps': cfg.steps, 'final': last_record, 'validation': validation, 'test': test,
               'config': cfg.name}
    if primary:
      logs.write_json_atomic(os.path.join(workdir, logs.RESULTS_FILE), results)
    return results
  finally:
    progress.close()
    step_log.close()
    eval_log.close()
    checkpoints.close()


def _initial_state(cfg, workdir, run, tx, checkpoints, abstract,
                   opt_shardings) -> tuple[dict, int, int]:
  """``(state, start step, skipped steps)``: the newest intact checkpoint (corrupt newer steps
  are reported, then moved aside so the run can redo them), else a fresh sharded state."""
  if checkpoints.latest_step() is None:  # a fresh run: create the state directly sharded
    params, frozen = run.initialize()
    return {'params': params, 'frozen': frozen,
            'opt_state': jax.jit(tx.init, out_shardings=opt_shardings)(params)}, 0, 0
  # resume: restore straight into the sharded layout, no initialisation
  state, meta = checkpoints.restore(abstract)
  if checkpoints.skipped:
    checkpoints.set_aside(checkpoints.skipped)
  start = int(meta['step'])
  if start > cfg.steps:
    raise ValueError(f'{workdir} holds a checkpoint of step {start}, beyond steps={cfg.steps}')
  if meta.get('data_index') != start * cfg.batch_size:
    raise ValueError(f'checkpoint {start} of {workdir}: data_index {meta.get("data_index")} '
                     f'does not match step {start} x batch {cfg.batch_size}')
  return state, start, int(meta.get('skipped_steps', 0))


def _diverged(cfg: config_lib.TrainConfig, step: int, quantities: tuple[str, ...],
              checkpoints: ckpt_lib.Checkpoints) -> None:
  latest = checkpoints.latest_step()
  kept = f'the last good checkpoint is step {latest}' if latest else 'no checkpoint was saved'
  raise NonFiniteError(
      f'the run diverged: step {step} gave non-finite {" and ".join(quantities)} '
      f'(learning_rate={cfg.learning_rate}); {kept}, results.json is not written. Lower the '
      'learning rate, or set on_nonfinite=skip_step to skip such updates',
      step=step, quantities=quantities)


# Config keys ``evaluate_workdir`` may change: what is evaluated, not what was trained.
EVALUATION_CHANGES = ('eval_groups', 'test_groups', 'eval_list_size', 'eval_batch_size',
                      'eval_score', 'num_devices', 'mesh', 'layout', 'quiet')
# Playground keys it may change: the size of the evaluation splits (the world stays the same).
PLAYGROUND_EVALUATION_CHANGES = ('num_eval_queries',)


def evaluate_workdir(workdir: str, *, split: str = 'test', step: int | None = None,
                     overrides: tuple[str, ...] = (), output: str | None = None) -> dict:
  """Evaluates a checkpoint of a finished (or interrupted) run again, e.g. on a larger test set.

  The run's ``config.json`` rebuilds the model; ``overrides`` may change only how it is evaluated
  (``EVALUATION_CHANGES``, and ``playground.num_eval_queries``: more queries from the same
  world). Training state is read, never written.

  Args:
    workdir: a training run's directory.
    split: ``'val'`` or ``'test'``.
    step: the checkpoint to read (default: the latest).
    overrides: ``key=value`` strings, e.g. ``('playground.num_eval_queries=2048',)``.
    output: a file name inside ``workdir`` to write the results to (JSON), or None.

  Returns:
    The evaluation dict (as ``results.json['test']``) plus ``step`` and ``overrides``.
  """
  workdir = os.path.abspath(workdir)
  trained = config_lib.from_file(os.path.join(workdir, logs.CONFIG_FILE))
  cfg = config_lib.apply_overrides(trained, overrides)
  for field in dataclasses.fields(cfg):
    old, new = getattr(trained, field.name), getattr(cfg, field.name)
    if field.name == 'playground' and old != new:
      changed = {k for k in set(old) | set(new) if old.get(k) != new.get(k)}
      if not changed <= set(PLAYGROUND_EVALUATION_CHANGES):
        raise ValueError(f'evaluate_workdir: playground keys {sorted(changed)} change the world '
                         f'the run was trained in; only {PLAYGROUND_EVALUATION_CHANGES} may change')
    elif old != new and field.name not in EVALUATION_CHANGES:
      raise ValueError(f'evaluate_workdir: {field.name!r} changes what was trained '
                       f'({old!r} -> {new!r}); only {EVALUATION_CHANGES} may change')
  if split not in ('val', 'test'):
    raise ValueError(f"split must be 'val' or 'test', got {split!r}")
  objective = config_lib.make_objective(cfg)
  tokenizer = state_lib.resolve_tokenizer(cfg)
  data = data_lib.make_data(cfg, tokenizer, state_lib.data_shapes(cfg, tokenizer).image_input)
  devices = jax.devices()[:cfg.num_devices] if cfg.num_devices else None
  mesh = mesh_lib.make_mesh(cfg.mesh, devices)
  run = state_lib.build_model_state(cfg, mesh, tokenizer, objective)
  tx, _ = optimizer(cfg)
  abstract, _ = abstract_state(cfg, run, tx, mesh)
  with ckpt_lib.Checkpoints(workdir, read_only=True) as checkpoints:
    state, meta = checkpoints.restore(abstract, step)
  count = cfg.test_groups if split == 'test' else cfg.eval_groups
  results = {'step': int(meta['step']), 'overrides': list(overrides),
             **evaluate_lib.Evaluator(cfg, run, data, mesh, objective).run(
                 split, state['params'], state['frozen'], count)}
  if output and jax.process_index() == 0:
    logs.write_json_atomic(os.path.join(workdir, output), results)
  return results
