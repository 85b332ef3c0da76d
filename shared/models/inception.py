"""Inception-v3 up to pool3, laid out as pytorch-fid's FID Inception (the TF 2015-12-05 graph).

pytorch-fid's FIDInceptionA/C/E_1/E_2 patches on torchvision's net, with the state-dict mapping
both ways. Weights come from a file the user supplies (`shared.fd.load_inception`), never from the
network. Images are NHWC float in [0, 1]; any size (resized to 299x299), 1 or 3 channels.
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from shared.errors import DataError

INCEPTION_SIZE = 299


def _pad(ph: int, pw: int) -> tuple[tuple[int, int], tuple[int, int]]:
  return ((ph, ph), (pw, pw))


class BasicConv2d(nn.Module):
  """Conv (no bias) -> BatchNorm (eps 1e-3, running statistics) -> ReLU, as torchvision's.

  Convolutions run at full float32 precision (no TF32 on GPUs) so features, and FIDs, do not
  depend on the accelerator's default matmul precision.
  """

  features: int
  kernel: tuple[int, int] = (1, 1)
  strides: tuple[int, int] = (1, 1)
  padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))

  @nn.compact
  def __call__(self, x_NxHxWxC: jax.Array) -> jax.Array:
    x = nn.Conv(
      self.features,
      self.kernel,
      self.strides,
      padding=self.padding,
      use_bias=False,
      precision=jax.lax.Precision.HIGHEST,
      name="conv",
    )(x_NxHxWxC)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3_same(x: jax.Array) -> jax.Array:
  # TensorFlow's average pool ignores the zero padding (count_include_pad=False in pytorch-fid).
  return nn.avg_pool(x, (3, 3), (1, 1), padding=_pad(1, 1), count_include_pad=False)


def _max_pool_3x3_stride2(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), (2, 2), padding="VALID")


class InceptionA(nn.Module):
  """Mixed_5b/c/d: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 (64 + 64 + 96 + pool_features)."""

  pool_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = BasicConv2d(64, name="branch1x1")(x)
    b5 = BasicConv2d(48, name="branch5x5_1")(x)
    b5 = BasicConv2d(64, (5, 5), padding=_pad(2, 2), name="branch5x5_2")(b5)
    b3 = BasicConv2d(64, name="branch3x3dbl_1")(x)
    b3 = BasicConv2d(96, (3, 3), padding=_pad(1, 1), name="branch3x3dbl_2")(b3)
    b3 = BasicConv2d(96, (3, 3), padding=_pad(1, 1), name="branch3x3dbl_3")(b3)
    bp = BasicConv2d(self.pool_features, name="branch_pool")(_avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a (grid reduction): 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2 (384 + 96 + C_in)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv2d(384, (3, 3), (2, 2), name="branch3x3")(x)
    bd = BasicConv2d(64, name="branch3x3dbl_1")(x)
    bd = BasicConv2d(96, (3, 3), padding=_pad(1, 1), name="branch3x3dbl_2")(bd)
    bd = BasicConv2d(96, (3, 3), (2, 2), name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_stride2(x)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b-e: factorised 7x7 branches (1x7, 7x1), 4 x 192 channels."""

  channels_7x7: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    row, col = ((1, 7), _pad(0, 3)), ((7, 1), _pad(3, 0))
    b1 = BasicConv2d(192, name="branch1x1")(x)
    b7 = BasicConv2d(c7, name="branch7x7_1")(x)
    b7 = BasicConv2d(c7, row[0], padding=row[1], name="branch7x7_2")(b7)
    b7 = BasicConv2d(192, col[0], padding=col[1], name="branch7x7_3")(b7)
    bd = BasicConv2d(c7, name="branch7x7dbl_1")(x)
    bd = BasicConv2d(c7, col[0], padding=col[1], name="branch7x7dbl_2")(bd)
    bd = BasicConv2d(c7, row[0], padding=row[1], name="branch7x7dbl_3")(bd)
    bd = BasicConv2d(c7, col[0], padding=col[1], name="branch7x7dbl_4")(bd)
    bd = BasicConv2d(192, row[0], padding=row[1], name="branch7x7dbl_5")(bd)
    bp = BasicConv2d(192, name="branch_pool")(_avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a (grid reduction): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2 (320 + 192 + C_in)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv2d(192, name="branch3x3_1")(x)
    b3 = BasicConv2d(320, (3, 3), (2, 2), name="branch3x3_2")(b3)
    b7 = BasicConv2d(192, name="branch7x7x3_1")(x)
    b7 = BasicConv2d(192, (1, 7), padding=_pad(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv2d(192, (7, 1), padding=_pad(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv2d(192, (3, 3), (2, 2), name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_stride2(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b/c: 1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | pool-1x1 (320 + 768 + 768 + 192).

  `pool` is "avg" for Mixed_7b and "max" for Mixed_7c: the FID graph max-pools there
  (pytorch-fid's FIDInceptionE_2).
  """

  pool: str = "avg"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    row, col = ((1, 3), _pad(0, 1)), ((3, 1), _pad(1, 0))
    b1 = BasicConv2d(320, name="branch1x1")(x)
    b3 = BasicConv2d(384, name="branch3x3_1")(x)
    b3 = jnp.concatenate(
      [
        BasicConv2d(384, row[0], padding=row[1], name="branch3x3_2a")(b3),
        BasicConv2d(384, col[0], padding=col[1], name="branch3x3_2b")(b3),
      ],
      axis=-1,
    )
    bd = BasicConv2d(448, name="branch3x3dbl_1")(x)
    bd = BasicConv2d(384, (3, 3), padding=_pad(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate(
      [
        BasicConv2d(384, row[0], padding=row[1], name="branch3x3dbl_3a")(bd),
        BasicConv2d(384, col[0], padding=col[1], name="branch3x3dbl_3b")(bd),
      ],
      axis=-1,
    )
    if self.pool == "max":
      pooled = nn.max_pool(x, (3, 3), (1, 1), padding=_pad(1, 1))
    else:
      pooled = _avg_pool_3x3_same(x)
    bp = BasicConv2d(192, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def resize_for_inception(images_NxHxWxC: jax.Array) -> jax.Array:
  """Bilinear resize to 299x299 (half-pixel centres, no antialias: PyTorch's
  `F.interpolate(..., mode="bilinear", align_corners=False)`); grey images are tiled to RGB."""
  n, h, w, c = images_NxHxWxC.shape
  if c == 1:
    images_NxHxWxC = jnp.tile(images_NxHxWxC, (1, 1, 1, 3))
  elif c != 3:
    raise DataError(f"Inception features need 1 or 3 channels, got {c}")
  if (h, w) == (INCEPTION_SIZE, INCEPTION_SIZE):
    return images_NxHxWxC
  shape = (n, INCEPTION_SIZE, INCEPTION_SIZE, 3)
  return jax.image.resize(images_NxHxWxC, shape, method="bilinear", antialias=False)


class FIDInceptionV3(nn.Module):
  """Inception-v3 up to the pool3 features, laid out as pytorch-fid's FID Inception.

    features = mean_{h,w} Mixed_7c(... Conv2d_1a_3x3(2 x - 1)),   x in [0, 1], 299x299x3.

  Submodule names are the PyTorch attribute names, so parameter paths map one to one onto
  state-dict keys (see `inception_variables_from_state_dict`).
  """

  @nn.compact
  def __call__(self, images_NxHxWxC: jax.Array) -> jax.Array:
    x = 2.0 * resize_for_inception(images_NxHxWxC) - 1.0
    x = BasicConv2d(32, (3, 3), (2, 2), name="Conv2d_1a_3x3")(x)
    x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv2d(64, (3, 3), padding=_pad(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_stride2(x)
    x = BasicConv2d(80, name="Conv2d_3b_1x1")(x)
    x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3_stride2(x)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x = InceptionC(160, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE("avg", name="Mixed_7b")(x)
    x = InceptionE("max", name="Mixed_7c")(x)
    return jnp.mean(x, axis=(1, 2))


# Flax leaf name -> PyTorch state-dict suffix, and the collection it lives in.
_FLAX_TO_TORCH = {
  ("params", "kernel"): "weight",
  ("params", "scale"): "weight",
  ("params", "bias"): "bias",
  ("batch_stats", "mean"): "running_mean",
  ("batch_stats", "var"): "running_var",
}
# pytorch-fid's `InceptionV3` wrapper stores the same layers under `blocks.<i>.<j>`.
_WRAPPER_BLOCKS = {
  "blocks.0.0": "Conv2d_1a_3x3",
  "blocks.0.1": "Conv2d_2a_3x3",
  "blocks.0.2": "Conv2d_2b_3x3",
  "blocks.1.0": "Conv2d_3b_1x1",
  "blocks.1.1": "Conv2d_4a_3x3",
  **{
    f"blocks.2.{i}": name
    for i, name in enumerate(
      [
        "Mixed_5b",
        "Mixed_5c",
        "Mixed_5d",
        "Mixed_6a",
        "Mixed_6b",
        "Mixed_6c",
        "Mixed_6d",
        "Mixed_6e",
      ]
    )
  },
  "blocks.3.0": "Mixed_7a",
  "blocks.3.1": "Mixed_7b",
  "blocks.3.2": "Mixed_7c",
}


def _torch_key(path: tuple[str, ...]) -> str:
  collection, *modules, leaf = path
  return ".".join(modules) + "." + _FLAX_TO_TORCH[(collection, leaf)]


def _canonical_torch_key(key: str) -> str:
  key = key.removeprefix("module.")
  for prefix, name in _WRAPPER_BLOCKS.items():
    if key.startswith(prefix + "."):
      return name + key[len(prefix) :]
  return key


def inception_variable_shapes() -> dict:
  """Shapes of FIDInceptionV3's variables ({'params', 'batch_stats'}), without running it."""
  dummy = jax.ShapeDtypeStruct((1, INCEPTION_SIZE, INCEPTION_SIZE, 3), jnp.float32)
  return jax.eval_shape(FIDInceptionV3().init, jax.random.key(0), dummy)


def inception_state_dict_from_variables(variables: Mapping) -> dict[str, np.ndarray]:
  """Flax variables -> PyTorch-layout arrays (conv kernels HWIO -> OIHW), keyed as pytorch-fid."""
  state = {}
  for path, value in traverse_util.flatten_dict(dict(variables)).items():
    value = np.asarray(value)
    state[_torch_key(path)] = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value
  return state


def inception_variables_from_state_dict(state: Mapping[str, Any], source: str = "weights") -> dict:
  """PyTorch-layout arrays keyed as the FID Inception state dict -> FIDInceptionV3 variables.

  Accepts the keys of `fid_inception_v3()` (as in the released .pth) or of pytorch-fid's
  `InceptionV3` wrapper (`blocks.i.j.`), with or without a `module.` prefix. Extra entries
  (`fc.*`, `num_batches_tracked`) are ignored.

  Raises:
    DataError: a missing key or a wrongly shaped array, naming `source`.
  """
  state = {_canonical_torch_key(k): v for k, v in state.items()}
  flat = {}
  missing = []
  for path, spec in traverse_util.flatten_dict(inception_variable_shapes()).items():
    key = _torch_key(path)
    if key not in state:
      missing.append(key)
      continue
    value = np.asarray(state[key], np.float32)
    if value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if value.shape != spec.shape:
      raise DataError(f"{source}: {key} has shape {value.shape}, expected {spec.shape} (as HWIO)")
    flat[path] = jnp.asarray(value)
  if missing:
    raise DataError(
      f"{source}: {len(missing)} Inception weights missing, e.g. {missing[:3]}; expected the "
      "state dict of pytorch-fid's FID Inception (pt_inception-2015-12-05)"
    )
  return traverse_util.unflatten_dict(flat)
