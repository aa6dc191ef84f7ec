"""The README's hybrid-loss example runs and does what it says, its links resolve and it stays
short; the demo prints real numbers."""

import pathlib
import re

import numpy as np
import pytest

import decomp
from decomp import demo

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _readme_example() -> str:
  text = README.read_text()
  block = re.search(r"<!-- readme-example:start -->\s*```python\n(.*?)```", text, re.S)
  assert block, "README lost its hybrid-loss example block"
  return block.group(1)


def test_readme_hybrid_example_runs(capsys):
  namespace = {}
  exec(compile(_readme_example(), str(README), "exec"), namespace)
  grad_yes, grad_no = namespace["grad_yes"], namespace["grad_no"]
  assert np.all(np.asarray(grad_no) == 0)
  # The focal weight is SFT's weight times (2|W|)^2: check it against that closed form.
  readout = decomp.Readout(yes=namespace["yes"], no=namespace["no"])
  w = np.asarray(decomp.weights.sft(readout, namespace["labels"]))
  np.testing.assert_allclose(grad_yes, w * (2 * np.abs(w)) ** 2, rtol=1e-6)
  assert "[[" in capsys.readouterr().out


def test_demo_prints_decomposition_and_exact_identity(capsys):
  demo.main([])
  out = capsys.readouterr().out
  assert "W_SFT x D_CL" in out and "W_CL x D_SFT" in out
  errors = [float(x) for x in re.findall(r"max relative error ([0-9.e+-]+)", out)]
  assert len(errors) == 2 and max(errors) < 1e-12


@pytest.mark.parametrize("doc", [README, *sorted((README.parent / "docs").glob("*.md"))],
                         ids=lambda p: p.name)
def test_docs_point_only_at_files_that_exist(doc):
  """Every figure, table or other local file README.md or docs/*.md links or shows is in the
  repo (relative to the linking file)."""
  text = doc.read_text()
  targets = set(re.findall(r'src="([^"]+)"', text))
  targets |= {t for t in re.findall(r"\]\(([^)#]+)\)", text) if "://" not in t}
  targets |= set(re.findall(r"`(docs/[^`\s]+)`", text)) if doc == README else set()
  if doc == README or doc.name in ("findings.md", "calibration.md"):
    assert targets, "no local links found: the pattern is wrong"
  missing = sorted(t for t in targets if not (doc.parent / t).exists())
  assert not missing, f"{doc.name} points at missing files: {missing}"


def test_readme_is_a_readme():
  """Short, with the two commands; the research report lives in docs/ (findings, calibration)."""
  text = README.read_text()
  assert len(text.splitlines()) <= 200
  for needed in ("make demo", "make test", "docs/findings.md", "docs/calibration.md",
                 "benchmarks/RESULTS.md", "paper_notes.md"):
    assert needed in text, f"README lost {needed!r}"
