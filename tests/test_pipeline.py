"""The config-chosen input pipeline: memory by default, grain on request, same contract."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from shared.data import pipeline
from shared.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _arrays(n=40):
  rng = np.random.default_rng(0)
  return {"image": rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8), "label": np.arange(n)}


@pytest.mark.parametrize("kind", ["memory", "grain"])
def test_train_batches_resume_and_transform(tmp_path, kind):
  cfg = {"pipeline": kind, "stream_source": "", "worker_count": 0}
  make = pipeline.train_batches(
    cfg, _arrays(), 8, seed=3, cache_dir=str(tmp_path), transform=lambda b: {"x": b["label"] * 2}
  )
  it = make(0)
  first = [next(it)["x"] for _ in range(7)]  # crosses an epoch (5 batches of 8)
  again = make(4)
  np.testing.assert_array_equal(next(again)["x"], first[4])
  assert sorted(np.concatenate(first[:5]).tolist()) == list(range(0, 80, 2))  # one epoch, whole
  if kind == "grain":  # the state travels through the mapping
    state = it.get_state()
    fresh = make(0)
    fresh.set_state(state)
    np.testing.assert_array_equal(next(fresh)["x"], next(it)["x"])
    assert os.path.isfile(tmp_path / "stream" / "train.array_record")


def test_unknown_pipeline_is_a_config_error():
  with pytest.raises(ConfigError, match="data.pipeline='disk'"):
    pipeline.train_batches({"pipeline": "disk"}, _arrays(), 8, seed=0)


@pytest.mark.slow
def test_gradflow_tiny_trains_from_the_grain_pipeline(tmp_path):
  """The DDPM stages read through grain, checkpoints keep the iterator state, a re-run resumes."""
  cmd = [
    sys.executable, "-m", "gradflow_prune", "--config", "configs/gradflow_prune.py:tiny",
    "--workdir", str(tmp_path), "--config.data.pipeline=grain",
    "--config.prune.criteria=('taylor',)", "--config.prune.procedures=('oneshot',)",
    "--config.prune.ablations=()",
  ]  # fmt: skip
  done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.loads((tmp_path / "results.json").read_text())
  assert np.isfinite(results["metrics"]["teacher_fd"])
  data_items = [p for p, _, files in os.walk(tmp_path / "pretrain") if "data" in p.split(os.sep)]
  assert data_items, "no iterator state saved with the pretrain checkpoint"
  again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
  assert again.returncode == 0, again.stderr[-3000:]
