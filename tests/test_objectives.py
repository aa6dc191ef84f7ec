"""Objectives as registered objects: resolution by name, import path or object, the defaults a
hybrid takes from its parts, registration, and how a config records them."""

import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import decomp
from decomp import objectives


@pytest.fixture
def user_module(tmp_path, monkeypatch):
  """A module outside decomp defining a weight, a direction and a whole objective."""
  (tmp_path / "my_objectives.py").write_text(textwrap.dedent("""
      import decomp
      import jax.numpy as jnp

      def doubled_sft_weight(readout, labels, *, where=None):
        return 2.0 * decomp.weights.sft(readout, labels, where=where)

      def margin_loss(readout, labels, *, where=None):
        return 2.0 * decomp.sft_loss(readout.yes, readout.no, labels, where=where)

      def yes_minus_lognorm(readout):
        return readout.yes - readout.log_normalizer

      doubled = decomp.Weight(doubled_sft_weight, loss=margin_loss)
      logprob = decomp.Direction(yes_minus_lognorm, score="cl", needs={"log_normalizer"})
      hybrid = decomp.Objective(weight=doubled, direction="cl", name="doubled_sft_cl")
      """))
  monkeypatch.syspath_prepend(str(tmp_path))
  yield __import__("my_objectives")
  sys.modules.pop("my_objectives", None)


def _readout():
  yes = jnp.array([[1.0, 0.5, -1.0]])
  no = jnp.array([[0.0, 0.2, 0.3]])
  return decomp.Readout(yes=yes, no=no, log_normalizer=jnp.array([[2.0, 2.0, 2.0]])), \
      jnp.array([[1, 0, 0]])


def test_built_in_objectives_are_the_pure_pairs():
  sft, cl = decomp.OBJECTIVES["sft"], decomp.OBJECTIVES["cl"]
  assert (sft.weight.name, sft.direction.name, sft.rank_by) == ("sft", "sft", "sft")
  assert (cl.weight.name, cl.direction.name, cl.rank_by) == ("cl", "cl", "cl")
  readout, labels = _readout()
  np.testing.assert_allclose(cl.loss_value(readout, labels),
                             decomp.cl_loss(readout.yes, labels), rtol=1e-6)


def test_hybrid_logs_its_weights_loss_and_ranks_by_its_direction():
  hybrid = decomp.OBJECTIVES["sft"].with_parts(weight="cl")
  readout, labels = _readout()
  assert hybrid.name == "w_cl-d_sft" and hybrid.rank_by == "sft"
  np.testing.assert_allclose(hybrid.loss_value(readout, labels),
                             decomp.cl_loss(readout.yes, labels), rtol=1e-6)
  assert decomp.OBJECTIVES["cl"].with_parts(direction="sft").rank_by == "sft"


def test_bound_parameters_reach_the_weight_and_its_loss():
  hybrid = decomp.Objective(weight="cl", direction="cl").with_parts(
      weight_params={"temperature": 0.5})
  readout, labels = _readout()
  np.testing.assert_allclose(hybrid.loss_value(readout, labels),
                             decomp.cl_loss(readout.yes, labels, temperature=0.5), rtol=1e-6)
  with pytest.raises(ValueError, match=r"\['tau'\] are not parameters of the weight 'sft'"):
    decomp.resolve_weight("sft", tau=0.1)


def test_import_paths_resolve_everywhere(user_module):
  readout, labels = _readout()
  weight = decomp.resolve_weight("my_objectives:doubled")
  assert weight is user_module.doubled
  g = jax.grad(lambda y: decomp.url_loss(y, readout.no, labels, weight="my_objectives:doubled",
                                         direction="sft"))(readout.yes)
  g_sft = jax.grad(lambda y: decomp.url_loss(y, readout.no, labels, weight="sft",
                                             direction="sft"))(readout.yes)
  np.testing.assert_allclose(g, 2 * g_sft, rtol=1e-6)
  objective = decomp.resolve_objective("my_objectives:hybrid")
  assert objective.needs == frozenset()
  assert objective.with_parts(direction="my_objectives:logprob").needs == {"log_normalizer"}
  with pytest.raises(ValueError, match="has no attribute 'nope'"):
    decomp.resolve_objective("my_objectives:nope")
  with pytest.raises(ValueError, match="cannot import 'no_such_module_xyz'"):
    decomp.resolve_weight("no_such_module_xyz:w")
  with pytest.raises(TypeError, match="objective must be"):
    decomp.resolve_objective("my_objectives:doubled")


def test_registration_by_name_and_portable_config_names(user_module):
  try:
    decomp.register_objective(user_module.hybrid)
    assert decomp.resolve_objective("doubled_sft_cl") is user_module.hybrid
    # A config records a name registered in code by where the object lives.
    assert objectives.portable_name("objective", "doubled_sft_cl") == "my_objectives:hybrid"
    assert objectives.portable_name("objective", "sft") == "sft"
    with pytest.raises(ValueError, match="registered already"):
      decomp.register_objective(decomp.OBJECTIVES["cl"], "doubled_sft_cl")
    with pytest.raises(ValueError, match="reserved for import paths"):
      decomp.register_objective(user_module.hybrid, "a:b")
  finally:
    decomp.OBJECTIVES.pop("doubled_sft_cl", None)


def test_bad_declarations_are_named():
  with pytest.raises(ValueError, match="not readout fields"):
    decomp.Direction(lambda r: r.yes, needs={"vocabulary"})
  with pytest.raises(ValueError, match="not a ranking score"):
    decomp.Objective(weight="sft", direction="sft", rank_score="p_yes")
  bare = decomp.Objective(weight=lambda r, l, where=None: decomp.weights.sft(r, l, where=where),
                          direction="sft")
  assert not bare.has_loss
  readout, labels = _readout()
  with pytest.raises(ValueError, match="declares no loss to log"):
    bare.loss_value(readout, labels)
