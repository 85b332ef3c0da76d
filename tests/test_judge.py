"""shared.judge: trains, resumes from its result, saves float16 and loads back as float32."""

import numpy as np
import pytest

from shared import data, judge
from shared.errors import DataError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("judge"))
  info = judge.train(
    out, dataset="digits", width=8, stage_sizes=(1,), epochs=8, batch_size=64, dtype="float32"
  )
  return out, info


def test_trained_judge_beats_chance_and_loads_as_saved(trained):
  out, info = trained
  assert info["stored"] == "float16" and info["params"] > 0
  assert info["test_accuracy"] > 0.3  # 10 classes: chance is 0.1
  loaded = judge.load(out)
  test = data.load("digits", "test")
  probs = judge.probabilities(loaded, test["image"])
  assert probs.shape == (len(test["label"]), 10)
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
  assert np.mean(probs.argmax(-1) == test["label"]) == pytest.approx(info["test_accuracy"])
  feats = loaded(test["image"][:7])
  assert feats.shape == (7, 8) and np.isfinite(feats).all()


def test_second_call_returns_the_saved_result(trained):
  out, info = trained
  assert judge.train(out, dataset="digits", width=8, epochs=1) == info


def test_loading_another_extractor_is_a_data_error(tmp_path):
  from shared import fd

  ext = fd.train_classifier_features(
    np.zeros((8, 8, 8, 1), np.float32), np.arange(8) % 2, 2, steps=1, batch_size=4
  )
  ext.save(tmp_path / "other.npz")
  with pytest.raises(DataError, match="not a judge"):
    judge.load(str(tmp_path / "other.npz"))


def test_the_shipped_cifar10_judge_loads_and_says_how_it_was_made():
  shipped = judge.load("shared/assets/cifar10_judge")
  assert shipped.info["dataset"] == "cifar10" and shipped.info["command"].startswith("python -m")
  assert shipped.info["test_accuracy"] >= 0.93  # the gate it was shipped under (docs/results.md)
  images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  probs = judge.probabilities(shipped, images)
  assert probs.shape == (3, 10) and np.allclose(probs.sum(-1), 1.0, atol=1e-5)
  assert shipped(images).shape == (3, 8 * shipped.info["width"])


def test_gradflow_eval_uses_a_named_judge_for_features_and_recognition(trained, tmp_path):
  import types

  from configs import gradflow_prune as config_file
  from gradflow_prune import evaluator

  out, info = trained
  cfg = config_file.get_config("tiny")
  cfg.eval.judge = out
  test = data.load("digits", "test")
  extractor = evaluator._extractor(cfg, str(tmp_path), train=None)  # no classifier trained
  assert extractor.arch == "resnet_classifier" and extractor.info == info
  rec = evaluator.Evaluator.recognition(types.SimpleNamespace(extractor=extractor), test["image"])
  assert sum(rec["judge_histogram"]) == len(test["image"]) and 0.1 <= rec["judge_confidence"] <= 1
  assert config_file.get_config("cifar").eval.judge == judge.SHIPPED_CIFAR10
