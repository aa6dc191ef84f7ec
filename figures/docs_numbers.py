"""Checks every number the docs quote from a sweep against that sweep's generated table.

The prose docs (``docs/findings.md``, ``docs/calibration.md``, ``README.md``) quote results of
the sweeps; ``docs/<sweep>_summary.md`` is the table ``make docs`` regenerates from the sweep's
logs (``figures/publish.py``). A quoted number carries an HTML comment naming where it comes
from, invisible in the rendered page:

  **56.66 ± 0.10**<!-- probe_head: W_SFT x D_SFT (SFT) -->        mean ± CI, column "overall"
  (std 0.15<!-- probe_head: SFT - CL (the two objectives); std -->)
  chance (46.4<!-- probe_head: W_SFT x D_CL -->)                   fewer digits: rounded to them
  ahead by 5.8<!-- regimes: SFT - CL (pretrained, full); overall; negated -->

``<sweep>: <row> [; <column> [; negated]]`` (``;``, not ``|``, which would split a table row):
``row`` is the first cell of a row of ``docs/<sweep>_summary.md``; ``column`` a header of that
table (default ``overall``; aliases in ``COLUMN_ALIASES``); ``negated`` when the prose quotes
the opposite difference (b - a for a table's a - b). The number right before the comment (its
sign, optional ``± ci``, optional ``**``) must equal the table's cell to the digits written. A
mean ± CI written without a marker is an error, unless its line carries
``<!-- unchecked: why -->`` (say, runs whose logs were not kept).

  python figures/docs_numbers.py [FILE.md ...] [--docs docs]

No jax, no numpy: the test suite runs it on the committed docs in well under a second.
"""

from __future__ import annotations

import argparse
import dataclasses
import decimal
import os
import re
import sys

CHECKED = ("README.md", "docs/findings.md", "docs/calibration.md")
COLUMN_ALIASES = {"sft": "ranked by SFT's score", "cl": "ranked by CL's score",
                  "std": "paired std", "seeds": "seeds for ± 1"}
UNCHECKED = "unchecked"

# <!-- sweep: row; column; negated -->; a sweep name is a plain identifier (so other comments,
# e.g. <!-- readme-example:start -->, are not markers).
MARKER = re.compile(r"<!--\s*([a-z][a-z0-9_]*)\s*:\s*(.*?)\s*-->")
# The quoted number just before a marker: sign, mean, optional ± ci, optional bold.
QUOTED = re.compile(r"([+-]?)(\d+(?:\.\d+)?)(?:\s*±\s*(\d+(?:\.\d+)?))?\**$")
# Any "mean ± ci" in the prose, to find quoted numbers that lack a marker.
MEAN_CI = re.compile(r"[+-]?\d+(?:\.\d+)?\s*±\s*\d+(?:\.\d+)?\**")
CELL = re.compile(r"^(-?\d+(?:\.\d+)?)(?:\s*±\s*(\d+(?:\.\d+)?))?$")


@dataclasses.dataclass(frozen=True)
class Cell:
  """One cell of a summary table: its text and where it is."""
  text: str
  path: str
  line: int


def summary_path(docs: str, sweep: str) -> str:
  return os.path.join(docs, f"{sweep}_summary.md")


def read_tables(path: str) -> dict[tuple[str, str], list[Cell]]:
  """``{(row, column): [cells]}`` of every Markdown table in ``path`` (a row label may appear in
  several tables; a lookup is ambiguous only if their cells differ)."""
  cells: dict[tuple[str, str], list[Cell]] = {}
  header = None
  with open(path) as f:
    for number, line in enumerate(f, 1):
      line = line.strip()
      if not line.startswith("|"):
        header = None
        continue
      parts = [p.strip() for p in line.strip("|").split("|")]
      if header is None:
        header = parts
      elif not set(line) <= set("|-: "):
        for column, text in zip(header[1:], parts[1:]):
          cells.setdefault((parts[0], column), []).append(Cell(text, path, number))
  return cells


def _agrees(written: str, cell: str, sign: int = 1) -> bool:
  """Whether ``written`` is ``sign * cell`` to the digits written. The cell is itself rounded,
  so a value written with fewer digits may be either rounding of any value the cell stands for
  ("-0.3" and "-0.2" both quote a cell "-0.25"); more digits than the cell have must match it."""
  places_written, places_cell = _places(written), _places(cell)
  value = sign * decimal.Decimal(cell)
  if places_written >= places_cell:
    return decimal.Decimal(written) == value
  half_unit = lambda places: decimal.Decimal(5).scaleb(-places - 1)
  tolerance = half_unit(places_written) + half_unit(places_cell)
  return abs(decimal.Decimal(written) - value) <= tolerance


def _places(text: str) -> int:
  return len(text.split(".")[1]) if "." in text else 0


def _quoted(prefix: str):
  """(signed mean, ci or None) written right before a marker, or None."""
  match = QUOTED.search(prefix)
  if not match:
    return None
  sign, mean, ci = match.groups()
  before = prefix[:match.start()]
  if sign == "-" and (before[-1:].isalnum() or before.endswith(">")):
    sign = ""  # "1.58-1.78": a range's dash, not a minus sign
  return sign, mean, ci


def _compare(quoted, cell: Cell, negated: bool) -> str | None:
  """Why the quoted number disagrees with the cell, or None."""
  found = CELL.match(cell.text)
  if not found:
    return f"the table's cell is {cell.text!r}, not a number"
  table_mean, table_ci = found.groups()
  sign, mean, ci = quoted
  factor = -1 if negated else 1
  value = factor * decimal.Decimal(table_mean)
  if not _agrees(("-" if sign == "-" else "") + mean, table_mean, factor):
    return f"the table says {cell.text}{' (negated here)' if negated else ''}"
  if sign == "+" and value < 0 or sign == "-" and value > 0:
    return f"the sign disagrees with the table's {cell.text}"
  if ci is not None:
    if table_ci is None:
      return f"the table's cell {cell.text!r} has no ± CI"
    if not _agrees(ci, table_ci):
      return f"the CI disagrees with the table's {cell.text}"
  return None


def check_file(path: str, docs: str = "docs") -> list[str]:
  """Every disagreement in ``path``, as ``path:line: message`` (empty: all numbers check)."""
  errors = []
  tables: dict[str, dict] = {}
  with open(path) as f:
    lines = f.read().splitlines()
  for number, line in enumerate(lines, 1):
    where = f"{path}:{number}"
    for marker in MARKER.finditer(line):
      sweep, body = marker.groups()
      if sweep == UNCHECKED:
        continue
      fields = [f.strip() for f in body.split(";")]
      row, column = fields[0], (fields[1] if len(fields) > 1 and fields[1] else "overall")
      column = COLUMN_ALIASES.get(column, column)
      flags = set(fields[2:])
      if flags - {"negated"}:
        errors.append(f"{where}: marker {marker.group(0)!r}: unknown flag(s) {sorted(flags)}")
        continue
      table_file = summary_path(docs, sweep)
      if sweep not in tables:
        tables[sweep] = read_tables(table_file) if os.path.exists(table_file) else None
      if tables[sweep] is None:
        errors.append(f"{where}: marker {marker.group(0)!r}: no table {table_file} "
                      f"(`make docs` writes it from runs/{sweep}/)")
        continue
      quoted = _quoted(line[:marker.start()])
      if quoted is None:
        errors.append(f"{where}: marker {marker.group(0)!r} follows no number")
        continue
      cells = tables[sweep].get((row, column))
      if not cells:
        known = sorted({r for r, c in tables[sweep] if c == column})
        errors.append(f"{where}: {sweep}: no row {row!r} with a column {column!r} in "
                      f"{table_file} (rows with that column: {known})")
        continue
      if len({c.text for c in cells}) > 1:
        errors.append(f"{where}: {sweep}: {row!r}; {column!r} is ambiguous in {table_file} "
                      f"(lines {[c.line for c in cells]})")
        continue
      sign, mean, ci = quoted
      text = f"{sign}{mean}" + (f" ± {ci}" if ci else "")
      problem = _compare(quoted, cells[0], "negated" in flags)
      if problem:
        errors.append(f"{where}: {text} ({sweep}: {row}; {column}): {problem} "
                      f"({cells[0].path}:{cells[0].line})")
    if f"<!-- {UNCHECKED}:" in line:
      continue  # the line says why its numbers have no table
    for unmarked in MEAN_CI.finditer(line):
      if line[unmarked.end():].startswith("<!--"):
        continue
      errors.append(f"{where}: {unmarked.group(0).strip('*')!r} quotes a mean ± CI without a "
                    f"marker naming its table (<!-- sweep: row; column -->) or "
                    f"<!-- unchecked: why -->")
  return errors


def check(paths=CHECKED, docs: str = "docs") -> list[str]:
  errors = []
  for path in paths:
    errors += check_file(path, docs)
  return errors


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("files", nargs="*", default=list(CHECKED), help="Markdown files to check")
  parser.add_argument("--docs", default="docs", help="folder of the <sweep>_summary.md tables")
  args = parser.parse_args(argv)
  errors = check(args.files, args.docs)
  for error in errors:
    print(error, file=sys.stderr)
  if errors:
    print(f"{len(errors)} quoted number(s) disagree with their tables", file=sys.stderr)
    return 1
  print(f"every marked number in {', '.join(args.files)} agrees with docs/*_summary.md")
  return 0


if __name__ == "__main__":
  sys.exit(main())
