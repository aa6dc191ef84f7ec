"""What a run says while it works: one line per phase before training (mesh, model loaded,
compiling), the training bar (loss, steady step time, tokens/s, ETA). Everything here is silent
under ``eval_log.quiet`` and on processes other than 0."""

from __future__ import annotations

import sys
from typing import Any, Mapping

import jax
import numpy as np

from decomp.train import config as config_lib


def announcer(enabled: bool):
  """``say(message)``: one ``decomp: <message>`` line on stderr, printed above any progress bar
  (``tqdm.write``); nothing when not ``enabled``."""
  if not enabled:
    return lambda message: None
  from tqdm.auto import tqdm
  return lambda message: tqdm.write(f'decomp: {message}', file=sys.stderr)


def human_bytes(count: float) -> str:
  """Decimal units, as disks are sold.

  >>> human_bytes(512), human_bytes(1.2e9), human_bytes(3.1e13)
  ('512 B', '1.2 GB', '31.0 TB')
  """
  for unit in ('B', 'kB', 'MB', 'GB'):
    if count < 1000:
      return f'{count:.0f} {unit}' if unit == 'B' else f'{count:.1f} {unit}'
    count /= 1000
  return f'{count:.1f} TB'


def model_line(cfg: config_lib.TrainConfig, state: Mapping[str, Any], directory: str | None,
               start: int, seconds: float) -> str:
  """'model loaded: N parameters (M trained), dtype, bytes, from where, in how long'."""
  count = lambda tree: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))
  size = sum(a.nbytes for a in jax.tree.leaves((state['params'], state['frozen'])))
  source = directory or f'random weights (seed {cfg.seed})'
  resumed = f', resumed at step {start}' if start else ''
  return (f'model loaded: {count(state["params"]) + count(state["frozen"]):,} parameters '
          f'({count(state["params"]):,} trained), {cfg.model.param_dtype} weights / '
          f'{cfg.model.dtype} activations, {human_bytes(size)}, from {source}{resumed} '
          f'in {seconds:.1f} s')


class Progress:
  """tqdm bar with loss, steady step time, tokens/s and ETA (a no-op in quiet mode /
  non-primary processes). Step time and tokens/s are moving averages that leave out the first
  step of a process (it waits for the compiled step)."""

  def __init__(self, enabled: bool, total: int, initial: int):
    self._bar = None
    self._first = True
    self._step_time = self._tokens_per_s = None
    if enabled:
      from tqdm.auto import tqdm
      self._bar = tqdm(total=total, initial=initial, desc='train', dynamic_ncols=True)

  def update(self, record: Mapping[str, Any]) -> None:
    if self._bar is None:
      return
    if not self._first:
      average = lambda old, new: new if old is None else 0.9 * old + 0.1 * new
      self._step_time = average(self._step_time, record['step_time_s'])
      self._tokens_per_s = average(self._tokens_per_s, record['tokens_per_s'])
    self._first = False
    postfix = {'loss': f'{record["loss"]:.4f}'}
    if self._step_time is not None:
      postfix.update(s_step=f'{self._step_time:.3g}', tok_s=f'{self._tokens_per_s:.0f}')
    self._bar.set_postfix(postfix, refresh=False)
    self._bar.update(1)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
