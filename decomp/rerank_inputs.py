"""What ``python -m decomp.rerank`` checks before a model loads, and what a resume must match.

* :func:`check_model_path`, :func:`check_collection_files`, :func:`check_output`: the refusals
  that need no model (a missing BEIR file or split, an unknown preset, a half-written model
  directory, an output path that is a directory or cannot be written, a tag with whitespace).
* :func:`fingerprint`: what a ``.partial`` file is checked against, so a resumed rerank never
  mixes the scores of two checkpoints or of two versions of the data: the checkpoint step used,
  a fingerprint of the weights (each file's size and modification time and a SHA-256 of its first
  and last MiB; a training checkpoint's own ``decomp_checksums.json`` when it has one) and the
  SHA-256 of every input file (corpus, queries, qrels, run). Images read by path are not hashed.
  :func:`check_partial` / :func:`read_partial` compare a ``.partial`` file's header with them.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Iterable

from decomp import _files

HEAD_BYTES = 1 << 20  # bytes of a weight file hashed at each end (a full hash of 15 GB is slow)
WEIGHT_SUFFIXES = ('.safetensors', '.bin', '.json')
TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'vocab.json', 'tokenizer.model')


def is_workdir(path: str) -> bool:
  """A decomp training workdir (``config.json`` + ``checkpoints/``), not a model directory."""
  return os.path.isfile(os.path.join(path, 'config.json')) and os.path.isdir(
      os.path.join(path, 'checkpoints'))


def check_model_path(path: str, preset: str | None, step: int | None) -> None:
  """Refuses, by name, a model path that cannot load: not a directory, a model directory
  without its config, weights or tokenizer, an unknown preset, a preset given with a workdir
  (it reads its own), ``step`` with a model directory or a step the workdir does not hold."""
  from decomp.models.presets import PRESETS
  if preset is not None and preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r}; known: {sorted(PRESETS)}')
  if not os.path.isdir(path):
    raise FileNotFoundError(f'model {path!r}: not a directory (a decomp workdir or a model dir)')
  if is_workdir(path):
    if preset is not None:
      raise ValueError(f'--preset {preset!r}: the workdir {path} reads its own prompt preset')
    steps = _checkpoint_steps(path)
    if not steps:
      raise FileNotFoundError(f'workdir {path}: no checkpoint in {path}/checkpoints')
    if step is not None and step not in steps:
      raise FileNotFoundError(f'workdir {path} has no checkpoint step {step} (it has '
                              f'{sorted(steps)})')
    return
  if step is not None:
    raise ValueError(f'--step {step}: {path} is a model directory, not a workdir with '
                     'checkpoints')
  config = os.path.join(path, 'config.json')
  if not os.path.isfile(config):
    raise FileNotFoundError(f'model {path}: no config.json (neither a decomp workdir nor a '
                            'model directory)')
  from decomp.models.families import read_checkpoint
  read_checkpoint(path)  # an unsupported architecture or a broken config.json, by name
  names = os.listdir(path)
  if not any(n.endswith('.safetensors') for n in names):
    raise FileNotFoundError(f'model {path}: no *.safetensors weights (a half-written copy?)')
  index = os.path.join(path, 'model.safetensors.index.json')
  if os.path.isfile(index):
    with open(index, encoding='utf-8') as f:
      shards = set(json.load(f).get('weight_map', {}).values())
    missing = sorted(s for s in shards if not os.path.isfile(os.path.join(path, s)))
    if missing:
      raise FileNotFoundError(f'model {path}: weight shards {missing} named by '
                              'model.safetensors.index.json are missing')
  if not any(n in names for n in TOKENIZER_FILES):
    raise FileNotFoundError(f'model {path}: no tokenizer ({", ".join(TOKENIZER_FILES)})')


def _checkpoint_steps(workdir: str) -> set[int]:
  directory = os.path.join(workdir, 'checkpoints')
  return {int(s) for s in os.listdir(directory) if s.isdigit()}


def collection_files(directory: str, split: str) -> dict[str, str]:
  """The files of a BEIR collection (``corpus``, ``queries``, ``qrels``); FileNotFoundError
  naming the first one missing."""
  from decomp.data.reading import check_file_name
  check_file_name(split, 'split')
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'--data {directory}: not a directory (a BEIR collection)')
  files = {'corpus': os.path.join(directory, 'corpus.jsonl'),
           'queries': os.path.join(directory, 'queries.jsonl'),
           'qrels': os.path.join(directory, 'qrels', f'{split}.tsv')}
  for key, path in files.items():
    if not os.path.isfile(path):
      hint = ''
      if key == 'qrels' and os.path.isdir(os.path.dirname(path)):
        splits = sorted(n[:-4] for n in os.listdir(os.path.dirname(path)) if n.endswith('.tsv'))
        hint = f' (splits here: {splits}; pick one with --split)'
      raise FileNotFoundError(f'{directory}: no {key} file {path}{hint}')
  return files


def check_output(path: str, *, directory: bool) -> None:
  """Refuses an output that cannot be written: for one collection a run file (not an existing
  directory), for several a directory; its (created) folder must be writable."""
  if directory:
    if os.path.exists(path) and not os.path.isdir(path):
      raise NotADirectoryError(f'--out {path}: several collections write a directory of '
                               '<name>.trec, but this is a file')
    folder = path
  else:
    if os.path.isdir(path):
      raise IsADirectoryError(f'--out {path} is a directory; give a run file name (a directory '
                              'is for several collections)')
    folder = os.path.dirname(os.path.abspath(path))
  _files.make_writable_dir(folder, f'--out {path}')


def check_tag(tag: str) -> None:
  """A TREC run tag is one word: whitespace would shift the columns of every line."""
  if not tag or any(c.isspace() for c in tag):
    raise ValueError(f'--tag {tag!r}: a run tag must be one non-empty word (no whitespace)')


def file_digest(path: str) -> str:
  """SHA-256 of a whole file."""
  with open(path, 'rb') as f:
    return hashlib.file_digest(f, 'sha256').hexdigest()


def _quick_digest(path: str) -> str:
  """SHA-256 of a file's size, modification time and first and last :data:`HEAD_BYTES`."""
  stat = os.stat(path)
  h = hashlib.sha256(f'{stat.st_size}:{stat.st_mtime_ns}:'.encode())
  with open(path, 'rb') as f:
    h.update(f.read(HEAD_BYTES))
    if stat.st_size > 2 * HEAD_BYTES:
      f.seek(-HEAD_BYTES, os.SEEK_END)
      h.update(f.read(HEAD_BYTES))
  return h.hexdigest()


def _tree_files(directory: str) -> Iterable[str]:
  for root, dirs, files in os.walk(directory):
    dirs.sort()
    for name in sorted(files):
      yield os.path.join(root, name)


def weights_fingerprint(model: str, step: int | None) -> str:
  """A fingerprint of the weights a rerank reads: a workdir's checkpoint ``step`` (its
  checksum manifest when written, else every file of the step), or a model directory's
  weight and config files."""
  if is_workdir(model):
    step_dir = os.path.join(model, 'checkpoints', str(step))
    manifest = os.path.join(step_dir, 'decomp_checksums.json')
    files = [manifest] if os.path.isfile(manifest) else list(_tree_files(step_dir))
    root = step_dir
  else:
    files = [os.path.join(model, n) for n in sorted(os.listdir(model))
             if n.endswith(WEIGHT_SUFFIXES) or n in TOKENIZER_FILES]
    root = model
  h = hashlib.sha256()
  for path in files:
    h.update(f'{os.path.relpath(path, root)}={_quick_digest(path)};'.encode())
  return h.hexdigest()


def fingerprint(model: str, step: int | None, files: dict[str, str]) -> dict:
  """``{'step', 'weights', 'inputs': {role: sha256}}`` of one rerank's model and input files."""
  return {'step': step, 'weights': weights_fingerprint(model, step),
          'inputs': {role: file_digest(path) for role, path in sorted(files.items())}}


def mismatch(found: dict, header: dict) -> list[str]:
  """What differs between two headers, by name (``weights``, ``step``, ``input corpus``, ...)."""
  names = []
  for key in sorted(set(found) | set(header)):
    if key == 'inputs':
      old, new = found.get(key) or {}, header.get(key) or {}
      names += [f'input {role} (its content changed)'
                for role in sorted(set(old) | set(new)) if old.get(role) != new.get(role)]
    elif key == 'weights' and found.get(key) != header.get(key):
      names.append('weights (the model files changed)')
    elif found.get(key) != header.get(key):
      names.append(f'{key} ({found.get(key)!r} -> {header.get(key)!r})')
  return names


def _partial_header(path: str) -> tuple[dict | None, bytes]:
  """The header of a partial file (None when there is none or it is empty) and its bytes."""
  if not os.path.exists(path):
    return None, b""
  with open(path, "rb") as f:
    data = f.read()
  first = data[:data.find(b"\n")] if b"\n" in data else b""
  if not first:
    return None, data
  try:
    return json.loads(first.decode("utf-8"))["rerank"], data
  except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
    raise ValueError(f"{path}:1: not a decomp rerank partial file; remove it") from None


def check_partial(path: str, header: dict) -> None:
  """Refuses a partial file written by another rerank: the keys of ``header`` (a subset of
  what it records is enough, e.g. before the model has loaded) must match; the refusal names
  what differs (the weights, the checkpoint step, an edited input file, an argument)."""
  found, _ = _partial_header(path)
  if found is None:
    return
  differs = mismatch({k: found.get(k) for k in header}, header)
  if differs:
    raise ValueError(f"{path} holds the scores of another rerank: {'; '.join(differs)} differ; "
                     "remove it to score again from the start")


def read_partial(path: str, header: dict) -> dict[tuple[str, str], float]:
  """Scores already written by an interrupted rerank with the same ``header``; drops a torn
  last line (a kill mid-write) from the file."""
  found, data = _partial_header(path)
  complete = data[:data.rfind(b"\n") + 1]
  if len(complete) != len(data):
    with open(path, "r+b") as f:
      f.truncate(len(complete))
  if found is None:
    return {}
  check_partial(path, header)
  if set(found) != set(header):
    raise ValueError(f"{path} was written by another version of decomp.rerank (header keys "
                     f"{sorted(found)}); remove it to score again from the start")
  done = {}
  for line_no, line in enumerate(complete.decode("utf-8", "replace").splitlines()[1:], start=2):
    try:
      qid, docid, value = json.loads(line)
      done[str(qid), str(docid)] = float(value)
    except (json.JSONDecodeError, ValueError, TypeError):
      raise ValueError(f"{path}:{line_no}: corrupt partial score line; remove the file") from None
  return done
