"""``python -m decomp.plan``: what a training config needs in device memory, from shapes alone.

    python -m decomp.plan --config CONFIG --set model=DIR finetune=lora negatives=16 \\
        max_length=3200 --devices 8 --device-memory 80GB --set layout=fsdp

The training step of the config (the same ``--config`` / ``--set`` as ``python -m
decomp.train``) is compiled for the requested mesh and layout on abstract shapes: the model is
``nnx.eval_shape``'d (a checkpoint directory needs its ``config.json`` only: no weight is read,
no tokenizer needed), the batch is ``[batch_size, 1 + negatives, max_length]`` tokens (prompts
padded to ``max_length``, text only), and XLA's ``memory_analysis()`` of the compiled step says
how much it needs. ``--devices N`` simulates N devices on the CPU (jax's CPU device count, set
before its backends start), so an 8-GPU layout is planned on a laptop.

Printed per device, for the config and its variants with and without ``remat=block`` and
``doc_chunk``: trained parameters, frozen weights, optimiser state, gradients (the size of the
trained parameters; they live inside XLA's temporaries), the batch, XLA's temporary bytes and
the step's peak (arguments + outputs + temporaries - donated buffers). Then the largest
``batch_size``, ``negatives`` and ``max_length`` whose step fits ``--device-memory`` (each a
search over compiles, the others as configured).

The peak is XLA's own accounting of the step's buffers. It leaves out the runtime's overhead
(the framework, compiled code, allocator fragmentation: on a GPU keep ~10% free) and the
evaluation step, which needs no gradients and is smaller.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
from typing import Any, Sequence

UNITS = {'': 1, 'B': 1, 'KB': 10**3, 'MB': 10**6, 'GB': 10**9, 'TB': 10**12, 'KIB': 2**10,
         'MIB': 2**20, 'GIB': 2**30, 'TIB': 2**40}
SEARCHABLE = ('batch_size', 'negatives', 'max_length')


def parse_bytes(text: str) -> int:
  """``'80GB'`` -> 80e9, ``'80GiB'`` -> 80 * 2**30, ``'1024'`` -> 1024.

  >>> parse_bytes('80GB'), parse_bytes('1.5 GiB'), parse_bytes('512')
  (80000000000, 1610612736, 512)
  """
  match = re.fullmatch(r'\s*([0-9.]+)\s*([a-zA-Z]*)\s*', str(text))
  if not match or match.group(2).upper() not in UNITS:
    raise ValueError(f'device memory {text!r}: expected a size like 80GB, 24GiB or 16e9')
  return int(float(match.group(1)) * UNITS[match.group(2).upper()])


def human(n: float) -> str:
  """Bytes as GB (powers of 10, as GPUs are sold) with 2 decimals, or MB below 1 GB."""
  return f'{n / 1e9:.2f} GB' if abs(n) >= 1e9 else f'{n / 1e6:.1f} MB'


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
  """Bytes per device of one training step (the largest shard of each array).

  ``peak`` is XLA's: arguments + outputs + temporaries - outputs aliased to donated inputs.
  """
  params: int  # trained parameters
  frozen: int  # frozen weights (the base under LoRA)
  opt_state: int
  gradients: int  # as large as the trained parameters; held inside ``temp``
  batch: int
  temp: int  # XLA's temporaries: activations kept for the backward pass, gradients, workspace
  arguments: int
  outputs: int
  aliased: int
  num_params: int  # parameters of the whole model (all devices)

  @property
  def peak(self) -> int:
    return self.arguments + self.outputs + self.temp - self.aliased


def device_bytes(tree) -> int:
  """Bytes of the largest shard of each ``jax.ShapeDtypeStruct`` (or Variable of one) in
  ``tree``, summed: one device's share."""
  import jax
  import numpy as np
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = tuple(leaf.shape)
    sharding = getattr(leaf, 'sharding', None)
    if sharding is not None:
      shape = sharding.shard_shape(shape)
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return total


def batch_shapes(cfg, mesh) -> dict[str, Any]:
  """The training batch of ``cfg`` as sharded shapes: text prompts padded to ``max_length``."""
  import jax
  import jax.numpy as jnp
  from decomp.train import mesh as mesh_lib
  b, n, t = cfg.data.batch_size, cfg.data.list_size, cfg.data.max_length
  shapes = {'input_ids': ((b, n, t), jnp.int32), 'attention_mask': ((b, n, t), jnp.int32),
            'labels': ((b, n), jnp.int32), 'where': ((b, n), jnp.bool_)}
  return {k: jax.ShapeDtypeStruct(shape, dtype,
                                  sharding=mesh_lib.batch_sharding(mesh, len(shape)))
          for k, (shape, dtype) in shapes.items()}


def _tokenizer(cfg, directory):
  """The run's tokenizer, or None for a checkpoint directory without one (shapes only)."""
  from decomp.train import state as state_lib
  try:
    return state_lib.resolve_tokenizer(cfg, directory)
  except FileNotFoundError:
    if directory is None or cfg.model.tokenizer:
      raise
    return None


@dataclasses.dataclass
class CompiledStep:
  """The training step of a config compiled on abstract shapes, with what it takes."""
  compiled: Any  # (params, frozen, opt_state, step, batch) -> (params, opt_state, metrics)
  model: Any  # decomp.train.state.ModelState (abstract params / frozen, ``initialize``)
  tx: Any
  opt_state: Any  # abstract, sharded
  batch: dict[str, Any]  # abstract, sharded
  mesh: Any


def compile_step(cfg) -> CompiledStep:
  """Compiles the training step of ``cfg`` on abstract shapes (no weight is allocated), on the
  mesh of ``cfg.parallel`` over ``jax.devices()``."""
  import jax
  import jax.numpy as jnp
  from decomp.train import config as config_lib
  from decomp.train import mesh as mesh_lib
  from decomp.train import run as run_lib
  from decomp.train import state as state_lib
  from decomp.train import step as step_lib

  objective = config_lib.make_objective(cfg)
  config_lib.validate(cfg, num_devices=jax.device_count())
  directory = state_lib.shape_directory(cfg)
  mesh = run_lib.make_mesh(cfg)
  model = state_lib.build_model_state(cfg, mesh, _tokenizer(cfg, directory), objective, directory)
  tx, schedule = step_lib.optimizer_for(cfg)
  opt_state = run_lib.abstract_opt_state(tx, model, mesh)
  shardings = {'params': model.params_shardings, 'frozen': model.frozen_shardings,
               'opt_state': jax.tree.map(lambda a: a.sharding, opt_state)}
  replicated = mesh_lib.replicated(mesh)
  step = step_lib.jit_train_step(cfg, model.graphdef, tx, schedule, objective, shardings,
                                 replicated, global_norms=True)
  batch = batch_shapes(cfg, mesh)
  counter = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
  compiled = step.lower(model.params, model.frozen, opt_state, counter, batch).compile()
  return CompiledStep(compiled, model, tx, opt_state, batch, mesh)


def memory_plan(step: CompiledStep) -> MemoryPlan:
  """Per-device memory of a compiled step: the arrays' shards and XLA's memory analysis."""
  import jax
  memory = step.compiled.memory_analysis()
  model = step.model
  trained = device_bytes(model.params)
  num_params = sum(math.prod(a.shape) for a in jax.tree.leaves((model.params, model.frozen)))
  return MemoryPlan(params=trained, frozen=device_bytes(model.frozen),
                    opt_state=device_bytes(step.opt_state), gradients=trained,
                    batch=device_bytes(step.batch), temp=memory.temp_size_in_bytes,
                    arguments=memory.argument_size_in_bytes,
                    outputs=memory.output_size_in_bytes, aliased=memory.alias_size_in_bytes,
                    num_params=num_params)


def plan_step(cfg) -> MemoryPlan:
  """The per-device memory of ``cfg``'s training step (:func:`compile_step`, :func:`memory_plan`)."""
  return memory_plan(compile_step(cfg))


def _with(cfg, **fields):
  """``cfg`` with ``data`` / ``parallel`` fields replaced (by name)."""
  from decomp.train import config as config_lib
  sections: dict[str, dict] = {}
  for name, value in fields.items():
    section = 'parallel' if name in ('remat', 'doc_chunk') else 'data'
    sections.setdefault(section, {})[name] = value
  return config_lib.replace(cfg, **sections)


def largest_fitting(cfg, field: str, budget: int, *, limit: int, report=None) -> int | None:
  """The largest value of ``field`` (``batch_size``, ``negatives`` or ``max_length``) whose step
  peaks within ``budget`` bytes per device, the other fields as in ``cfg``; None if even the
  smallest does not fit. Doubling from the configured value, then bisection: ~2 log2 compiles.
  ``report(value, plan)`` sees each compile."""
  from decomp.train import mesh as mesh_lib
  import jax
  # a batch splits over the data shards and the micro-batches of accumulate_steps
  unit = {'batch_size': (_data_shards(cfg, jax.device_count(), mesh_lib)
                         * cfg.parallel.accumulate_steps),
          'negatives': 1, 'max_length': 64}[field]
  smallest = max(1, cfg.parallel.doc_chunk - 1) if field == 'negatives' else unit

  def fits(value: int) -> bool:
    result = plan_step(_with(cfg, **{field: value}))
    if report:
      report(value, result)
    return result.peak <= budget

  value = max(smallest, getattr(cfg.data, field) // unit * unit)
  if not fits(value):
    high = value
    low = smallest
    if low == high or not fits(low):
      return None
  else:
    low, high = value, None
    while high is None:
      nxt = min(low * 2, limit)
      if nxt == low:
        return low
      if fits(nxt):
        low = nxt
      else:
        high = nxt
  while high - low > unit:  # low fits, high does not
    middle = (low + high) // 2 // unit * unit
    if middle in (low, high):
      break
    low, high = (middle, high) if fits(middle) else (low, middle)
  return low


def _data_shards(cfg, num_devices: int, mesh_lib) -> int:
  sizes = mesh_lib.resolve_mesh_shape(cfg.parallel.mesh, cfg.parallel.num_devices or num_devices)
  return math.prod(sizes.get(a, 1) for a in mesh_lib.BATCH_AXES)


def variants(cfg) -> list[tuple[str, Any]]:
  """The config as given and with ``remat`` none / block and ``doc_chunk`` 0 / K (K: its own,
  else 4 or the list size), each once."""
  chunk = cfg.parallel.doc_chunk or min(4, cfg.data.list_size)
  out, seen = [('as configured', cfg)], {(cfg.parallel.remat, cfg.parallel.doc_chunk)}
  for remat in ('none', 'block'):
    for doc_chunk in (0, chunk):
      if (remat, doc_chunk) not in seen:
        seen.add((remat, doc_chunk))
        out.append((f'remat={remat} doc_chunk={doc_chunk}',
                    _with(cfg, remat=remat, doc_chunk=doc_chunk)))
  return out


ROWS = (('trained parameters', 'params'), ('frozen weights', 'frozen'),
        ('optimizer state', 'opt_state'), ('gradients (in temporaries)', 'gradients'),
        ('batch', 'batch'), ('XLA temporaries', 'temp'), ('peak', 'peak'))


def table(plans: Sequence[tuple[str, MemoryPlan]], budget: int | None) -> str:
  """A markdown table: one column per plan, one row per quantity, per device."""
  lines = ['| per device | ' + ' | '.join(name for name, _ in plans) + ' |',
           '|---|' + '---:|' * len(plans)]
  for label, key in ROWS:
    lines.append(f'| {label} | ' + ' | '.join(human(getattr(p, key)) for _, p in plans) + ' |')
  if budget:
    lines.append(f'| fits {human(budget)} | ' + ' | '.join(
        'yes' if p.peak <= budget else 'no' for _, p in plans) + ' |')
  return '\n'.join(lines)


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m decomp.plan',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='playground',
                      help='preset name or a .py/.json file (as python -m decomp.train)')
  parser.add_argument('--set', dest='overrides', action='append', default=[], nargs='+',
                      metavar='KEY=VALUE', help='override config keys (as python -m decomp.train)')
  parser.add_argument('--devices', type=int, default=0,
                      help='simulate this many devices on the CPU (default: the real devices)')
  parser.add_argument('--device-memory', default='',
                      help='memory of one device, e.g. 80GB: say what fits and search the '
                      'largest batch_size / negatives / max_length')
  parser.add_argument('--search', default=','.join(SEARCHABLE),
                      help='fields to search with --device-memory (comma-separated; "" = none)')
  parser.add_argument('--no-variants', action='store_true',
                      help='compile the config as given only (not its remat / doc_chunk variants)')
  parser.add_argument('--debug', action='store_true', help='show tracebacks')
  return parser.parse_args(argv)


def simulate_devices(count: int) -> None:
  """Makes jax see ``count`` CPU devices (and no accelerator): before its backends start."""
  import jax
  from jax._src import xla_bridge
  if xla_bridge.backends_are_initialized():
    raise RuntimeError('simulate_devices must run before jax starts its backends')
  jax.config.update('jax_platforms', 'cpu')
  jax.config.update('jax_num_cpu_devices', count)


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.devices:
    simulate_devices(args.devices)
  try:
    return _main(args)
  except (ValueError, KeyError, FileNotFoundError) as e:
    if args.debug:
      raise
    print('error: ' + ' '.join(str(e).split()), file=sys.stderr)
    return 2


def _main(args) -> int:
  import jax
  from decomp.train import overrides as overrides_lib
  from decomp.train import recipes
  budget = parse_bytes(args.device_memory) if args.device_memory else None
  overrides = [item for group in args.overrides for item in group]
  cfg = overrides_lib.apply_overrides(recipes.get_config(args.config), overrides)
  d = cfg.data
  print(f'model {cfg.model.path} ({cfg.model.dtype} compute, {cfg.model.param_dtype} weights), '
        f'finetune {cfg.finetune.trains}; {jax.device_count()} {jax.devices()[0].platform} '
        f'devices, mesh {cfg.parallel.mesh}, layout {cfg.parallel.layout}; batch '
        f'{d.batch_size} x {d.list_size} documents x {d.max_length} tokens', flush=True)
  plans = []
  for name, variant in ([('as configured', cfg)] if args.no_variants else variants(cfg)):
    plans.append((name, plan_step(variant)))
    print(f'  compiled {name}: peak {human(plans[-1][1].peak)}', flush=True)
  print(f'{plans[0][1].num_params / 1e9:.3f}B parameters; remat={cfg.parallel.remat}, '
        f'doc_chunk={cfg.parallel.doc_chunk} as configured\n')
  print(table(plans, budget))
  if budget:
    for field in [f for f in args.search.split(',') if f]:
      if field not in SEARCHABLE:
        raise ValueError(f'--search {field!r}: expected some of {list(SEARCHABLE)}')
      limit = {'batch_size': 4096, 'negatives': 1023, 'max_length': 131072}[field]
      best = largest_fitting(cfg, field, budget, limit=limit)
      print(f'largest {field} that fits {human(budget)} (the rest as configured): '
            f'{best if best is not None else "none"}', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
