"""Frechet distances of image sets: feature extractors and their feature statistics.

Two kinds of extractor, both a `FeatureExtractor` (a name, a Flax module and its variables):

- `load_inception(path)`: Inception-v3 pool3 (2048-d, `shared.models.inception`) in the layout
  of pytorch-fid's FID Inception (`pt_inception-2015-12-05-*.pth`). Weights come from a file the
  user supplies, never from the network: a PyTorch state dict (.pth, read weights-only, needs
  torch), a .safetensors or an .npz of the same arrays under the same names. FDs with these
  features are FIDs.
- `train_classifier_features(images, labels, num_classes)`: the in-repo default for the embedded
  data sets (digits, mnist5k, shapes, ...): a small conv classifier trained on labelled images;
  its penultimate layer gives the features. FDs with these features are only comparable with FDs
  from the same extractor, which is why every extractor carries a `name` for the report.

`feature_stats` streams features into a `shared.metrics.FeatureStats` (mean, covariance; saved
and loaded as .npz), whose `frechet_distance` is `shared.metrics.frechet_distance`.

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

from shared import stages, train_lib, workdir
from shared.errors import ConfigError, DataError
from shared.metrics import FeatureStats
from shared.models import inception
from shared.models.resnet import ResNetClassifier

INCEPTION_NAME = "inception_v3_fid_pool3"

# ---------------------------------------------------------------------------------------------
# The small conv classifier: the default extractor for the embedded data sets


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
  "fid_inception_v3": (inception.FIDInceptionV3, "__call__", inception.resize_for_inception),
  "resnet_classifier": (ResNetClassifier, "features", None),  # shared.judge
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

    Images move to the device one batch at a time (`stages.batched_apply`), so a large host
    array is fine.
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

    def features(chunk):  # the float conversion stays outside the jitted network, as before
      x = _as_float_images(chunk)
      if self._prepare is not None:
        x = self._prepare(x)
      return self._apply(self.variables, x)

    return stages.batched_apply(features, images, self.batch_size)

  def save(self, path) -> None:
    """Writes variables and metadata to one .npz (loadable with `FeatureExtractor.load`).

    Atomic (`shared.workdir.save_npz`): an interrupted save leaves the previous file, or none.
    """
    meta = {
      "name": self.name,
      "arch": self.arch,
      "arch_kwargs": self.arch_kwargs,
      "input_shape": self.input_shape,
      "info": self.info,
    }
    flat = traverse_util.flatten_dict(jax.device_get(dict(self.variables)), sep="/")
    arrays = {"__meta__": np.array(json.dumps(meta)), **{f"v/{k}": v for k, v in flat.items()}}
    workdir.save_npz(path, arrays, every_process=True)

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
    path: .pth (a PyTorch state dict, read with weights_only=True; needs torch), .safetensors or
      .npz with the same keys and PyTorch layouts, e.g. pytorch-fid's
      pt_inception-2015-12-05-6726825d.pth. Nothing is downloaded.

  Raises:
    DataError: a missing or unreadable file, or weights that do not fit the architecture.
  """
  path = os.fspath(path)
  state = workdir.read_state_dict(path, what="Inception weights")
  return FeatureExtractor(
    name=INCEPTION_NAME,
    arch="fid_inception_v3",
    arch_kwargs={},
    variables=inception.inception_variables_from_state_dict(state, source=path),
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

  The steps are `train_lib`'s (`loss_step`, `make_step`, `train_loop`) on a mesh of this process's
  first device: the extractor is the same network whatever the number of devices or processes
  (each process trains the same one from the same seed), so FDs stay comparable across machines.

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
  images_host, labels_host = np.asarray(images), np.asarray(labels)

  def loss_fn(params, model_state, batch, rng):
    del rng  # deterministic: no dropout, no augmentation
    logits = model.apply({"params": params}, batch["image"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return loss, ({}, model_state)

  def batches(start: int):
    for idx_B in batch_idx_SxB[start:]:
      yield {"image": images_host[idx_B], "label": labels_host[idx_B]}

  mesh = train_lib.make_mesh(devices=jax.local_devices()[:1])
  state = train_lib.TrainState.create(
    params=params, tx=optax.adam(learning_rate), rng=jax.random.PRNGKey(seed)
  )
  state_sharding = train_lib.state_shardings(state, mesh)
  data_sharding = train_lib.batch_sharding(mesh)
  step = train_lib.make_step(train_lib.loss_step(loss_fn), state_sharding, data_sharding)
  state = train_lib.train_loop(
    state=jax.device_put(state, state_sharding),
    step_fn=step,
    batches=batches,
    num_steps=steps,
    data_sharding=data_sharding,
    progress=False,
    stage="feature_classifier",
  )
  params = state.params
  extractor = FeatureExtractor(
    name=name or f"conv_classifier_{h}x{w}x{c}_{num_classes}c_seed{seed}",
    arch="conv_classifier",
    arch_kwargs=arch_kwargs,
    variables={"params": params},
    input_shape=(h, w, c),
  )
  predict = jax.jit(lambda p, x: jnp.argmax(model.apply({"params": p}, x), axis=-1))
  predicted = stages.batched_apply(lambda x: predict(params, x), images_host, 1024)
  correct = int(np.sum(predicted == labels_host))
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
