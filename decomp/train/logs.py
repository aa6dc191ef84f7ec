"""Crash-safe run logs: the step log (JSON lines) and the per-example log (npz shards).

Workdir layout written by ``train``::

  config.json            the TrainConfig (written atomically once the run can start: after
                         every check, the model build and the restore)
  run.lock               pid and host of the run using the workdir (removed when it ends)
  steps.jsonl            one JSON object per logged step (see STEP_KEYS)
  examples/%08d.npz      per-example columns of one logged step (see EXAMPLE_COLUMNS); in a
                         multi-host run process k > 0 writes its rows to %08d.p<k>.npz
  eval.jsonl             one JSON object per validation evaluation
  checkpoints/<step>/    Orbax checkpoints, each with decomp_checksums.json
  checkpoints_corrupt/   corrupt steps a resumed run skipped (kept, never read)
  results.json           final test metrics (written atomically at the end; never for a run
                         that diverged)

A run killed at any moment (SIGKILL) leaves every file readable: JSON lines are appended with one
``write`` + flush + fsync each, and readers skip a torn last line; npz shards and JSON files are
written to a temporary name and renamed into place. When a run resumes from a checkpoint, lines
and shards of steps after that checkpoint (written by the killed run) are dropped, so the logs of
a resumed run equal those of an uninterrupted one.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import tempfile
from typing import Any, Iterable, Mapping

import numpy as np

from decomp._files import fsync_dir, write_atomic

STEPS_FILE = 'steps.jsonl'
EVAL_FILE = 'eval.jsonl'
EXAMPLES_DIR = 'examples'
CONFIG_FILE = 'config.json'
RESULTS_FILE = 'results.json'

# Keys of each steps.jsonl line (``w_*`` are statistics of the signed weight W over positives
# ('pos') and negatives ('neg'); quantiles q10/q50/q90). With ``on_nonfinite='skip_step'`` lines
# also hold ``skipped`` (this step's update was non-finite and dropped) and ``skipped_steps``
# (how many so far); non-finite values are written as null.
STEP_KEYS = (
    'step', 'loss', 'objective', 'learning_rate', 'grad_norm', 'update_norm', 'param_norm',
    'w_pos_mean', 'w_pos_q10', 'w_pos_q50', 'w_pos_q90',
    'w_neg_mean', 'w_neg_q10', 'w_neg_q50', 'w_neg_q90',
    'sft_loss', 'cl_loss', 'examples_per_s', 'tokens_per_s', 'step_time_s')

# Columns of the per-example log, one row per (step, query, document).
EXAMPLE_COLUMNS = {
    'step': 'optimiser step whose batch this row comes from (int64)',
    'query_id': 'query / group id (str)',
    'doc_id': 'document id (str)',
    'position': 'index of the document in its training list, 0 = the positive (int32)',
    'label': 'relevance grade: 0 not relevant, >= 1 relevant (int32)',
    'doc_kind': "'positive', 'hard' or 'random' (str)",
    'task': "task of the query, e.g. 't2i' (str)",
    'modality': "'single', 'cross' or 'fused' (str)",
    'sft_score': 'P(yes) = sigmoid(z_y - z_n) before the update (float32)',
    'cl_score': 'z_y, the raw yes logit (float32)',
    'weight': 'signed W of the objective (float32)',
    'direction_norm': '||grad_h f_D|| at the document hidden state (float32)',
    'update': '|W| * direction_norm (float32)',
    'grad_norm': 'exact per-example parameter-gradient norm (float32; only with '
                 'example_grad_norms)',
}


def _jsonable(value: Any) -> Any:
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    return _jsonable(value.tolist())
  if isinstance(value, (np.floating, float)):
    value = float(value)
    return value if math.isfinite(value) else None
  if isinstance(value, np.integer):
    return int(value)
  if isinstance(value, np.bool_):
    return bool(value)
  return value


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes ``obj`` as JSON to ``path`` via a temporary file and ``os.replace``."""

  def write(f):
    json.dump(_jsonable(obj), f, indent=2, sort_keys=True)
    f.write('\n')

  write_atomic(path, write)


def read_json(path: str) -> Any:
  """Reads a JSON file, naming the file when it is missing or corrupt."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist')
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path} is not valid JSON: {e}') from None


class JsonLinesLogger:
  """Appends one JSON object per line; each line is one write, flushed and fsynced.

  ``enabled=False`` (non-primary processes of a multi-host run) makes every call a no-op.
  """

  def __init__(self, path: str, *, enabled: bool = True):
    self.path = path
    self.enabled = enabled
    self._file = None
    if enabled:
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
      _drop_torn_tail(path)
      # Unbuffered: a write that fails (a full disk) leaves nothing for close() to fail on again.
      self._file = open(path, 'ab', buffering=0)

  def log(self, record: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    line = memoryview((json.dumps(_jsonable(record), sort_keys=False) + '\n').encode())
    try:
      while line:  # a short write (the disk just filled) is followed by one that fails
        line = line[self._file.write(line):]
      os.fsync(self._file.fileno())
    except OSError as e:  # a torn line is dropped by the readers and by the next run
      raise OSError(e.errno, e.strerror, self.path) from e

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _drop_torn_tail(path: str) -> None:
  """Cuts a half-written last line (no trailing newline) left by a killed writer."""
  if not os.path.exists(path):
    return
  with open(path, 'rb+') as f:
    data = f.read()
    if data and not data.endswith(b'\n'):
      f.truncate(data.rfind(b'\n') + 1)


def read_jsonl(path: str) -> list[dict]:
  """Reads JSON lines; a torn last line (killed writer) is skipped, a corrupt inner line is an
  error naming the file and line number."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = f.read().split('\n')
  records = []
  last = len(lines) - 1
  for number, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as e:
      if number == last:  # no newline after it: the writer died mid-line
        break
      raise ValueError(f'{path}:{number + 1}: corrupt JSON line: {e}') from None
  return records


def truncate_jsonl(path: str, last_step: int) -> None:
  """Keeps only the records with ``step <= last_step`` (rewrite via temp + rename)."""
  if not os.path.exists(path):
    return
  kept = [r for r in read_jsonl(path) if r.get('step', -1) <= last_step]
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path), suffix='.tmp')
  with os.fdopen(fd, 'w') as f:
    for record in kept:
      f.write(json.dumps(record) + '\n')
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  fsync_dir(directory)


class ExampleLogger:
  """Writes per-example columns of one step as ``examples/<step:08d>.npz`` (temp + rename).

  In a multi-host run every process writes the rows of its own groups; process ``k > 0`` adds
  ``.p<k>`` to the name, and :func:`read_examples` concatenates in (step, process) order, which
  is the global batch order.
  """

  def __init__(self, workdir: str, *, enabled: bool = True, process_index: int = 0):
    self.directory = os.path.join(workdir, EXAMPLES_DIR)
    self.enabled = enabled
    self.suffix = f'.p{process_index}' if process_index else ''
    if enabled:
      os.makedirs(self.directory, exist_ok=True)
      for stale in glob.glob(os.path.join(self.directory, f'.*{self.suffix}.tmp*')):
        try:
          os.remove(stale)
        except FileNotFoundError:  # another process cleaned it
          pass

  def write(self, step: int, columns: Mapping[str, np.ndarray]) -> str | None:
    """Writes one shard; all columns must have the same length (rows)."""
    if not self.enabled:
      return None
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) > 1:
      raise ValueError(f'per-example columns of step {step} have different lengths: {lengths}')
    path = os.path.join(self.directory, f'{step:08d}{self.suffix}.npz')
    write_atomic(path, lambda f: np.savez(f, **{k: np.asarray(v) for k, v in columns.items()}),
                  binary=True)
    return path


_SHARD_NAME = re.compile(r'(\d+)(?:\.p(\d+))?\.npz')


def example_shards(workdir: str) -> list[tuple[int, str]]:
  """(step, path) of the per-example shards, sorted by step, then process."""
  shards = []
  for path in glob.glob(os.path.join(workdir, EXAMPLES_DIR, '*.npz')):
    match = _SHARD_NAME.fullmatch(os.path.basename(path))
    if match:
      shards.append((int(match.group(1)), int(match.group(2) or 0), path))
  return [(step, path) for step, _, path in sorted(shards)]


def truncate_examples(workdir: str, last_step: int) -> None:
  """Deletes the shards of steps after ``last_step``."""
  for step, path in example_shards(workdir):
    if step > last_step:
      os.remove(path)


def read_examples(workdir: str) -> dict[str, np.ndarray]:
  """All per-example shards of a workdir concatenated into columns (see EXAMPLE_COLUMNS).

  Columns missing from some shards (e.g. ``grad_norm``) are dropped. Returns ``{}`` when there
  are no shards.
  """
  parts: list[dict[str, np.ndarray]] = []
  for _, path in example_shards(workdir):
    try:
      with np.load(path, allow_pickle=False) as data:
        parts.append({k: data[k] for k in data.files})
    except Exception as e:  # zipfile / ValueError: name the shard
      raise ValueError(f'per-example shard {path} is unreadable: {e}') from None
  if not parts:
    return {}
  keys = [k for k in parts[0] if all(k in p for p in parts)]
  return {k: np.concatenate([p[k] for p in parts]) for k in keys}


def read_steps(workdir: str) -> list[dict]:
  """The records of ``workdir/steps.jsonl`` (torn last line skipped)."""
  return read_jsonl(os.path.join(workdir, STEPS_FILE))


def read_evals(workdir: str) -> list[dict]:
  """The records of ``workdir/eval.jsonl``."""
  return read_jsonl(os.path.join(workdir, EVAL_FILE))


def columns(records: Iterable[Mapping[str, Any]]) -> dict[str, np.ndarray]:
  """Turns a list of records into columns (missing values -> NaN), e.g. for plotting."""
  records = list(records)
  keys: list[str] = []
  for r in records:
    keys.extend(k for k in r if k not in keys)
  out = {}
  for k in keys:
    values = [r.get(k) for r in records]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
      out[k] = np.asarray(values, dtype=np.int64)
    elif all(isinstance(v, (int, float)) or v is None for v in values):
      out[k] = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    else:
      out[k] = np.asarray(values, dtype=object)
  return out
