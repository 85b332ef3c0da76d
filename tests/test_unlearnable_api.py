"""unlearnable's Python API on arrays: protect -> evaluate_victim, the CLI's cell, bad input."""

import jax
import numpy as np
import pytest

import unlearnable
from configs import unlearnable as config_file
from shared.errors import ConfigError, DataError, UserError
from tests import background
from unlearnable import evaluate

fewer_compiler_optimisations = pytest.fixture(scope="module", autouse=True)(
  background.fewer_compiler_optimisations
)
KEYS = {"victim", "final", "peak", "curve", "train_s", "num_classes", "chance"}


@pytest.fixture(scope="module")
def tiny():
  """A tiny labelled set (uint8, 4 classes, class-dependent brightness) and the tiny config."""
  rng = np.random.default_rng(0)
  labels = np.arange(96) % 4
  images = rng.integers(0, 64, (96, 8, 8, 3)) + 48 * labels[:, None, None, None]
  images = images.astype(np.uint8)
  config = config_file.get_config("tiny")
  return dict(train=images[:64], labels=labels[:64], test=images[64:], test_labels=labels[64:],
              config=config)  # fmt: skip


def test_protect_then_evaluate_victim_returns_clean_test_accuracy(tiny):
  protected = unlearnable.protect(
    tiny["train"], tiny["labels"], method="random", config=tiny["config"], seed=1
  )
  out = unlearnable.evaluate_victim(
    protected, tiny["labels"], tiny["test"], tiny["test_labels"], config=tiny["config"], epochs=1
  )
  assert set(out) >= KEYS, out.keys()
  assert out["victim"] == "supervised" and out["num_classes"] == 4 and out["chance"] == 0.25
  assert 0.0 <= out["final"] <= out["peak"] <= 1.0 and out["curve"][-1][1] == out["final"]
  assert tiny["config"].victim.epochs == 2  # the caller's config is not modified


def test_evaluate_victim_is_the_cli_cell(tiny):
  """With the clean images given, the API trains on exactly what `python -m unlearnable` does."""
  config = tiny["config"]
  protected = unlearnable.protect(tiny["train"], tiny["labels"], method="random", config=config)
  out = unlearnable.evaluate_victim(
    protected, tiny["labels"], tiny["test"], tiny["test_labels"], config=config, seed=3,
    clean_images=tiny["train"],
  )  # fmt: skip
  to01 = lambda x: x.astype(np.float32) / 255
  sets = {
    "train": {"image": to01(tiny["train"]), "label": tiny["labels"].astype(np.int32)},
    "test": {"image": to01(tiny["test"]), "label": tiny["test_labels"].astype(np.int32)},
  }
  delta = unlearnable.release.as_delta(protected, sets["train"]["image"])
  cell = evaluate.run_victim(config, "supervised", "random", sets, delta, jax.random.PRNGKey(3), 4)
  assert out["final"] == cell["final"] and out["curve"] == cell["curve"]


def test_bad_input_is_a_one_line_user_error(tiny):
  x, y, xt, yt = tiny["train"], tiny["labels"], tiny["test"], tiny["test_labels"]
  cases = [
    (DataError, "uint8", lambda: unlearnable.evaluate_victim(x / 255.0, y, xt, yt)),
    (DataError, "labels must be 64", lambda: unlearnable.evaluate_victim(x, y[:10], xt, yt)),
    (DataError, "test images are", lambda: unlearnable.evaluate_victim(x, y, xt[:, :4], yt)),
    (DataError, "outside 3 classes",
     lambda: unlearnable.evaluate_victim(x, y, xt, yt, num_classes=3)),
    (DataError, "float in \\[0, 1\\]", lambda: unlearnable.evaluate_victim(x, y, xt * 2.0, yt)),
    (DataError, "N >= 1", lambda: unlearnable.evaluate_victim(x[:0], y[:0], xt, yt)),
    (ConfigError, "unknown victim 'resnet'",
     lambda: unlearnable.evaluate_victim(x, y, xt, yt, victim="resnet")),
    (ConfigError, "datawise", lambda: unlearnable.evaluate_victim(x, y, xt, yt, victim="datawise")),
    (ConfigError, "model 'vgg'", lambda: unlearnable.evaluate_victim(x, y, xt, yt, arch="vgg")),
    (ConfigError, "epochs", lambda: unlearnable.evaluate_victim(x, y, xt, yt, epochs=0)),
    (DataError, "clean_images are",
     lambda: unlearnable.evaluate_victim(x, y, xt, yt, clean_images=x[:5])),
  ]  # fmt: skip
  for error, match, call in cases:
    with pytest.raises(error, match=match) as info:
      call()
    assert isinstance(info.value, UserError) and "\n" not in str(info.value), match
