"""The uint8 release of a protected set: budget, round trip, bad files, and the run using it."""

import numpy as np
import pytest

import unlearnable
from configs import unlearnable as config_file
from shared.errors import ConfigError, DataError
from unlearnable import release, train


@pytest.mark.parametrize("eps", [8 / 255, 0.01, 0.3])
def test_uint8_release_keeps_the_linf_budget_and_the_range(eps):
  rng = np.random.default_rng(0)
  clean = rng.integers(0, 256, (64, 6, 6, 3), dtype=np.uint8)
  x = clean.astype(np.float32) / 255
  delta = rng.uniform(-eps, eps, x.shape).astype(np.float32)
  delta[:8] = np.sign(delta[:8]) * eps * 1.2  # even a delta over budget is clipped to it
  q = release.quantize(x, delta, eps)
  step = q.astype(int) - clean.astype(int)
  assert q.dtype == np.uint8 and q.shape == clean.shape
  assert np.abs(step).max() <= release.budget_levels(eps) <= 255 * eps + 1e-6
  # within the budget, the release is x + delta to the nearest grey level
  inside = (np.abs(delta) < eps - 1 / 255) & (x + delta > 0) & (x + delta < 1)
  np.testing.assert_array_equal(q[inside], np.rint((x + delta)[inside] * 255).astype(np.uint8))
  assert release.budget_levels(8 / 255) == 8


def test_protect_gives_uint8_within_budget_and_round_trips(tmp_path):
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
  labels = np.arange(40) % 4
  protected = unlearnable.protect(images, labels, method="random", eps=8 / 255, seed=3)
  assert protected.dtype == np.uint8 and protected.shape == images.shape
  assert np.abs(protected.astype(int) - images.astype(int)).max() <= 8
  assert np.any(protected != images)
  path = str(tmp_path / "protected.npz")
  unlearnable.save_protected(path, protected, labels)
  back = unlearnable.load_protected(path)
  np.testing.assert_array_equal(back["images"], protected)
  np.testing.assert_array_equal(back["labels"], labels)
  assert float(back["eps"]) == pytest.approx(8 / 255)
  with pytest.raises(DataError, match="uint8"):
    unlearnable.protect(images.astype(np.float32) / 255, labels, method="random")
  with pytest.raises(ConfigError, match="unknown protection method"):
    unlearnable.protect(images, labels, method="nope")


def test_a_protected_npz_of_the_wrong_dtype_shape_or_keys_is_a_data_error(tmp_path):
  bad = tmp_path / "bad.npz"
  np.savez(
    bad,
    images=np.zeros((4, 8, 8, 3), np.float32),
    labels=np.zeros(4, int),
    indices=np.arange(4),
    eps=np.float32(0.03),
  )
  with pytest.raises(DataError, match="uint8"):
    release.load_protected(str(bad))
  np.savez(
    bad,
    images=np.zeros((4, 8, 8, 3), np.uint8),
    labels=np.zeros(3, int),
    indices=np.arange(4),
    eps=np.float32(0.03),
  )
  with pytest.raises(DataError, match="labels"):
    release.load_protected(str(bad))
  np.savez(bad, images=np.zeros((4, 8, 8, 3), np.uint8))
  with pytest.raises(DataError, match="lacks"):
    release.load_protected(str(bad))
  with pytest.raises(DataError, match="not found"):
    release.load_protected(str(tmp_path / "none.npz"))


def test_the_run_trains_victims_on_the_released_file(tmp_path):
  import jax

  config = config_file.get_config("tiny")
  rng = np.random.default_rng(2)
  train_set = {
    "image": rng.integers(0, 256, (32, 8, 8, 3)).astype(np.float32) / 255,
    "label": (np.arange(32) % 4).astype(np.int32),
  }
  mdir = str(tmp_path / "random")
  args = (config, "random", train_set, 4, jax.random.PRNGKey(0), mdir)
  delta, _ = train.protected_delta(*args)
  released = release.load_protected(f"{mdir}/protected.npz")
  assert (tmp_path / "random" / "protected.png").is_file()
  np.testing.assert_allclose(
    train_set["image"] + delta, released["images"].astype(np.float32) / 255, atol=1e-6
  )
  again, _ = train.protected_delta(*args)  # resumed: read back from the same files
  np.testing.assert_array_equal(again, delta)
  config.release_uint8 = False
  float_delta, _ = train.protected_delta(*args)
  assert np.abs(float_delta - delta).max() <= 0.5 / 255 + 1e-6  # rounding only
