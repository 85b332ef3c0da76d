"""A config the method itself refuses leaves no run records, so the corrected command can reuse
the workdir (the records are config.json and run_manifest.json)."""

import os

import ml_collections
import pytest

from shared import app
from shared.errors import ConfigError


def _config(value: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"method": "toy", "variant": "default", "seed": 0, "v": value})


def _train(config, workdir):
  if config.v < 0:  # the method's own check, before anything is trained
    raise ConfigError(f"config.v={config.v}: must be >= 0")
  return {"v": float(config.v)}


def test_a_refused_config_leaves_no_records_and_the_fix_runs_in_the_same_workdir(tmp_path):
  workdir = str(tmp_path / "run")
  with pytest.raises(ConfigError, match="must be >= 0"):
    app.run("toy", _train, _config(-1), workdir)
  assert not os.path.exists(os.path.join(workdir, "config.json"))
  assert app.run("toy", _train, _config(3), workdir)["metrics"] == {"v": 3.0}
  # a finished run's records stay: another config in its workdir is still refused
  with pytest.raises(ConfigError):
    app.run("toy", _train, _config(-2), workdir)
  assert os.path.exists(os.path.join(workdir, "config.json"))
