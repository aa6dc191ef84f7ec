"""decomp.trust: a config's import paths are checked against the installed packages before any
of them is imported (a received workdir's config.json is code)."""

import json

import pytest

from decomp import trust
from decomp.train import config as config_lib
from decomp.train import overrides as overrides_lib
from decomp.train import recipes


def test_local_modules_are_refused_without_importing_them(tmp_path, monkeypatch):
  marker = tmp_path / "ran"
  (tmp_path / "evil_weight.py").write_text(f"open({str(marker)!r}, 'w').close()\nw = None\n")
  (tmp_path / "evil_pkg").mkdir()
  (tmp_path / "evil_pkg" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  config = {"objective": "sft", "weight": "evil_weight:w", "direction": "evil_pkg.sub:d",
            "steps": 3}
  with pytest.raises(trust.UntrustedCodeError) as error:
    trust.check_trusted_import_paths(config)
  message = str(error.value)
  assert f"weight=evil_weight:w ({tmp_path / 'evil_weight.py'})" in message
  assert f"direction=evil_pkg.sub:d ({tmp_path / 'evil_pkg' / '__init__.py'})" in message
  assert "--allow-code" in message and "objective" not in message.split(":", 1)[1]
  assert not marker.exists()  # deciding imported nothing
  assert trust.check_trusted_import_paths(config, allow_code=True) == {
      "weight": "evil_weight:w", "direction": "evil_pkg.sub:d"}
  assert not marker.exists()


def test_installed_and_missing_modules(tmp_path):
  assert trust.module_origin("json")[0] and trust.module_origin("numpy.linalg")[0]
  assert trust.module_origin("sys") == (True, "built in")
  assert trust.module_origin("decomp.weights")[0]  # decomp itself, installed or a checkout
  installed, where = trust.module_origin("no_such_module_xyz")
  assert not installed and "no module named 'no_such_module_xyz'" in where
  with pytest.raises(trust.UntrustedCodeError, match="no_such_module_xyz:f"):
    trust.check_trusted_import_paths({"objective": "no_such_module_xyz:f"})


def test_a_workdir_config_and_a_train_config(tmp_path):
  cfg = overrides_lib.apply_overrides(recipes.get_config("playground_quick"),
                                      ["weight=decomp.weights:sft"])
  assert trust.check_trusted_import_paths(cfg) == {"weight": "decomp.weights:sft"}
  path = tmp_path / "config.json"
  stored = config_lib.to_dict(cfg)
  stored["objective"]["direction"] = "mine:d"
  path.write_text(json.dumps(stored))
  with pytest.raises(trust.UntrustedCodeError, match=r"direction=mine:d \(no module"):
    trust.check_trusted_import_paths(json.loads(path.read_text()))
  assert trust.import_paths({"weight": "cl", "direction": ":x", "objective": "a:"}) == {}
