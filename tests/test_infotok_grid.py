"""InfoTok on `cifar_grid` (issue 17's natural-image bed): the per-cell judge, caption scores, and
a reduced tiny run end to end on a fake prepared cifar10 (the real one where it is prepared)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from infotok import beds, evaluate, grid_bed
from shared import data
from shared.data import cifar_grid as cg
from tests.fake_cifar10 import write_prepared_cifar10

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = dict(num_train=64, num_val=16, num_test=16, num_heldout=16)


@pytest.fixture(scope="module")
def fake_data_dir(tmp_path_factory):
  """A data dir with a prepared cifar10 entry of random images."""
  root = tmp_path_factory.mktemp("data")
  write_prepared_cifar10(root)
  return str(root)


@pytest.fixture(scope="module")
def judge():
  return grid_bed.GridJudge()  # the shipped CIFAR-10 judge


def test_cells_targets_and_empty_cells(fake_data_dir, judge):
  arrays = data.load("cifar_grid", "test", data_dir=fake_data_dir, **SIZES)
  cells = grid_bed.cells(arrays["image"])
  assert cells.shape == (16, 4, 32, 32, 3) and cells.dtype == np.float32
  target = grid_bed.cell_targets(arrays)
  for i in range(16):
    for c, p in zip(arrays["cls"][i], arrays["pos"][i], strict=True):
      if c >= 0:
        assert target[i, p] == c + 1
    assert (target[i] > 0).sum() == arrays["n_objects"][i]
  # Background cells are empty, random-noise "photographs" are not.
  pred = judge.predict(arrays["image"])
  np.testing.assert_array_equal(pred > 0, target > 0)
  scores = judge.judge_images(arrays["image"], arrays)
  assert scores["position"] == 1.0 and scores["empty"] == 1.0
  assert scores["attribute_mean"] == pytest.approx((scores["class"] + 1.0) / 2)
  feats = judge.features(arrays["image"])
  assert feats.shape == (16, 44) and np.isfinite(feats).all()
  critic = judge.critic_scores(arrays["image"], arrays)
  assert critic.shape == (16, 16) and np.isfinite(critic).all()
  items = judge.item_scores(arrays["image"], arrays)
  assert items.shape == (16,) and ((items >= 0) & (items <= 1)).all()


def test_score_predictions_arithmetic():
  target = np.array([[1, 0, 0, 5], [0, 3, 0, 0]])
  pred = np.array([[1, 0, 2, 4], [0, 3, 0, 0]])  # one class wrong, one spurious object
  s = grid_bed.GridJudge.score_predictions(pred, target)
  assert s["class"] == pytest.approx(2 / 3) and s["position"] == 1.0
  assert s["empty"] == pytest.approx(4 / 5) and s["all_correct"] == 0.5


def test_caption_scores_on_the_grid_bed(fake_data_dir):
  arrays = data.load("cifar_grid", "heldout", data_dir=fake_data_dir, **SIZES)
  truth = cg.decode(arrays["caption"])
  perfect = evaluate.caption_scores(truth, arrays, beds.CIFAR_GRID, grid=2)
  assert perfect["caption_class"] == perfect["caption_position"] == 1.0
  assert perfect["caption_parsed"] == perfect["caption_count"] == 1.0
  # Objects named in the wrong cells: classes right by index, positions wrong.
  swap = {"top": "bottom", "bottom": "top"}
  moved = [" ".join(swap.get(w, w) for w in t.split()) for t in truth]
  scores = evaluate.caption_scores(moved, arrays, beds.CIFAR_GRID, grid=2)
  assert scores["caption_position"] == 0.0 and scores["caption_class"] > 0


def test_tiny_grid_run_end_to_end(fake_data_dir, tmp_path):
  # Random-noise "photographs": the judge cannot name them, so the run says its gate is missed.
  env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
  cmd = [sys.executable, "-m", "infotok", "--config", "configs/infotok.py:tiny,bed=cifar_grid"]
  cmd += ["--workdir", str(tmp_path), f"--config.data.data_dir={fake_data_dir}"]
  cmd += ["--config.variants=('baseline',)", "--config.unified.styles=('ar',)"]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  m = json.loads((tmp_path / "results.json").read_text())["metrics"]
  assert set(m["judge_ceiling"]) == {"test_image", "heldout_image"}
  assert m["judge_ceiling"]["test_image"]["position"] == 1.0
  assert m["judge_ok"] is False  # random images: class accuracy near chance, below 0.90
  (row,) = m["rows"]
  assert (row["style"], row["variant"]) == ("ar", "baseline")
  for key in ("und_vqa_test", "und_caption_attr_heldout", "gen_attr_test", "gen_all_correct_test"):
    assert 0.0 <= row[key] <= 1.0
  assert (tmp_path / "generated_ar.png").stat().st_size > 1000


@pytest.mark.skipif(
  not os.path.isdir(os.path.join(data.default_data_dir(), "cifar10", "prepared-v1")),
  reason="cifar10 not prepared here (python -m shared.data.prepare cifar10)",
)
def test_judge_ceiling_on_real_scenes(judge, tmp_path):
  # The gate the bed's config states (judge.min_accuracy 0.90): per-cell class accuracy of the
  # shipped judge on real test scenes. Built into tmp_path, from the prepared cifar10 entry.
  os.symlink(os.path.join(data.default_data_dir(), "cifar10"), tmp_path / "cifar10")
  arrays = data.load("cifar_grid", "test", data_dir=str(tmp_path), num_test=300)
  scores = judge.judge_images(arrays["image"], arrays)
  assert scores["class"] >= 0.90 and scores["empty"] == 1.0 and scores["position"] == 1.0
