"""shared.fd, shared.models.inception: FID Inception weight loading, the classifier extractor."""

import importlib.util

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from skimage.transform import resize
from sklearn.datasets import load_digits

from shared import fd
from shared.errors import ConfigError, DataError
from shared.models import inception

# ---- FID Inception ----


def _random_inception_variables(seed=0):
  """He-normal conv kernels and identity batch norms, filled in numpy (no init pass to compile)."""
  rng = np.random.default_rng(seed)
  flat = {}
  for path, spec in traverse_util.flatten_dict(inception.inception_variable_shapes()).items():
    if path[-1] == "kernel":
      fan_in = np.prod(spec.shape[:-1])
      value = rng.standard_normal(spec.shape) * np.sqrt(2.0 / fan_in)
    elif path[-1] in ("scale", "var"):
      value = rng.uniform(0.5, 1.5, spec.shape)
    else:
      value = 0.1 * rng.standard_normal(spec.shape)
    flat[path] = value.astype(np.float32)
  return traverse_util.unflatten_dict(flat)


@pytest.fixture(scope="module")
def inception_state():
  return inception.inception_state_dict_from_variables(_random_inception_variables())


def test_inception_state_dict_has_pytorch_fid_layout(inception_state):
  # torchvision's Inception3 without AuxLogits/fc: 94 conv+bn layers, 5 tensors each.
  assert len(inception_state) == 94 * 5
  expected_shapes = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
    "Mixed_7b.branch1x1.conv.weight": (320, 1280, 1, 1),
    "Mixed_7c.branch3x3dbl_1.conv.weight": (448, 2048, 1, 1),
    "Mixed_7c.branch3x3_2b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.bn.running_var": (192,),
  }
  for key, shape in expected_shapes.items():
    assert inception_state[key].shape == shape, key


def test_inception_npz_round_trip_and_features(tmp_path, inception_state):
  path = tmp_path / "pt_inception.npz"
  np.savez(path, **inception_state, **{"fc.weight": np.zeros((1008, 2048), np.float32)})
  extractor = fd.load_inception(path, batch_size=2)
  assert extractor.name == fd.INCEPTION_NAME
  expected = inception.inception_variables_from_state_dict(inception_state)
  chex.assert_trees_all_equal(extractor.variables, expected)
  round_trip = inception.inception_state_dict_from_variables(extractor.variables)
  assert all(np.array_equal(round_trip[k], v) for k, v in inception_state.items())

  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)  # 3 images, batches of 2
  feats = extractor(images)
  assert feats.shape == (3, 2048)
  assert np.all(np.isfinite(feats)) and np.all(feats >= 0)  # mean of ReLU outputs
  assert feats.std() > 0
  np.testing.assert_allclose(
    fd._as_float_images(images), images.astype(np.float32) / 255.0, rtol=1e-6
  )
  grey = extractor(rng.random((2, 20, 30, 1), dtype=np.float32))  # any size, 1 channel
  assert grey.shape == (2, 2048)


def test_inception_accepts_wrapper_and_prefixed_keys(inception_state):
  renamed = {}
  inverse = {name: prefix for prefix, name in inception._WRAPPER_BLOCKS.items()}
  for key, value in inception_state.items():
    layer, rest = key.split(".", 1)
    renamed[f"module.{inverse[layer]}.{rest}"] = value
  renamed["blocks.0.0.bn.num_batches_tracked"] = np.array(0)
  chex.assert_trees_all_equal(
    inception.inception_variables_from_state_dict(renamed),
    inception.inception_variables_from_state_dict(inception_state),
  )


def test_inception_bad_weights_are_data_errors(tmp_path, inception_state):
  missing = tmp_path / "nope.npz"
  with pytest.raises(DataError, match="nope.npz"):
    fd.load_inception(missing)
  partial = dict(inception_state)
  del partial["Mixed_6c.branch1x1.conv.weight"]
  with pytest.raises(DataError, match="missing"):
    inception.inception_variables_from_state_dict(partial)
  wrong = dict(inception_state)
  wrong["Conv2d_1a_3x3.conv.weight"] = np.zeros((32, 3, 5, 5), np.float32)
  with pytest.raises(DataError, match="Conv2d_1a_3x3"):
    inception.inception_variables_from_state_dict(wrong)
  if importlib.util.find_spec("torch") is None:
    pth = tmp_path / "weights.pth"
    pth.write_bytes(b"not really")
    with pytest.raises(DataError, match="torch"):
      fd.load_inception(pth)


def test_inception_resize_matches_pytorch_bilinear_convention():
  # PyTorch's bilinear, align_corners=False, no antialias == skimage's order-1 resize, edge mode.
  rng = np.random.default_rng(0)
  for shape in [(32, 20, 3), (310, 350, 3)]:
    x = rng.random(shape).astype(np.float32)
    ours = np.asarray(inception.resize_for_inception(jnp.asarray(x[None])))[0]
    ref = resize(x.astype(np.float64), (299, 299, 3), order=1, mode="edge", anti_aliasing=False)
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_fid_pools_ignore_padding():
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  avg = inception._avg_pool_3x3_same(x)
  # Corner: mean of the 2x2 valid neighbourhood, not of 9 values with 5 zeros.
  np.testing.assert_allclose(avg[0, 0, 0, 0], np.mean([0, 1, 4, 5]))
  np.testing.assert_allclose(avg[0, 1, 1, 0], np.mean([0, 1, 2, 4, 5, 6, 8, 9, 10]))


# ---- default extractor: a classifier trained on the data set ----


@pytest.fixture(scope="module")
def digits():
  data = load_digits()
  return (data.images / 16.0).astype(np.float32)[..., None], data.target


@pytest.fixture(scope="module")
def digits_extractor(digits):
  images, labels = digits
  return fd.train_classifier_features(images, labels, num_classes=10, steps=200, seed=0)


def test_classifier_extractor_learns_and_names_itself(digits, digits_extractor):
  images, _ = digits
  assert digits_extractor.name == "conv_classifier_8x8x1_10c_seed0"
  assert digits_extractor.info["train_accuracy"] > 0.9
  assert digits_extractor.info["steps"] == 200
  feats = digits_extractor(images)
  assert feats.shape == (len(images), 128) and feats.dtype == np.float32
  # Padding the last batch does not change any row.
  np.testing.assert_allclose(digits_extractor(images[:5]), feats[:5], rtol=1e-5, atol=1e-6)
  with pytest.raises(DataError, match="expects images"):
    digits_extractor(np.zeros((2, 28, 28, 1), np.float32))


def test_classifier_extractor_save_load(tmp_path, digits, digits_extractor):
  images, _ = digits
  path = tmp_path / "extractor.npz"
  digits_extractor.save(path)
  loaded = fd.FeatureExtractor.load(path)
  assert loaded.name == digits_extractor.name and loaded.info == digits_extractor.info
  np.testing.assert_array_equal(loaded(images[:64]), digits_extractor(images[:64]))
  with pytest.raises(DataError, match="missing.npz"):
    fd.FeatureExtractor.load(tmp_path / "missing.npz")


def test_classifier_fd_separates_distributions(digits, digits_extractor):
  images, labels = digits
  same = fd.frechet_distance_images(digits_extractor, images[0::2], images[1::2])
  different = fd.frechet_distance_images(digits_extractor, images[labels < 5], images[labels >= 5])
  assert different > 5 * same
  stats = fd.feature_stats(digits_extractor, images, chunk=500)
  full = digits_extractor(images)
  np.testing.assert_allclose(stats.mean, full.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats.cov, np.cov(full, rowvar=False), rtol=1e-4, atol=1e-6)


def test_classifier_training_rejects_bad_labels():
  images = np.zeros((4, 8, 8, 1), np.float32)
  with pytest.raises(DataError, match="labels"):
    fd.train_classifier_features(images, np.array([0, 1, 2, 10]), num_classes=10, steps=1)
  with pytest.raises(DataError):
    fd.train_classifier_features(images, np.array([0, 1]), num_classes=10, steps=1)
  with pytest.raises(DataError):
    fd.train_classifier_features(np.zeros((4, 8)), np.array([0, 1, 2, 3]), 10, steps=1)


def test_unknown_architecture_is_config_error():
  with pytest.raises(ConfigError):
    fd.FeatureExtractor("x", "resnet9000", {}, {})
