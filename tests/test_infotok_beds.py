"""InfoTok's beds (`infotok.beds`): `config.data.name` -> the one record every module asks, and an
unknown name is one ConfigError line (exit 2 from the command line) before any data is read."""

import os
import subprocess
import sys

import numpy as np
import pytest

from configs import infotok as config_file
from infotok import beds, checks
from shared.data import cifar_grid, shapes
from shared.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
  ("arg", "bed"),
  [
    ("tiny", beds.SHAPES),
    (None, beds.SHAPES),
    ("tiny,bed=cifar_grid", beds.CIFAR_GRID),
    ("compare,bed=cifar_grid", beds.CIFAR_GRID),
    ("tiny,captions=true", beds.CAPTIONS),
    ("paper", beds.CAPTIONS),
  ],
)
def test_every_config_variant_names_its_bed(arg, bed):
  assert beds.bed_of(config_file.get_config(arg).data) is bed


def test_a_bed_reads_its_own_scenes_and_words():
  arrays = {
    "shape": np.array([[0, 1]]),
    "colour": np.array([[0, 2]]),
    "size": np.array([[1, 0]]),
    "pos": np.array([[0, 8]]),
  }
  objects = beds.SHAPES.objects_of(arrays, 0, 3)
  assert objects == [
    ("circle", "red", "large", "top left"),
    ("square", "blue", "small", "bottom right"),
  ]
  assert all(len(o) == len(beds.SHAPES.attrs) for o in objects)
  caption = "a large red circle at the top left and a small blue square at the bottom right ."
  assert beds.SHAPES.parse_caption(caption, 3) == objects
  grid = {"cls": np.array([[3, -1]]), "pos": np.array([[1, 0]])}
  (obj,) = beds.CIFAR_GRID.objects_of(grid, 0, 2)
  assert obj == (cifar_grid.CLASSES[3], cifar_grid.POSITIONS[1]) and len(obj) == 2
  assert beds.CIFAR_GRID.decode is cifar_grid.decode and beds.SHAPES.decode is shapes.decode
  assert beds.CIFAR_GRID.question_types == cifar_grid.QUESTION_TYPES
  assert beds.CAPTIONS.captions and not beds.CAPTIONS.attrs


@pytest.mark.parametrize("name", ["mnist", "tfds:", "shape", "cifar10"])
def test_an_unknown_bed_is_a_config_error(name):
  cfg = config_file.get_config("tiny")
  cfg.data.name = name
  with pytest.raises(ConfigError, match=f"config.data.name={name!r} is not an InfoTok bed"):
    checks.check_config(cfg)


def test_an_unknown_bed_is_one_line_exit_2_from_the_command_line(tmp_path):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  cmd = [sys.executable, "-m", "infotok", "--config", "configs/infotok.py:tiny"]
  cmd += ["--config.data.name=mnist", "--workdir", str(tmp_path)]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: config.data.name='mnist' is not an InfoTok bed"), last
  assert "Traceback" not in proc.stderr
  with pytest.raises(ConfigError, match="bed='mnist'"):
    config_file.get_config("tiny,bed=mnist")  # the config's own `bed=` option


def test_the_config_takes_its_bed_names_from_the_registry(monkeypatch):
  with pytest.raises(ConfigError) as e:
    config_file.get_config("tiny,bed=mnist")
  assert str(e.value) == "bed='mnist'; known: shapes, cifar_grid"
  monkeypatch.setitem(beds.BEDS, "toy", beds.SHAPES)  # a bed added to the registry only
  config_file.get_config("tiny,bed=toy")
  with pytest.raises(ConfigError, match="known: shapes, cifar_grid, toy$"):
    config_file.get_config("tiny,bed=mnist")


def test_the_config_and_the_bed_registry_import_without_jax():
  code = "import sys, configs.infotok, infotok.beds; assert 'jax' not in sys.modules"
  subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
