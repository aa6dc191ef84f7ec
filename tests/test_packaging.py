"""pyproject.toml states compatible ranges (decomp installs beside other packages), the exact
versions shown to work are pinned in constraints.txt (what `make venv` installs with), and the
accelerator extras ask for jax's own plugins in the CPU install's jax range."""

import pathlib
import re
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _name(requirement: str) -> str:
  return re.split(r'[\[<>=!~; ]', requirement, maxsplit=1)[0].lower().replace('_', '-')


def _project():
  return tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']


def _pins() -> dict[str, str]:
  pins = {}
  for line in (ROOT / 'constraints.txt').read_text().splitlines():
    if line.strip() and not line.startswith('#'):
      name, _, version = line.partition('==')
      pins[name.strip().lower().replace('_', '-')] = version.strip()
  return pins


def test_library_dependencies_are_ranges_pinned_in_constraints():
  deps = _project()['dependencies']
  pins = _pins()
  for requirement in deps:
    assert '==' not in requirement, f'{requirement}: a library pins no exact version'
    assert _name(requirement) in pins, f'{requirement}: constraints.txt holds no tested version'
  bounded = [r for r in deps if _name(r) in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint')]
  assert bounded and all('<' in r for r in bounded), bounded  # APIs change between series
  assert 'constraints.txt' in (ROOT / 'Makefile').read_text()


def test_accelerator_extras_match_the_cpu_jax():
  project = _project()
  jax_range = next(r for r in project['dependencies'] if _name(r) == 'jax')[len('jax'):]
  extras = project['optional-dependencies']
  for extra in ('cuda12', 'cuda13', 'tpu'):
    assert extras[extra] == [f'jax[{extra}]{jax_range}'], extras[extra]
