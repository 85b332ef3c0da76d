"""The data registry: `register` builders, `load` splits (cached as .npz), describe with `info`.

A builder is `fn(split, data_dir, **options) -> dict[str, np.ndarray]`, every array with the same
number of rows. Images are uint8 NHWC in [0, 255], and `load` keeps them so: a split of CIFAR-10
is 154 MB in host memory as uint8 (614 MB as float32). They become float on the device, inside
the jitted step or batch function (`shared.data.to_float`).
Names of the form `tfds:<name>[:<version>]` go to TensorFlow Datasets instead (`tfds_source`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from shared.data.split import Split
from shared.errors import DataError

Builder = Callable[..., dict[str, np.ndarray]]
TFDS_PREFIX = "tfds:"


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A registered data set: its builder, its splits, and how to describe it."""

  name: str
  build: Builder
  splits: tuple[str, ...]
  info: Callable[..., dict[str, Any]] | None = None
  version: int = 1
  cache: bool = True


REGISTRY: dict[str, Dataset] = {}


def register(
  name: str,
  *,
  splits: Sequence[str] = ("train", "test"),
  info: Callable[..., dict[str, Any]] | dict[str, Any] | None = None,
  version: int = 1,
  cache: bool = True,
) -> Callable[[Builder], Builder]:
  """Registers a builder `fn(split, data_dir, **options)` under `name`.

  Args:
    name: the name `load` and `info` know it by.
    splits: the split names it accepts.
    info: `fn(**options) -> dict` (or a fixed dict) describing the set: num_classes, image_shape,
      class_names, ...; `info(name)` adds `splits`.
    version: part of the cache key; bump it when the builder's output changes.
    cache: whether `load` keeps the built arrays as .npz under the data dir.
  """
  if name.startswith(TFDS_PREFIX):
    raise ValueError(f"names starting with {TFDS_PREFIX!r} are reserved for TFDS: {name!r}")

  def decorator(fn: Builder) -> Builder:
    if name in REGISTRY:
      raise ValueError(f"data set {name!r} is already registered")
    info_fn = (lambda **_: dict(info)) if isinstance(info, dict) else info
    REGISTRY[name] = Dataset(name, fn, tuple(splits), info_fn, version, cache)
    return fn

  return decorator


def names() -> list[str]:
  """The registered (built-in) data set names, sorted."""
  return sorted(REGISTRY)


def default_data_dir() -> str:
  """`$IBPRUNE_DATA`, else `~/.cache/ibprune`."""
  return os.environ.get("IBPRUNE_DATA") or os.path.join(
    os.path.expanduser("~"), ".cache", "ibprune"
  )


def load(
  name: str, split: str, *, data_dir: str | None = None, **options: Any
) -> dict[str, np.ndarray]:
  """Loads one whole split into memory: 'image' uint8 NHWC, 'label' int32, extras.

  Built-in sets are the same on every process; `tfds:` sets hold this process's part only (see
  `Split.process_local`), which `batches` and `eval_batches` take into account.

  Raises:
    DataError: unknown name, split or option; a missing file; an empty split; malformed arrays.
  """
  if name.startswith(TFDS_PREFIX):
    from shared.data import tfds_source  # Imports TensorFlow, so only on this path.

    unknown = sorted(set(options) - set(tfds_source.OPTIONS))
    if unknown:
      raise DataError(f"bad options {unknown} for {name!r}; TFDS sets take {tfds_source.OPTIONS}")
    arrays = tfds_source.load(name[len(TFDS_PREFIX) :], split, data_dir=data_dir, **options)
    info_ = None
  else:
    dataset = _lookup(name)
    if split not in dataset.splits:
      raise DataError(f"data set {name!r} has no split {split!r}; it has {list(dataset.splits)}")
    data_dir = data_dir or default_data_dir()
    options = _bind_options(dataset, split, data_dir, options)
    arrays = _cached_build(dataset, split, data_dir, options)
    info_ = dataset.info(**options) if dataset.info else None
  _validate(name, split, arrays, info_)
  return arrays


def info(name: str, *, data_dir: str | None = None, **options: Any) -> dict[str, Any]:
  """Describes a data set (num_classes, image_shape, class_names, splits, ... as it applies)."""
  if name.startswith(TFDS_PREFIX):
    from shared.data import tfds_source

    return tfds_source.info(name[len(TFDS_PREFIX) :], data_dir=data_dir, **options)
  dataset = _lookup(name)
  options = _bind_options(dataset, dataset.splits[0], data_dir or default_data_dir(), options)
  out = dataset.info(**options) if dataset.info else {}
  return {"name": name, "splits": list(dataset.splits), **out}


def _lookup(name: str) -> Dataset:
  if name not in REGISTRY:
    raise DataError(
      f"unknown data set {name!r}; built-in sets are {names()}, or use 'tfds:<name>' for TFDS"
    )
  return REGISTRY[name]


def _bind_options(
  dataset: Dataset, split: str, data_dir: str, options: dict[str, Any]
) -> dict[str, Any]:
  """The builder's options with its defaults filled in (so equal requests share a cache file)."""
  try:
    bound = inspect.signature(dataset.build).bind(split, data_dir, **options)
  except TypeError as e:
    params = list(inspect.signature(dataset.build).parameters)[2:]
    raise DataError(f"bad options for data set {dataset.name!r} ({e}); it takes {params}") from None
  bound.apply_defaults()
  params = inspect.signature(dataset.build).parameters
  out = {}
  for key, value in list(bound.arguments.items())[2:]:
    if params[key].kind is inspect.Parameter.VAR_KEYWORD:  # A builder's own **options.
      out.update(value)
    else:
      out[key] = value
  return out


def cache_path(dataset: Dataset, split: str, data_dir: str, options: dict[str, Any]) -> str:
  """Where `load` keeps a built split: <data_dir>/<name>/<split>-<hash of version+options>.npz."""
  key = json.dumps({"version": dataset.version, "options": options}, sort_keys=True, default=str)
  digest = hashlib.sha256(key.encode()).hexdigest()[:12]
  return os.path.join(data_dir, dataset.name, f"{split}-{digest}.npz")


def _cached_build(
  dataset: Dataset, split: str, data_dir: str, options: dict[str, Any]
) -> dict[str, np.ndarray]:
  path = cache_path(dataset, split, data_dir, options)
  if dataset.cache and os.path.exists(path):
    try:
      with np.load(path, allow_pickle=False) as f:
        return Split({k: f[k] for k in f.files})
    except Exception as e:  # A truncated or foreign file: rebuild it rather than fail.
      logging.warning("rebuilding unreadable cache %s (%s)", path, e)
  arrays = Split(dataset.build(split, data_dir, **options))
  if dataset.cache:
    _save_atomic(path, arrays)
  return arrays


def _save_atomic(path: str, arrays: dict[str, np.ndarray]) -> None:
  """Writes to a temporary file then renames, so concurrent processes never read half a file."""
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".npz.tmp")
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
  except OSError as e:  # The cache is only a speed-up; a read-only data dir must not stop a run.
    logging.warning("could not cache %s (%s)", path, e)


def _validate(name: str, split: str, arrays: dict[str, np.ndarray], info_: dict | None) -> None:
  """Checks the invariants every caller relies on, naming the data set and field at fault."""
  where = f"data set {name!r} split {split!r}"
  if "image" not in arrays:
    raise DataError(f"{where} has no 'image' field (fields: {sorted(arrays)})")
  sizes = {k: len(v) for k, v in arrays.items()}
  if len(set(sizes.values())) > 1:
    raise DataError(f"{where}: fields have different numbers of rows {sizes}")
  if sizes["image"] == 0:
    raise DataError(f"{where} is empty (0 examples); check its size options")
  image = arrays["image"]
  if image.ndim != 4 or image.dtype not in (np.uint8, np.float32):
    raise DataError(f"{where}: 'image' must be uint8 NHWC, got {image.dtype} {image.shape}")
  if info_ and "image_shape" in info_ and tuple(image.shape[1:]) != tuple(info_["image_shape"]):
    raise DataError(
      f"{where}: 'image' has shape {image.shape[1:]}, expected {tuple(info_['image_shape'])}"
    )
  if "label" in arrays:
    label = arrays["label"]
    if label.dtype != np.int32:
      raise DataError(f"{where}: 'label' must be int32, got {label.dtype}")
    num_classes = (info_ or {}).get("num_classes")
    if num_classes and (label.min() < 0 or label.max() >= num_classes):
      raise DataError(
        f"{where}: 'label' outside the {num_classes} classes (min {label.min()}, max {label.max()})"
      )
