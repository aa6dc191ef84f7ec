"""The numbers the docs quote agree with the sweeps' generated tables (``make docs``'s check).

Runs ``figures/docs_numbers.py`` on the committed README.md and docs/*.md, then shows that it
fails, naming the number, file and line, when a quoted number or a table cell is altered; and
that it reads tables in exactly the form ``decomp/sweep.py`` writes them. No training.
"""

import os
import pathlib
import shutil
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "figures"))
import docs_numbers  # noqa: E402
from decomp import sweep  # noqa: E402

MARKED = ("README.md", "docs/findings.md", "docs/calibration.md")


@pytest.fixture
def repo_copy(tmp_path):
  """The checked Markdown files and the committed summary tables, in a scratch directory."""
  for name in MARKED:
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / name, tmp_path / name)
  for table in (ROOT / "docs").glob("*_summary.md"):
    shutil.copyfile(table, tmp_path / "docs" / table.name)
  return tmp_path


def _check(root, *names):
  return docs_numbers.check([str(root / n) for n in names or MARKED], docs=str(root / "docs"))


def test_committed_docs_agree_with_their_tables():
  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    assert docs_numbers.main([]) == 0
  finally:
    os.chdir(cwd)


def test_every_doc_quotes_checked_numbers():
  """The markers are there (a check that resolves nothing would pass vacuously)."""
  counts = {name: len(docs_numbers.MARKER.findall((ROOT / name).read_text())) for name in MARKED}
  assert counts["docs/findings.md"] > 150 and counts["docs/calibration.md"] > 60, counts
  assert counts["README.md"] >= 10, counts


def _alter(path, old, new):
  text = path.read_text()
  assert text.count(old) >= 1, f"{old!r} not in {path}"
  lines_before = text[:text.index(old)].count("\n") + 1
  path.write_text(text.replace(old, new, 1))
  return lines_before


@pytest.mark.parametrize("name, old, new, says", [
    # a mean, in the README's Table 1
    ("README.md", "**56.66 ± 0.10**<!-- probe_head: W_SFT x D_SFT (SFT); sft -->",
     "**56.76 ± 0.10**<!-- probe_head: W_SFT x D_SFT (SFT); sft -->", "56.76 ± 0.10"),
    # a CI half-width
    ("docs/findings.md", "-14.34 ± 11.16", "-14.34 ± 11.61", "the CI disagrees"),
    # a number rounded in the prose
    ("docs/findings.md", "(46.4<!--", "(46.5<!--", "46.5"),
    # a sign
    ("docs/findings.md", "+4.02 ± 7.88", "-4.02 ± 7.88", "-4.02"),
    # a paired std and a seed count
    ("docs/calibration.md", "| 11.18<!--", "| 11.81<!--", "11.81"),
    ("docs/calibration.md", "| 483<!--", "| 484<!--", "484"),
    # a negated difference
    ("docs/findings.md", "-1.10 ± 9.03<!-- directions: SFT: D_SFT - D_Rand; overall; negated -->",
     "+1.10 ± 9.03<!-- directions: SFT: D_SFT - D_Rand; overall; negated -->", "+1.10"),
])
def test_an_altered_quoted_number_is_named_with_file_and_line(repo_copy, name, old, new, says):
  line = _alter(repo_copy / name, old, new)
  errors = _check(repo_copy)
  assert len(errors) == 1, errors
  assert errors[0].startswith(f"{repo_copy / name}:{line}: ") and says in errors[0], errors


def test_an_altered_table_is_caught_wherever_it_is_quoted(repo_copy):
  """A rerun that moves a number makes every doc quoting the old one fail."""
  row = "| SFT - CL (the two objectives) |"
  table = repo_copy / "docs" / "probe_head_summary.md"
  _alter(table, f"{row} 1.89 ± 0.38 |", f"{row} 1.95 ± 0.38 |")
  errors = _check(repo_copy)
  files = {e.split(":")[0] for e in errors}
  assert {str(repo_copy / n) for n in ("README.md", "docs/findings.md")} == files, errors
  assert all("probe_head_summary.md:" in e and "1.95 ± 0.38" in e for e in errors)


def test_a_mean_ci_without_a_marker_is_an_error(repo_copy):
  path = repo_copy / "docs" / "findings.md"
  path.write_text(path.read_text() + "\nA new result: 61.00 ± 2.00 points.\n")
  errors = _check(repo_copy, "docs/findings.md")
  assert len(errors) == 1 and "'61.00 ± 2.00' quotes a mean ± CI without a marker" in errors[0]
  path.write_text(path.read_text() + "Another: 1.0 ± 2.0. <!-- unchecked: runs not kept -->\n")
  assert len(_check(repo_copy, "docs/findings.md")) == 1  # the unchecked line is exempt


def test_unknown_rows_and_tables_are_explained(repo_copy):
  path = repo_copy / "docs" / "findings.md"
  path.write_text("1.00<!-- probe_head: no such arm -->\n2.00<!-- nosweep: x -->\n"
                  "3.00<!-- probe_head: W_SFT x D_CL; bogus -->\n"
                  "<!-- probe_head: W_SFT x D_CL -->\n")
  errors = _check(repo_copy, "docs/findings.md")
  assert len(errors) == 4, errors
  assert "no row 'no such arm'" in errors[0] and "'W_SFT x D_CL'" in errors[0]
  assert "no table" in errors[1] and "runs/nosweep/" in errors[1]
  assert "column 'bogus'" in errors[2]
  assert "follows no number" in errors[3]


def test_reads_tables_as_the_sweep_runner_writes_them(tmp_path):
  """The checker parses ``sweep.summary_markdown``'s own output (what ``make docs`` copies)."""
  stat = lambda values: sweep.mean_ci(values)
  summary = {"metric": "test ndcg@10 x 100", "seeds": [0, 1, 2], "arms": {
      "a": {"label": "SFT", "overrides": {}, "overall": stat([60.0, 62.0, 61.0]),
            "score/sft": stat([60.0, 62.0, 61.0]), "score/cl": stat([50.0, 51.0, 55.0])},
      "b": {"label": "CL", "overrides": {}, "overall": stat([58.0, 60.5, 59.0]),
            "score/sft": stat([57.0, 59.0, 58.0]), "score/cl": stat([58.0, 60.5, 59.0])}},
      "contrasts": {"SFT - CL": {"overall": {**stat([2.0, 1.5, 2.0]), "seeds_for_ci1": 4},
                                 "macro": stat([2.0, 1.5, 2.0])}}}
  (tmp_path / "docs").mkdir()
  (tmp_path / "docs" / "toy_summary.md").write_text(sweep.summary_markdown(summary, title="toy"))
  ci = sweep.mean_ci([60.0, 62.0, 61.0])["ci95"]
  contrast = sweep.mean_ci([2.0, 1.5, 2.0])
  table = (tmp_path / "docs" / "toy_summary.md").read_text().splitlines()
  row = next(i for i, line in enumerate(table, 1) if line.startswith("| SFT - CL |"))
  doc = tmp_path / "doc.md"
  doc.write_text(
      f"| arm | score |\n|---|---|\n| SFT | **61.00 ± {ci:.2f}**<!-- toy: SFT --> |\n"
      "SFT leads by +1.83<!-- toy: SFT - CL --> (std 0.29<!-- toy: SFT - CL; std -->, 4<!-- toy: "
      "SFT - CL; seeds --> seeds), CL trails by 1.8<!-- toy: SFT - CL; overall; negated -->... "
      "no: -1.8<!-- toy: SFT - CL; overall; negated -->; CL by SFT's score "
      "58<!-- toy: CL; sft -->, 58.0-59.17<!-- toy: CL -->.\n")
  assert docs_numbers.check([str(doc)], docs=str(tmp_path / "docs")) == [
      f"{doc}:4: 1.8 (toy: SFT - CL; overall): the table says 1.83 ± {contrast['ci95']:.2f} "
      f"(negated here) ({tmp_path / 'docs' / 'toy_summary.md'}:{row})"]
  assert f"{contrast['std']:.2f}" == "0.29"


def test_rounding_accepts_either_rounding_of_a_rounded_cell():
  agrees = docs_numbers._agrees
  assert agrees("-0.3", "-0.25") and agrees("-0.2", "-0.25") and not agrees("-0.4", "-0.25")
  assert agrees("46.4", "46.36") and not agrees("46.3", "46.36") and agrees("10", "10.30")
  assert agrees("-1.10", "1.10", -1) and not agrees("56.67", "56.66")

