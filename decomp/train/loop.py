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

import os
import time
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from decomp import _lists
from decomp.train import base_ref
from decomp.train import checkpoint as ckpt_lib
from decomp.train import config as config_lib
from decomp.train import evaluate as evaluate_lib
from decomp.train import interrupt
from decomp.train import logs
from decomp.train import mesh as mesh_lib
from decomp.train import nonfinite
from decomp.train import overrides as overrides_lib
from decomp.train import preflight
from decomp.train import progress as progress_lib
from decomp.train import data as data_lib
from decomp.train import recipes
from decomp.train import run as run_lib
from decomp.train import state as state_lib
from decomp.train import step as step_lib
from decomp.train import workdir as workdir_lib
from decomp.train import errors
from decomp.train.errors import BaseChangedError, NonFiniteError


def _shard_batch(arrays: Mapping[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """This process's rows of a batch -> global arrays split over the data axes."""
  return {k: jax.make_array_from_process_local_data(mesh_lib.batch_sharding(mesh, v.ndim), v)
          for k, v in arrays.items()}


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
  if cfg.optim.on_nonfinite == 'skip_step' or cfg.eval_log.log_every == 1:
    return lambda step: True
  return lambda step: (step % cfg.eval_log.log_every == 0 or step == cfg.optim.steps
                       or bool(cfg.eval_log.checkpoint_every and step % cfg.eval_log.checkpoint_every == 0))


def abstract_state(run, tx, mesh):
  """The whole train state as shapes + shardings (nothing allocated): params/frozen from the
  models' logical names, the optimizer state mirroring the params. Returns it and the optimizer
  state's shardings."""
  opt_state = run_lib.abstract_opt_state(tx, run, mesh)
  return ({'params': run.params, 'frozen': run.frozen, 'opt_state': opt_state},
          jax.tree.map(lambda a: a.sharding, opt_state))


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
  cfg = recipes.get_config(config) if isinstance(config, str) else config
  cfg = overrides_lib.apply_overrides(cfg, overrides)
  recipes.check_inputs(cfg)
  primary = jax.process_index() == 0
  objective = config_lib.make_objective(cfg)
  # The model's shapes and tokenizer come from JSON alone: a playground base is built only once
  # every check has passed.
  shape_directory = state_lib.shape_directory(cfg)
  tokenizer = state_lib.resolve_tokenizer(cfg, shape_directory)
  shapes = state_lib.model_shapes(cfg, tokenizer, shape_directory)
  data = data_lib.make_data(cfg, tokenizer, shapes.image_input)
  config_lib.validate(cfg, num_devices=jax.device_count(), max_negatives=data.max_negatives,
                      num_processes=jax.process_count())
  preflight.check_splits(cfg, data)
  workdir = preflight.check_workdir(workdir)
  lock = workdir_lib.WorkdirLock(workdir)
  if primary:  # one run per workdir (the processes of a multi-host run share it)
    lock.acquire()
  try:
    workdir_lib.check_resumable(workdir, cfg)
    # The entry point resolves model=playground to its base's directory (built once, cached).
    from decomp.playground.base import model_directory
    try:
      return _train_locked(cfg, workdir, data, tokenizer, objective, primary, model_directory(cfg))
    except jax.errors.JaxRuntimeError as e:
      if (oom := errors.out_of_memory(e, cfg)) is None:
        raise
      raise oom from e
  finally:
    lock.release()


def _train_locked(cfg: config_lib.TrainConfig, workdir: str, data, tokenizer, objective,
                  primary: bool, directory: str | None) -> dict:
  """``train`` once the config and data are checked and the workdir is locked."""
  say = progress_lib.announcer(primary and not cfg.eval_log.quiet)
  mesh = run_lib.make_mesh(cfg)
  say(f'mesh: {" x ".join(f"{k}={v}" for k, v in mesh.shape.items())} over {mesh.size} '
      f'{mesh.devices.flat[0].platform} device(s), layout={cfg.parallel.layout}')
  run = state_lib.build_model_state(cfg, mesh, tokenizer, objective, directory)
  tx, schedule = step_lib.optimizer_for(cfg)

  abstract, opt_shardings = abstract_state(run, tx, mesh)
  replicated = mesh_lib.replicated(mesh)

  # Adapters and heads are saved without the frozen base, which they name instead.
  saved_keys = ('params', 'frozen', 'opt_state') if base_ref.saves_frozen(cfg) else (
      'params', 'opt_state')
  base = None if base_ref.saves_frozen(cfg) else base_ref.reference(directory)
  checkpoints = ckpt_lib.Checkpoints(workdir, keep=cfg.eval_log.keep_checkpoints)
  loading = time.perf_counter()
  try:
    state, start, skipped_steps = _initial_state(cfg, workdir, run, tx, checkpoints, abstract,
                                                 opt_shardings, directory)
  except BaseException:
    checkpoints.close()
    raise
  say(progress_lib.model_line(cfg, state, directory, start, time.perf_counter() - loading))
  if primary:  # the run can start: record its config, drop what a killed run logged after its
    # last checkpoint
    logs.write_json_atomic(os.path.join(workdir, logs.CONFIG_FILE), config_lib.to_dict(cfg))
    logs.truncate_jsonl(os.path.join(workdir, logs.STEPS_FILE), start)
    logs.truncate_jsonl(os.path.join(workdir, logs.EVAL_FILE), start)
    logs.truncate_examples(workdir, start)

  state_shardings = jax.tree.map(lambda a: a.sharding, state)

  def jitted_step(global_norms: bool):
    return step_lib.jit_train_step(cfg, run.graphdef, tx, schedule, objective, state_shardings,
                                   replicated, global_norms=global_norms)

  # Two compiled steps, with and without the global norms; the second compiles on first use.
  train_steps = {True: jitted_step(True), False: jitted_step(False)}
  norms_due = _norms_due(cfg)
  features = None
  if cfg.finetune.cache_features:
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
  progress = progress_lib.Progress(primary and not cfg.eval_log.quiet, cfg.optim.steps, start)
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
    if cfg.optim.on_nonfinite == 'skip_step':
      skipped_steps += bool(bad)
      record.update(skipped=bool(bad), skipped_steps=skipped_steps)
      if skipped_steps > cfg.optim.max_skipped_fraction * cfg.optim.steps:
        step_log.log(record)
        raise NonFiniteError(
            f'the run skipped {skipped_steps} non-finite steps by step {step}, more than '
            f'optim.max_skipped_fraction={cfg.optim.max_skipped_fraction} of its '
            f'{cfg.optim.steps} steps: it is diverging (learning_rate='
            f'{cfg.optim.learning_rate}); lower the learning rate, or raise the fraction',
            step=step, quantities=tuple(bad) or ('loss',))
    last_record = record
    if step % cfg.eval_log.log_every == 0 or step == cfg.optim.steps or bad:
      step_log.log(record)
    if bad and cfg.optim.on_nonfinite == 'error':
      _diverged(cfg, step, bad, checkpoints)
    if cfg.eval_log.example_log_every and (step % cfg.eval_log.example_log_every == 0 or step == cfg.optim.steps):
      example_log.write(step, _per_example_columns(step, per_doc, meta))
    progress.update(record)

  interrupt.defer(True)  # a Ctrl-C stops between steps (decomp.train.interrupt)
  try:
    for step in range(start + 1, cfg.optim.steps + 1):
      interrupt.check(step - 1, checkpoints.latest_step())
      arrays, meta = data.train_batch((step - 1) * cfg.data.batch_size, cfg.data.batch_size,
                                      jax.process_index(), jax.process_count())
      # Under jit the losses cannot check label values: the host does, on every batch.
      arrays['labels'] = _lists.relevance_labels(arrays['labels'], arrays['where'],
                                              context=f'training batch of step {step}: ')
      tokens = int(arrays['attention_mask'].sum())
      if features is not None:
        arrays = features.replace(arrays)
      batch = _shard_batch(arrays, mesh)
      if step == start + 1:
        say('compiling the training step ...')
        compiling = time.perf_counter()
      params, opt_state, metrics = train_steps[norms_due(step)](
          params, frozen, opt_state, jnp.asarray(step - 1, jnp.int32), batch)
      if step == start + 1:
        say(f'compiling the training step: done in {time.perf_counter() - compiling:.1f} s')
      if pending is not None:
        finish(pending)
      checkpoints.poll()
      pending = (step, metrics, meta, tokens)
      if cfg.eval_log.eval_every and step % cfg.eval_log.eval_every == 0 and step != cfg.optim.steps:
        finish(pending)
        pending = None
        validation = {'step': step, **evaluator.run('val', params, frozen, cfg.eval_log.eval_groups)}
        eval_log.log(validation)
        last_time = time.perf_counter()  # throughput counts training only
      if (cfg.eval_log.checkpoint_every and step % cfg.eval_log.checkpoint_every == 0) or step == cfg.optim.steps:
        if pending is not None:
          finish(pending)
          pending = None
        current = {'params': params, 'frozen': frozen, 'opt_state': opt_state}
        checkpoints.save(step, {k: current[k] for k in saved_keys},
                         {'data_index': step * cfg.data.batch_size, 'skipped_steps': skipped_steps,
                          **({'base': base} if base else {})})
        last_time = time.perf_counter()
    if pending is not None:
      finish(pending)
    interrupt.defer(False)
    interrupt.check(cfg.optim.steps, checkpoints.latest_step())
    progress.close()
    checkpoints.wait()
    if features is not None:
      features.flush()
    final_progress = primary and not cfg.eval_log.quiet
    if cfg.eval_log.eval_every:
      validation = {'step': cfg.optim.steps, **evaluator.run(
          'val', params, frozen, cfg.eval_log.eval_groups, progress=final_progress)}
      # A finished run started again re-evaluates but logs the final validation only once.
      if primary and not any(e.get('step') == cfg.optim.steps for e in logs.read_evals(workdir)):
        eval_log.log(validation)
    test = (evaluator.run('test', params, frozen, cfg.eval_log.test_groups,
                          progress=final_progress) if cfg.eval_log.final_eval else {})
    if features is not None:
      features.flush()
    if not last_record and primary:
      records = logs.read_steps(workdir)
      last_record = records[-1] if records else {}
    results = {'steps': cfg.optim.steps, 'final': last_record, 'validation': validation,
               'test': test, 'config': cfg.name, 'skipped_steps': skipped_steps}
    if primary:
      logs.write_json_atomic(os.path.join(workdir, logs.RESULTS_FILE), results)
    return results
  finally:
    interrupt.defer(False)
    progress.close()
    step_log.close()
    eval_log.close()
    checkpoints.close()


def _initial_state(cfg, workdir, run, tx, checkpoints, abstract, opt_shardings,
                   directory: str | None) -> tuple[dict, int, int]:
  """``(state, start step, skipped steps)``: the newest intact checkpoint (corrupt newer steps
  are reported, then moved aside so the run can redo them), else a fresh sharded state. A
  checkpoint without the frozen weights reads them from its base ``directory``, checked against
  the checkpoint's reference."""
  if checkpoints.latest_step() is None:  # a fresh run: create the state directly sharded
    params, frozen = run.initialize()
    return {'params': params, 'frozen': frozen,
            'opt_state': jax.jit(tx.init, out_shardings=opt_shardings)(params)}, 0, 0
  # resume: restore straight into the sharded layout, no initialisation
  state, meta = checkpoints.restore(abstract)
  if checkpoints.skipped:
    checkpoints.set_aside(checkpoints.skipped)
  if 'frozen' not in state:
    base_ref.check(meta.get('base'), directory)
    state['frozen'] = run.initialize()[1]
  start = int(meta['step'])
  if start > cfg.optim.steps:
    raise ValueError(f'{workdir} holds a checkpoint of step {start}, beyond steps={cfg.optim.steps}')
  if meta.get('data_index') != start * cfg.data.batch_size:
    raise ValueError(f'checkpoint {start} of {workdir}: data_index {meta.get("data_index")} '
                     f'does not match step {start} x batch {cfg.data.batch_size}')
  return state, start, int(meta.get('skipped_steps', 0))


def _diverged(cfg: config_lib.TrainConfig, step: int, quantities: tuple[str, ...],
              checkpoints: ckpt_lib.Checkpoints) -> None:
  latest = checkpoints.latest_step()
  kept = f'the last good checkpoint is step {latest}' if latest else 'no checkpoint was saved'
  raise NonFiniteError(
      f'the run diverged: step {step} gave non-finite {" and ".join(quantities)} '
      f'(learning_rate={cfg.optim.learning_rate}); {kept}, results.json is not written. Lower the '
      'learning rate, or set on_nonfinite=skip_step to skip such updates',
      step=step, quantities=quantities)


def evaluate_workdir(workdir: str, *, split: str = 'test', step: int | None = None,
                     overrides: tuple[str, ...] = (), output: str | None = None,
                     allow_code: bool = False) -> dict:
  """Evaluates a checkpoint of a finished (or interrupted) run again, e.g. on a larger test set.

  The run opens with :meth:`Run.open <decomp.train.run.Run.open>`; ``overrides`` may change only
  how it is evaluated (:func:`config.free_on_evaluation`, and ``playground.num_eval_queries``:
  more queries from the same world). Training state is read, never written.

  Args:
    workdir: a training run's directory.
    split: ``'val'`` or ``'test'``.
    step: the checkpoint to read (default: the latest).
    overrides: ``key=value`` strings, e.g. ``('playground.num_eval_queries=2048',)``.
    output: a plain file name (no directory part) to write the results to inside ``workdir``
      (JSON), or None.
    allow_code: run objective code the config names outside the installed packages
      (docs/trust.md).

  Returns:
    The evaluation dict (as ``results.json['test']``) plus ``step`` and ``overrides``.
  """
  if split not in ('val', 'test'):
    raise ValueError(f"split must be 'val' or 'test', got {split!r}")
  if output is not None and (not output or os.path.basename(output) != output
                             or output in ('.', '..')):
    raise ValueError(f'output {output!r}: give a plain file name, written inside the workdir')
  try:
    trained, base_directory = run_lib.read_config(workdir, allow_code=allow_code), None
    if trained.model.path == 'playground' and not base_ref.saves_frozen(trained):
      # Adapters or a head read their frozen weights from the base: rebuilt if the cache lost
      # it (the same key builds the same base).
      from decomp.playground.base import model_directory
      base_directory = model_directory(trained)
    run = run_lib.Run.open(workdir, step, overrides=overrides, allow_code=allow_code,
                           base_directory=base_directory)
  except BaseChangedError:
    raise
  except ValueError as e:
    raise ValueError(f'evaluate_workdir: {e}') from None
  cfg = run.config
  data = data_lib.make_data(cfg, run.tokenizer, run.encoder.vision)
  count = cfg.eval_log.test_groups if split == 'test' else cfg.eval_log.eval_groups
  results = {'step': run.step, 'overrides': list(overrides),
             **evaluate_lib.Evaluator(cfg, run.model, data, run.mesh, run.objective).run(
                 split, run.params, run.frozen, count,
                 progress=jax.process_index() == 0 and not cfg.eval_log.quiet)}
  if output and jax.process_index() == 0:
    logs.write_json_atomic(os.path.join(run.workdir, output), results)
  return results
