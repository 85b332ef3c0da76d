"""Feature extractors for Frechet distances, with the name of the features they give.

Two kinds, both wrapped in a `FeatureExtractor` (a name, a Flax module and its variables):

- `load_inception(path)`: Inception-v3 pool3 (2048-d) in the layout of pytorch-fid's FID Inception
  (the TF 2015-12-05 graph ported to PyTorch: `pt_inception-2015-12-05-*.pth`). Weights come from
  a file the user supplies, never from the network: a PyTorch state dict (.pth, needs torch) or an
  .npz of the same arrays under the same names (`np.savez(path, **{k: v.numpy() for k, v in
  state_dict.items()})`). FDs with these features are FIDs.
- `train_classifier_features(images, labels, num_classes)`: the in-repo default for the embedded
  data sets (digits, mnist5k, shapes, ...): a small conv classifier trained on labelled images;
  its penultimate layer gives the features. FDs with these features are only comparable with FDs
  from the same extractor, which is why every extractor carries a `name` for the report.

Images are NHWC, float in [0, 1] or uint8 in [0, 255].
"""

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from shared.errors import ConfigError, DataError
from shared.metrics import FeatureStats

# ---------------------------------------------------------------------------------------------
# Inception-v3, FID variant (pytorch-fid's FIDInceptionA/C/E_1/E_2 patches on torchvision's net)

INCEPTION_SIZE = 299
INCEPTION_NAME = "inception_v3_fid_pool3"


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


def _read_state_dict(path: str) -> dict[str, np.ndarray]:
  if not os.path.isfile(path):
    raise DataError(f"Inception weights file not found: {path} (nothing is downloaded)")
  if path.endswith(".npz"):
    try:
      with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
    except (ValueError, OSError) as e:
      raise DataError(f"cannot read Inception weights {path}: {e}") from e
  try:
    import torch  # noqa: PLC0415 - optional dependency, only for .pth files
  except ImportError as e:
    raise DataError(
      f"{path} looks like a PyTorch file and torch is not installed; install the 'torch' extra "
      "or convert it: np.savez(out, **{k: v.numpy() for k, v in torch.load(path).items()})"
    ) from e
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types for corrupt files
    raise DataError(f"cannot read Inception weights {path}: {e}") from e
  if hasattr(state, "state_dict"):
    state = state.state_dict()
  return {k: v.detach().cpu().numpy() for k, v in state.items() if hasattr(v, "detach")}


# ---------------------------------------------------------------------------------------------
# Small conv classifier: the default extractor for the embedded data sets


class ConvClassifier(nn.Module):
  """conv3x3 -> conv3x3/2 -> conv3x3/2 -> global mean -> dense(F) [features] -> dense(C).

  Inputs are standardised with the training set's scalar mean and std: x' = (x - m) / s.
  """

  num_classes: int
  widths: Sequence[int] = (16, 32, 64)
  feature_dim: int = 128
  input_mean: float = 0.0
  input_std: float = 1.0

  def setup(self):
    strides = [(1, 1)] + [(2, 2)] * (len(self.widths) - 1)
    self.convs = [
      nn.Conv(w, (3, 3), s, padding="SAME") for w, s in zip(self.widths, strides, strict=True)
    ]
    self.embed = nn.Dense(self.feature_dim)
    self.head = nn.Dense(self.num_classes)

  def features(self, images_NxHxWxC: jax.Array) -> jax.Array:
    x = (images_NxHxWxC - self.input_mean) / self.input_std
    for conv in self.convs:
      x = nn.relu(conv(x))
    return nn.relu(self.embed(jnp.mean(x, axis=(1, 2))))

  def __call__(self, images_NxHxWxC: jax.Array) -> jax.Array:
    return self.head(self.features(images_NxHxWxC))


# ---------------------------------------------------------------------------------------------
# The extractor object

# arch -> (module class, method giving features, input preparation or None). An explicit registry,
# not importlib strings. Inception's resize runs as its own jitted step so that images of any size
# share one compilation of the network.
_ARCHITECTURES = {
  "conv_classifier": (ConvClassifier, "features", None),
  "fid_inception_v3": (FIDInceptionV3, "__call__", resize_for_inception),
}


def _as_nhwc(images) -> np.ndarray | jax.Array:
  """Any array-like of images -> (N, H, W, C), without copying it to the device."""
  images = images if hasattr(images, "ndim") else np.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4:
    raise DataError(f"images must be (N, H, W, C) or (N, H, W), got shape {images.shape}")
  return images


def _as_float_images(images) -> jax.Array:
  """uint8 [0, 255] -> float32 [0, 1]; float stays; (N, H, W) gains a channel axis."""
  images = _as_nhwc(images)
  if images.dtype == np.uint8:
    return jnp.asarray(images, jnp.float32) / 255.0
  return jnp.asarray(images, jnp.float32)


class FeatureExtractor:
  """A named feature map images -> features (N, D), batched and jitted, savable to .npz.

  Attributes:
    name: what the report prints as "features used" next to an FD.
    arch: key into the architecture registry; arch_kwargs rebuild the module.
    variables: Flax variables.
    input_shape: (H, W, C) the module expects, or None for any size (Inception resizes).
    info: free-form provenance (e.g. training steps and accuracy of a classifier).
  """

  def __init__(
    self,
    name: str,
    arch: str,
    arch_kwargs: Mapping[str, Any],
    variables: Mapping,
    input_shape: Sequence[int] | None = None,
    info: Mapping[str, Any] | None = None,
    batch_size: int = 256,
  ):
    if arch not in _ARCHITECTURES:
      raise ConfigError(f"unknown feature architecture {arch!r}; known: {sorted(_ARCHITECTURES)}")
    self.name = name
    self.arch = arch
    self.arch_kwargs = dict(arch_kwargs)
    self.variables = variables
    self.input_shape = None if input_shape is None else tuple(int(s) for s in input_shape)
    self.info = dict(info or {})
    self.batch_size = batch_size
    module_cls, method, prepare = _ARCHITECTURES[arch]
    # JSON round trips turn tuples into lists; module fields should be hashable.
    self.module = module_cls(
      **{k: tuple(v) if isinstance(v, list) else v for k, v in self.arch_kwargs.items()}
    )
    self._prepare = jax.jit(prepare) if prepare else None
    self._apply = jax.jit(lambda v, x: self.module.apply(v, x, method=method))

  def __repr__(self) -> str:
    return f"FeatureExtractor(name={self.name!r}, arch={self.arch!r})"

  def __call__(self, images) -> np.ndarray:
    """Features (N, D) as float32 numpy; batches are padded to one size so it compiles once.

    Images move to the device one batch at a time, so a large host array is fine.
    """
    images = _as_nhwc(images)
    if self.input_shape is not None and tuple(images.shape[1:]) != self.input_shape:
      raise DataError(
        f"feature extractor {self.name!r} expects images {self.input_shape}, "
        f"got {tuple(images.shape[1:])}"
      )
    n = images.shape[0]
    if n == 0:
      raise DataError("feature extractor got an empty image batch")
    batch = min(self.batch_size, n)
    out = []
    for start in range(0, n, batch):
      chunk = _as_float_images(images[start : start + batch])
      valid = chunk.shape[0]
      if valid < batch:
        chunk = jnp.concatenate([chunk, jnp.zeros((batch - valid, *chunk.shape[1:]), chunk.dtype)])
      if self._prepare is not None:
        chunk = self._prepare(chunk)
      out.append(np.asarray(self._apply(self.variables, chunk))[:valid])
    return np.concatenate(out)

  def save(self, path) -> None:
    """Writes variables and metadata to one .npz (loadable with `FeatureExtractor.load`)."""
    meta = {
      "name": self.name,
      "arch": self.arch,
      "arch_kwargs": self.arch_kwargs,
      "input_shape": self.input_shape,
      "info": self.info,
    }
    flat = traverse_util.flatten_dict(jax.device_get(dict(self.variables)), sep="/")
    np.savez(path, __meta__=np.array(json.dumps(meta)), **{f"v/{k}": v for k, v in flat.items()})

  @classmethod
  def load(cls, path, batch_size: int = 256) -> "FeatureExtractor":
    path = os.fspath(path)
    if not os.path.isfile(path):
      raise DataError(f"feature extractor file not found: {path}")
    try:
      with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["__meta__"]))
        flat = {k[2:]: jnp.asarray(data[k]) for k in data.files if k.startswith("v/")}
    except (KeyError, ValueError, OSError) as e:
      raise DataError(f"not a saved feature extractor: {path} ({e})") from e
    return cls(
      name=meta["name"],
      arch=meta["arch"],
      arch_kwargs=meta["arch_kwargs"],
      variables=traverse_util.unflatten_dict(flat, sep="/"),
      input_shape=meta["input_shape"],
      info=meta["info"],
      batch_size=batch_size,
    )


def load_inception(path, batch_size: int = 50) -> FeatureExtractor:
  """FID Inception-v3 pool3 features (N, 2048) from a user-supplied weights file.

  Args:
    path: .pth (PyTorch state dict; needs torch) or .npz with the same keys and PyTorch layouts,
      e.g. pytorch-fid's pt_inception-2015-12-05-6726825d.pth. Nothing is downloaded.

  Raises:
    DataError: a missing or unreadable file, or weights that do not fit the architecture.
  """
  path = os.fspath(path)
  variables = inception_variables_from_state_dict(_read_state_dict(path), source=path)
  return FeatureExtractor(
    name=INCEPTION_NAME,
    arch="fid_inception_v3",
    arch_kwargs={},
    variables=variables,
    info={"weights": os.path.basename(path)},
    batch_size=batch_size,
  )


def _check_labelled(images, labels, num_classes: int) -> tuple[jax.Array, jax.Array]:
  images = _as_float_images(images)
  labels = np.asarray(labels)
  if labels.shape != (images.shape[0],):
    raise DataError(f"labels {labels.shape} do not match {images.shape[0]} images")
  if images.shape[0] == 0:
    raise DataError("cannot train a feature classifier on an empty image set")
  if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= num_classes:
    raise DataError(
      f"labels must be integers in [0, {num_classes}), got {labels.min()}..{labels.max()}"
    )
  return images, jnp.asarray(labels, jnp.int32)


def train_classifier_features(
  images,
  labels,
  num_classes: int,
  steps: int = 300,
  seed: int = 0,
  batch_size: int = 64,
  learning_rate: float = 2e-3,
  widths: Sequence[int] = (16, 32, 64),
  feature_dim: int = 128,
  name: str | None = None,
) -> FeatureExtractor:
  """Trains a `ConvClassifier` with Adam on softmax cross-entropy; its penultimate layer is the map.

    min_theta E_(x, y) [ -log softmax(f_theta(x))_y ],  minibatches drawn with replacement.

  Args:
    images: (N, H, W, C) or (N, H, W), float [0, 1] or uint8.
    labels: (N,) integers in [0, num_classes).
    name: for the report; default `conv_classifier_<H>x<W>x<C>_<num_classes>c_seed<seed>`.

  Returns:
    A `FeatureExtractor` whose `info` records steps, training-set size and training accuracy.
  """
  if steps < 1 or batch_size < 1 or num_classes < 2:
    raise ConfigError(
      f"need steps >= 1, batch_size >= 1, num_classes >= 2; got {steps}, {batch_size}, "
      f"{num_classes}"
    )
  images, labels = _check_labelled(images, labels, num_classes)
  n, h, w, c = images.shape
  arch_kwargs = {
    "num_classes": int(num_classes),
    "widths": [int(x) for x in widths],
    "feature_dim": int(feature_dim),
    "input_mean": float(np.mean(images)),
    "input_std": float(np.std(images)) or 1.0,
  }
  model = ConvClassifier(**arch_kwargs)
  # The rbg PRNG compiles in a fraction of threefry's time on CPU (seconds for this tiny net), and
  # minibatch indices come from numpy: neither needs threefry's cross-backend guarantees here.
  params = jax.jit(model.init)(jax.random.key(seed, impl="rbg"), images[:1])["params"]
  batch_idx_SxB = np.random.default_rng(seed).integers(0, n, size=(steps, batch_size))
  tx = optax.adam(learning_rate)
  opt_state = tx.init(params)

  def loss_fn(params, x, y):
    logits = model.apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def train_step(params, opt_state, idx_B, images, labels):
    grads = jax.grad(loss_fn)(params, images[idx_B], labels[idx_B])
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  for idx_B in batch_idx_SxB:
    params, opt_state = train_step(params, opt_state, idx_B, images, labels)

  extractor = FeatureExtractor(
    name=name or f"conv_classifier_{h}x{w}x{c}_{num_classes}c_seed{seed}",
    arch="conv_classifier",
    arch_kwargs=arch_kwargs,
    variables={"params": params},
    input_shape=(h, w, c),
  )
  predict = jax.jit(lambda p, x: jnp.argmax(model.apply({"params": p}, x), axis=-1))
  correct = sum(
    int(jnp.sum(predict(params, images[i : i + 1024]) == labels[i : i + 1024]))
    for i in range(0, n, 1024)
  )
  extractor.info = {"steps": steps, "n_train": n, "train_accuracy": correct / n, "seed": seed}
  return extractor


# ---------------------------------------------------------------------------------------------
# Streaming statistics and FD on images


def feature_stats(extractor: FeatureExtractor, images, chunk: int = 4096) -> FeatureStats:
  """Mean and covariance of extractor(images), accumulated `chunk` images at a time."""
  stats = FeatureStats()
  for start in range(0, len(images), chunk):
    stats.update(extractor(images[start : start + chunk]))
  return stats


def frechet_distance_images(extractor: FeatureExtractor, images_a, images_b) -> float:
  """FD between the Gaussians fitted to extractor features of two image sets (FID with Inception).

  FD = ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)),  (mu, S) of extractor(images).
  """
  return feature_stats(extractor, images_a).frechet_distance(feature_stats(extractor, images_b))
