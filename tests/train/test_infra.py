"""Config parsing/validation, crash-safe logs, mesh construction and Orbax round trips."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from decomp.train import checkpoint as ckpt_lib
from decomp.train import config as config_lib
from decomp.train import overrides as overrides_lib
from decomp.train import recipes
from decomp.train import logs
from decomp.train import mesh as mesh_lib


# --- config ---------------------------------------------------------------------------------------

def test_overrides_coerce_types():
  cfg = recipes.get_config('playground_quick')
  cfg = overrides_lib.apply_overrides(cfg, [
      'steps=7', 'learning_rate=1e-2', 'quiet=true', 'weight=cl', 'mesh.data=4', 'mesh.model=2',
      'finetune=lora', 'lora_targets=q_proj,v_proj', 'weight_kwargs={"tau": 0.2}', 'seed=3'])
  assert cfg.optim.steps == 7 and isinstance(cfg.optim.steps, int)
  assert cfg.optim.learning_rate == 0.01 and cfg.eval_log.quiet is True and cfg.objective.weight == 'cl'
  assert cfg.parallel.mesh == {'data': 4, 'model': 2}
  assert cfg.finetune.lora_targets == ('q_proj', 'v_proj')
  assert cfg.objective.weight_kwargs == {'tau': 0.2} and cfg.seed == 3
  # The preset itself is untouched.
  assert recipes.get_config('playground_quick').optim.steps != 7


@pytest.mark.parametrize('override, message', [
    ('stpes=3', "unknown config key 'stpes'; did you mean steps"),
    ('steps=three', "config optim.steps: cannot read 'three' as an integer"),
    ('quiet=maybe', 'as a boolean'),
    ('steps', 'not of the form key=value'),
    ('steps.x=1', 'not a mapping field'),
])
def test_bad_overrides(override, message):
  with pytest.raises((KeyError, ValueError), match=message):
    overrides_lib.apply_overrides(config_lib.TrainConfig(), [override])


def test_config_json_round_trip(tmp_path):
  cfg = overrides_lib.apply_overrides(recipes.get_config('playground'), ['weight=tau_mask',
                                                                          'weight_kwargs.tau=0.2'])
  path = tmp_path / 'config.json'
  logs.write_json_atomic(str(path), config_lib.to_dict(cfg))
  assert overrides_lib.from_file(str(path)) == cfg
  (tmp_path / 'cfg.py').write_text(
      'from decomp.train import config\n'
      'def get_config():\n'
      '  return config.replace(config.TrainConfig(), optim={"steps": 5}, data={"negatives": 2})\n')
  got = recipes.get_config(str(tmp_path / 'cfg.py'))
  assert (got.optim.steps, got.data.negatives, got.list_size) == (5, 2, 3)
  (tmp_path / 'bad.json').write_text('{"steps": 5, "bogus": 1}')
  with pytest.raises(KeyError, match='bad.json.*bogus'):  # a flat (pre-section) file, migrated
    overrides_lib.from_file(str(tmp_path / 'bad.json'))
  with pytest.raises(ValueError, match='unknown config'):
    recipes.get_config('nope')


@pytest.mark.parametrize('override, kwargs, message', [
    (['weight=sfft'], {}, "unknown weight 'sfft'"),
    (['direction=up'], {}, "unknown direction 'up'"),
    (['weight_kwargs.bogus=1'], {}, r"\['bogus'\] are not parameters of the weight 'sft'"),
    (['weight=decomp.weights:sft'], {}, "no loss to log as `loss`"),
    (['objective=decomp.weights:sft'], {}, "objective must be a registered name"),
    (['negatives=9'], {'max_negatives': 5}, 'offers only 5 negatives'),
    (['negatives=0'], {}, 'data.negatives=0: must be >= 1'),
    (['mesh.data=3'], {'num_devices': 8}, 'does not divide|uses 3 devices'),
    (['mesh={"data": -1, "model": 3}'], {'num_devices': 8}, 'does not divide the 8 devices'),
    (['batch_size=6', 'mesh.data=4'], {'num_devices': 4}, 'batch_size=6.*divisible'),
    (['layout=pipeline'], {}, 'layout'),
    (['finetune=some'], {}, 'finetune.trains'),
    (['dtype=float8'], {}, 'dtype'),
    (['steps=0'], {}, 'steps=0'),
    (['train_pool=-1'], {}, 'train_pool=-1'),
    (['label_head=random', 'direction=cl_logprob'], {}, "reads the vocabulary log-normaliser"),
    (['axis_rules={"embed": "fsdp"}'], {}, "'embed' maps to \\['fsdp'\\], not axes of mesh"),
])
def test_validate_rejects(override, kwargs, message):
  with pytest.raises(ValueError, match=message):  # when the section is built, or by validate
    cfg = overrides_lib.apply_overrides(recipes.get_config('playground_quick'), override)
    config_lib.validate(cfg, **kwargs)


def test_validate_accepts_presets_and_import_paths():
  for name in recipes.NAMED_CONFIGS:
    cfg = recipes.get_config(name)
    # Each named config validates against data that offers as many negatives as it asks for.
    config_lib.validate(cfg, num_devices=8, max_negatives=max(8, cfg.data.negatives))
  cfg = overrides_lib.apply_overrides(recipes.get_config('playground_quick'),
                                   ['direction=decomp.directions:cl'])
  config_lib.validate(cfg)
  assert config_lib.to_dict(cfg)['objective']['direction'] == 'decomp.directions:cl'
  assert config_lib.make_objective(cfg).rank_by == 'sft'  # a bare function declares nothing
  # temperature reaches the CL weight only.
  cl_cfg = config_lib.replace(cfg, objective={'weight': 'cl', 'temperature': 0.5})
  assert config_lib.make_objective(cl_cfg).weight.params == {'temperature': 0.5}


def test_train_pool_is_one_training_set_visited_in_each_seeds_order():
  """train_pool=N: every seed reads the same N playground groups per epoch, in its own order;
  without a pool each seed reads its own stretch of the stream (no group in common)."""
  from decomp.train import data as data_lib

  def first_groups(count, *overrides):
    cfg = overrides_lib.apply_overrides(recipes.get_config('playground_quick'), list(overrides))
    source = data_lib.make_source(cfg)
    return [source.train_group(i).query_id for i in range(count)]

  pooled = {seed: first_groups(12, 'train_pool=6', f'seed={seed}') for seed in (0, 1)}
  for ids in pooled.values():
    assert sorted(ids[:6]) == sorted(ids[6:])  # two epochs of the same six groups
  assert sorted(pooled[0][:6]) == sorted(pooled[1][:6])
  assert pooled[0] != pooled[1]  # the order is the seed's
  assert first_groups(12, 'train_pool=6', 'seed=0') == pooled[0]  # and a pure function of it
  streams = {seed: first_groups(6, f'seed={seed}') for seed in (0, 1)}
  assert len(set(streams[0]) | set(streams[1])) == 12
  assert len(set(first_groups(12, 'train_pool=12', 'seed=0'))) == 12


# --- logs -----------------------------------------------------------------------------------------

def test_step_log_survives_torn_line_and_truncates(tmp_path):
  workdir = str(tmp_path)
  with logs.JsonLinesLogger(os.path.join(workdir, logs.STEPS_FILE)) as log:
    for step in range(1, 5):
      log.log({'step': step, 'loss': np.float32(1.0 / step), 'nan': float('nan')})
  with open(os.path.join(workdir, logs.STEPS_FILE), 'a') as f:
    f.write('{"step": 5, "lo')  # a writer killed mid-line
  records = logs.read_steps(workdir)
  assert [r['step'] for r in records] == [1, 2, 3, 4]
  assert records[1]['loss'] == pytest.approx(0.5) and records[0]['nan'] is None
  # Appending again first cuts the torn tail, so the file stays valid JSON lines.
  with logs.JsonLinesLogger(os.path.join(workdir, logs.STEPS_FILE)) as log:
    log.log({'step': 5, 'loss': 0.1})
  assert [r['step'] for r in logs.read_steps(workdir)] == [1, 2, 3, 4, 5]
  logs.truncate_jsonl(os.path.join(workdir, logs.STEPS_FILE), 3)
  cols = logs.columns(logs.read_steps(workdir))
  np.testing.assert_array_equal(cols['step'], [1, 2, 3])
  assert cols['step'].dtype == np.int64
  # A corrupt line in the middle is an error naming the file and line.
  with open(os.path.join(workdir, logs.STEPS_FILE), 'a') as f:
    f.write('garbage\n{"step": 9}\n')
  with pytest.raises(ValueError, match=r'steps.jsonl:4: corrupt'):
    logs.read_steps(workdir)


def test_example_shards(tmp_path):
  workdir = str(tmp_path)
  writer = logs.ExampleLogger(workdir)
  for step in (10, 20, 30):
    writer.write(step, {'step': np.full(3, step), 'doc_id': np.array(['a', 'b', 'c']),
                        'weight': np.arange(3, dtype=np.float32) * step})
  data = logs.read_examples(workdir)
  np.testing.assert_array_equal(data['step'], [10] * 3 + [20] * 3 + [30] * 3)
  assert data['doc_id'].dtype.kind == 'U' and list(data['doc_id'][:3]) == ['a', 'b', 'c']
  np.testing.assert_allclose(data['weight'][-3:], [0, 30, 60])
  logs.truncate_examples(workdir, 20)
  assert set(logs.read_examples(workdir)['step']) == {10, 20}
  with pytest.raises(ValueError, match='different lengths'):
    writer.write(40, {'a': np.zeros(2), 'b': np.zeros(3)})
  with open(os.path.join(workdir, 'examples', '00000050.npz'), 'wb') as f:
    f.write(b'not a zip')
  with pytest.raises(ValueError, match='00000050.npz is unreadable'):
    logs.read_examples(workdir)
  assert logs.read_examples(str(tmp_path / 'empty')) == {}


def test_disabled_loggers_write_nothing(tmp_path):
  logs.JsonLinesLogger(str(tmp_path / 's.jsonl'), enabled=False).log({'step': 1})
  logs.ExampleLogger(str(tmp_path), enabled=False).write(1, {'a': np.zeros(1)})
  assert os.listdir(tmp_path) == []


# --- mesh -----------------------------------------------------------------------------------------

def test_mesh_shapes():
  assert jax.device_count() == 8
  assert mesh_lib.resolve_mesh_shape({'data': -1, 'model': 2}, 8) == {'data': 4, 'model': 2}
  mesh = mesh_lib.make_mesh({'data': -1, 'model': 2})
  assert dict(mesh.shape) == {'data': 4, 'model': 2}
  assert mesh_lib.data_parallel_size(mesh) == 4
  x = jax.device_put(np.arange(16.0).reshape(8, 2), mesh_lib.batch_sharding(mesh, 2))
  assert x.sharding.spec == P('data', None)
  assert x.addressable_shards[0].data.shape == (2, 2)
  with pytest.raises(ValueError, match='at most one axis may be -1'):
    mesh_lib.resolve_mesh_shape({'data': -1, 'model': -1}, 8)
  with pytest.raises(ValueError, match='uses 6 devices but 8'):
    mesh_lib.resolve_mesh_shape({'data': 3, 'model': 2}, 8)
  with pytest.raises(ValueError, match="axis 'model' has size 0"):
    mesh_lib.resolve_mesh_shape({'data': -1, 'model': 0}, 8)
  mesh_fsdp = mesh_lib.make_mesh({'data': 2, 'fsdp': 4})
  assert mesh_lib.batch_sharding(mesh_fsdp).spec == P(('data', 'fsdp'))


# --- checkpoints ----------------------------------------------------------------------------------

def test_small_replicated_arrays_are_saved_whole_and_large_ones_in_replica_slices(tmp_path,
                                                                                  monkeypatch):
  """Orbax cuts an array replicated over several devices into one slice per replica, each by an
  eager jax op; below MIN_REPLICA_SLICE_BYTES a slice costs more than it saves, and the
  checkpoint writes the array whole. Both round-trip."""
  from orbax.checkpoint._src.serialization import replica_slices
  sliced = []
  data = replica_slices.ReplicaSlice.data

  def counting(self):
    if self.slice_args is not None:
      sliced.append(self.slice_args)
    return data(self)

  monkeypatch.setattr(replica_slices.ReplicaSlice, 'data', counting)
  mesh = mesh_lib.make_mesh({'data': 8})
  replicated = NamedSharding(mesh, P())
  small = jax.device_put(jnp.arange(1024.0).reshape(32, 32), replicated)
  rows = 2 * ckpt_lib.MIN_REPLICA_SLICE_BYTES // 4 // 1024 * 8  # 2x the threshold per slice
  large = jax.device_put(jnp.ones((rows, 1024)), replicated)
  for name, array, expect_sliced in (('small', small, False), ('large', large, True)):
    sliced.clear()
    with ckpt_lib.Checkpoints(str(tmp_path / name)) as ckpts:
      ckpts.save(1, {'params': {'w': array}, 'opt_state': {'count': jnp.int32(1)}}, {})
      ckpts.wait()
    assert bool(sliced) == expect_sliced, (name, len(sliced))
    state, _ = ckpt_lib.load_state(str(tmp_path / name))
    np.testing.assert_array_equal(state['params']['w'], np.asarray(array))


def test_checkpoint_round_trip_with_shardings(tmp_path):
  mesh = mesh_lib.make_mesh({'data': 4, 'model': 2})
  w = jax.device_put(jnp.arange(32.0).reshape(8, 4), NamedSharding(mesh, P('data', 'model')))
  state = {'params': {'w': w, 'b': jnp.ones(3, jnp.bfloat16)},
           'frozen': {'rng': jax.random.key_data(jax.random.key(7))},
           'opt_state': {'count': jnp.int32(3)}}
  with ckpt_lib.Checkpoints(str(tmp_path), keep=2) as ckpts:
    assert ckpts.latest_step() is None
    for step in (5, 10, 15):
      ckpts.save(step, jax.tree.map(lambda a: a * step if a.dtype != jnp.uint32 else a, state),
                 {'data_index': step * 8})
    ckpts.wait()
    assert ckpts.all_steps() == [10, 15]
  # Restore on a different layout: the abstract state's shardings win.
  other = NamedSharding(mesh, P(None, 'data'))
  abstract = ckpt_lib.abstract_like(state)
  abstract['params']['w'] = jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=other)
  with ckpt_lib.Checkpoints(str(tmp_path)) as ckpts:
    restored, meta = ckpts.restore(abstract)
  assert meta == {'step': 15, 'data_index': 120}
  assert restored['params']['w'].sharding.spec == P(None, 'data')
  np.testing.assert_array_equal(restored['params']['w'], np.arange(32.0).reshape(8, 4) * 15)
  assert restored['params']['b'].dtype == jnp.bfloat16
  np.testing.assert_array_equal(restored['frozen']['rng'], state['frozen']['rng'])
  # The model item restores alone (Run.open never shapes an optimizer).
  with ckpt_lib.Checkpoints(str(tmp_path)) as ckpts:
    alone, _ = ckpts.restore({k: abstract[k] for k in ('params', 'frozen')})
  assert set(alone) == {'params', 'frozen'}
  # A restore target that does not match names the checkpoint.
  abstract['params']['w'] = jax.ShapeDtypeStruct((5, 4), jnp.float32, sharding=other)
  with ckpt_lib.Checkpoints(str(tmp_path)) as ckpts:
    with pytest.raises(ValueError, match=r"checkpoints/15: array params/w is "
                       r'float32\[8, 4\], the run expects float32\[5, 4\]'):
      ckpts.restore(abstract)


# --- CLI ------------------------------------------------------------------------------------------

def test_cli_reports_bad_config(tmp_path, capsys):
  from decomp.train.__main__ import main, parse_args
  args = parse_args(['--workdir', 'w', '--set', 'steps=3', 'weight=cl', '--set', 'seed=2',
                     '--quiet'])
  assert args.overrides == [['steps=3', 'weight=cl'], ['seed=2']] and args.quiet
  assert main(['--workdir', str(tmp_path / 'w'), '--set', 'stpes=3']) == 2
  assert "unknown config key 'stpes'; did you mean steps" in capsys.readouterr().err
  assert main(['--workdir', str(tmp_path / 'w'), '--config', 'nope']) == 2
  assert not (tmp_path / 'w').exists()


def test_package_exports_plain_functions_and_keeps_submodules(tmp_path):
  import decomp
  import decomp.train as package
  import decomp.train.logs as logs_module
  from decomp.train.loop import train
  assert package.train is train and logs_module is logs
  assert decomp.train is package and not callable(decomp.train)
  with pytest.raises(ValueError, match="unknown weight 'nope'"):
    decomp.train.train(overrides_lib.apply_overrides(config_lib.TrainConfig(), ['weight=nope']),
                       str(tmp_path / 'w'))
