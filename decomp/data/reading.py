"""What every reader of decomp.data shares: per-file counts, row errors, data problems.

Two kinds of trouble, counted separately, nothing dropped silently:

* a *malformed row* (bad JSON, a missing field, a non-numeric score) is a :class:`RowError`.
  ``errors="raise"`` (default) raises ``ValueError("<file>:<line>: <what>")``;
  ``errors="skip"`` skips the row and counts it per reason in the file's :class:`LoadStats`.
* a *data problem* is a well-formed row that disagrees with the rest of the collection
  (a duplicate id, qrels for an unknown document, a run naming an unknown document, a query
  without judged candidates). It is counted in :class:`Problems` (with the first messages, each
  naming file and line where there is one); ``strict=True`` makes each an error instead.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
from typing import Any, Callable, Iterator

_log = logging.getLogger(__name__)
MAX_MESSAGES = 20


@dataclasses.dataclass
class LoadStats:
  """What a read did: every non-blank line is either loaded or skipped (with its reason)."""

  path: str = ""
  lines: int = 0  # non-blank lines seen
  blank_lines: int = 0
  loaded: int = 0
  skipped: int = 0
  reasons: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  messages: list = dataclasses.field(default_factory=list)  # the first few error messages

  def summary(self) -> str:
    text = f"{self.path}: {self.loaded} rows loaded, {self.skipped} rows skipped"
    if self.reasons:
      text += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(self.reasons.items())) + ")"
    return text


class RowError(ValueError):
  """A malformed row; ``reason`` is a short category used for counting skips."""

  def __init__(self, message: str, reason: str):
    super().__init__(message)
    self.reason = reason


class DataProblem(ValueError):
  """A data problem raised in strict mode; ``kind`` is its category."""

  def __init__(self, message: str, kind: str):
    super().__init__(message)
    self.kind = kind


@dataclasses.dataclass
class Problems:
  """Counts of data problems by kind, with the first messages (``strict``: raise instead)."""

  strict: bool = False
  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  messages: list = dataclasses.field(default_factory=list)

  def report(self, kind: str, message: str) -> None:
    if self.strict:
      raise DataProblem(f"{message} ({kind}; pass strict=False to count it instead)", kind)
    self.counts[kind] += 1
    if len(self.messages) < MAX_MESSAGES:
      self.messages.append(message)

  def summary(self) -> str:
    if not self.counts:
      return "no data problems"
    return ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items()))


def read_json_file(path: str) -> Any:
  """A whole JSON file (a small description like ``collection.json``); a byte that is not
  UTF-8 or a JSON error raises ``ValueError("<file>:<line>: <what>")``."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise ValueError(f"{path}: unreadable ({e.strerror or e})") from None
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    raise ValueError(f"{path}:{line}: not UTF-8 text (byte {e.start}: "
                     f"{data[e.start:e.start + 4]!r})") from None
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}:{e.lineno}: malformed JSON: {e.msg} (column {e.colno})") from None


def check_file_name(name: str, what: str) -> str:
  """``name`` if it is one plain file name (a split's ``qrels/<split>.tsv``), never a path out
  of its folder such as ``../../run``."""
  if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name
      or "\\" in name or "\0" in name or (os.altsep and os.altsep in name)):
    raise ValueError(f"{what} {name!r} must be a plain name (no '/', '..' or empty name)")
  return name


def check_errors_mode(errors: str) -> None:
  if errors not in ("raise", "skip"):
    raise ValueError(f"errors={errors!r}: use 'raise' or 'skip'")


def read_rows(path: str, parse: Callable[[Any, int], Any], *, errors: str = "raise",
              stats: LoadStats | None = None, json_lines: bool = True,
              skip_header: Callable[[str], bool] | None = None) -> Iterator[tuple[int, Any]]:
  """Streams ``(line_no, parse(row, line_no))`` over the non-blank lines of ``path``.

  ``row`` is the decoded JSON object (``json_lines``) or the raw line without its newline.
  ``parse`` raises :class:`RowError` for a malformed row: an error naming ``path:line`` or, with
  ``errors="skip"``, a skip counted in ``stats``. ``skip_header(line)`` says whether the first
  non-blank line is a header (not counted as a row).
  """
  check_errors_mode(errors)
  stats = stats if stats is not None else LoadStats()
  stats.path = path
  first = True
  # Bytes, decoded line by line: a row that is not UTF-8 is a row error (file:line), not a
  # UnicodeDecodeError of the whole read.
  with open(path, "rb") as f:
    for line_no, raw in enumerate(f, start=1):
      if not raw.strip():
        stats.blank_lines += 1
        continue
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        line = None
        bad = RowError(f"not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 4]!r})",
                       "not utf-8")
      if first and line is not None:
        first = False
        if skip_header is not None and skip_header(line):
          continue
      stats.lines += 1
      try:
        if line is None:
          raise bad
        if json_lines:
          try:
            row = json.loads(line)
          except json.JSONDecodeError as e:
            raise RowError(f"malformed JSON: {e}", "malformed json") from e
        else:
          row = line.rstrip("\r\n")
        value = parse(row, line_no)
      except RowError as e:
        message = f"{path}:{line_no}: {e}"
        if errors == "raise":
          raise ValueError(message) from e
        stats.skipped += 1
        stats.reasons[e.reason] += 1
        if len(stats.messages) < MAX_MESSAGES:
          stats.messages.append(message)
        continue
      stats.loaded += 1
      yield line_no, value
  if stats.skipped:
    _log.warning("%s; first: %s", stats.summary(), stats.messages[0])
