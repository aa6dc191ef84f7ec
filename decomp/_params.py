"""Keyword parameters of user-supplied functions: which ones a function takes, checked early."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping


def accepted(fn: Callable, params: Mapping[str, Any]) -> dict[str, Any]:
  """The subset of ``params`` that ``fn`` takes as keywords (all of them with ``**kwargs``)."""
  try:
    signature = inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return dict(params)
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.values()):
    return dict(params)
  return {k: v for k, v in params.items() if k in signature}


def check(kind: str, name: str, fn: Callable, params: Mapping[str, Any]) -> None:
  """Raises naming every key of ``params`` that ``fn`` does not take."""
  unknown = sorted(set(params) - set(accepted(fn, params)))
  if unknown:
    raise ValueError(f"{unknown} are not parameters of the {kind} {name!r}")
