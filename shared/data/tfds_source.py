"""Any TensorFlow Datasets set as in-memory numpy arrays, this process's part of the split only.

The only module here that imports TensorFlow, and only when called: the core runs without it.
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from typing import Any

import numpy as np

from shared.data.split import Split
from shared.errors import DataError

OPTIONS = ("image_size", "label_key", "features", "process_index", "process_count")
READ_BATCH = 1024
TEXT_SEPARATOR = "\n"  # joins a sequence of strings (e.g. the 5 captions of a COCO image)


def load(
  name: str,
  split: str,
  *,
  data_dir: str | None = None,
  image_size: int | tuple[int, int] | None = None,
  label_key: str = "label",
  features: tuple[str, ...] | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
) -> Split:
  """This process's part of `split` of TFDS set `name` ('cifar10' or 'cifar10:3.0.2').

  Features come back flattened ('attributes/Smiling'): images uint8 NHWC (float32 in [0, 1]
  after `shared.data.load`), `label_key` as int32 'label'. Without `features`, numeric features
  only (ids and other strings are dropped). Files are read in order, so the same split gives the
  same arrays every time.

  Args:
    image_size: resize images (anti-aliased) to this size; needed where their sizes vary.
    label_key: the feature to serve as 'label' (e.g. 'coarse_label' of cifar100).
    features: keep exactly these (flattened) features, text included, and drop the rest before
      batching, so sets with ragged features (COCO's boxes) load: ('image', 'captions/text').
      Strings come back as a numpy str array; a sequence of strings per example (COCO's 5
      captions) as one string joined by TEXT_SEPARATOR.
    process_index, process_count: default to jax's; passed to `tfds.split_for_jax_process`.
  """
  tf, tfds = _import_tfds()
  if process_index is None or process_count is None:
    import jax

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  where = f"data set 'tfds:{name}' split {split!r}"
  try:
    local_split = tfds.split_for_jax_process(
      split, process_index=process_index, process_count=process_count
    )
    ds = tfds.load(name, split=local_split, data_dir=data_dir, shuffle_files=False)
    if features:
      available = sorted(_flatten_spec(ds.element_spec))
      missing = [f for f in features if f not in available]
      if missing:
        raise DataError(f"{where} has no features {missing} (features: {available})")
      ds = ds.map(lambda ex: _select(tf, ex, features))
    if image_size is not None:
      ds = ds.map(lambda ex: {**ex, "image": _resize(tf, ex["image"], image_size)})
    chunks = defaultdict(list)
    for batch in tfds.as_numpy(ds.batch(READ_BATCH)):
      for key, value in _flatten_spec(batch).items():
        chunks[key].append(np.asarray(value))
    total = _num_examples(tfds, name, split, data_dir)
  except DataError:
    raise
  except Exception as e:  # TFDS and TensorFlow raise many types; all mean "cannot read this".
    hint = _not_prepared_hint(tfds, name, data_dir)
    raise DataError(f"cannot load {where}: {type(e).__name__}: {_first_line(e)}{hint}") from None
  if not chunks:
    raise DataError(f"{where} is empty (0 examples on process {process_index})")
  keep = "biuf" + ("SO" if features else "")
  arrays = Split(
    {k: _text(np.concatenate(v)) for k, v in chunks.items() if v[0].dtype.kind in keep}
  )
  if label_key in arrays:
    arrays["label"] = arrays[label_key].astype(np.int32)
  elif label_key != "label":
    raise DataError(f"{where} has no feature {label_key!r} (features: {sorted(arrays)})")
  arrays.process_local = True
  n = len(arrays["image"]) if "image" in arrays else 0
  arrays.shard_size = max(n, math.ceil(total / process_count)) if total else n
  return arrays


def info(
  name: str,
  *,
  data_dir: str | None = None,
  image_size: int | tuple[int, int] | None = None,
  label_key: str = "label",
  **_: Any,
) -> dict[str, Any]:
  """num_classes, class_names, image_shape and split sizes from the TFDS builder's metadata."""
  _, tfds = _import_tfds()
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:
    raise DataError(f"unknown TFDS data set {name!r}: {_first_line(e)}") from None
  features = builder.info.features
  out: dict[str, Any] = {
    "name": f"tfds:{name}",
    "splits": list(builder.info.splits),
    "sizes": {k: v.num_examples for k, v in builder.info.splits.items()},
  }
  if "image" in features:
    shape = tuple(features["image"].shape)
    if image_size is not None:
      shape = (*_size_pair(image_size), shape[-1])
    out["image_shape"] = shape
  label = features[label_key] if label_key in features else None  # noqa: SIM401 (no .get)
  if isinstance(label, tfds.features.ClassLabel):
    out["num_classes"] = label.num_classes
    out["class_names"] = list(label.names)
  return out


def _import_tfds():
  try:
    import tensorflow as tf
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise DataError(
      f"TFDS data sets need TensorFlow and tensorflow-datasets ({e}); "
      "install them with: pip install '.[data]'"
    ) from None
  # TensorFlow only reads data here; the accelerators belong to JAX. (RuntimeError: it has
  # already been initialised, by an earlier call or by the caller.)
  with contextlib.suppress(RuntimeError):
    tf.config.set_visible_devices([], "GPU")
  return tf, tfds


def _not_prepared_hint(tfds, name: str, data_dir: str | None) -> str:
  """When the set was never prepared in `data_dir`, how to prepare it (TFDS's own error then is
  about its download or preparation, e.g. a missing module, which reads like a bug here)."""
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    if builder.is_prepared():
      return ""
    where = builder.data_dir
  except Exception:
    return ""
  base = name.split(":")[0]
  return (
    f" (it is not prepared in {where}: run `tfds build {base} --data_dir <dir>` on a machine "
    "with network, then pass that dir as data.data_dir)"
  )


def _num_examples(tfds, name: str, split: str, data_dir: str | None) -> int | None:
  """The size of the whole split (all processes), when the metadata knows it."""
  try:
    return int(tfds.builder(name, data_dir=data_dir).info.splits[split].num_examples)
  except Exception:  # Unknown before preparation, or mocked: fall back to the local size.
    return None


def _flatten_spec(tree: dict, prefix: str = "") -> dict:
  """{'captions': {'text': x}} -> {'captions/text': x}, for tensors and their specs alike."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten_spec(value, f"{prefix}{key}/"))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _select(tf, example: dict, features: tuple[str, ...]) -> dict:
  """The named (flattened) features of one example; string sequences joined into one string."""
  flat = _flatten_spec(example)
  out = {}
  for f in features:
    value = flat[f]
    if value.dtype == tf.string and value.shape.rank == 1:
      value = tf.strings.reduce_join(value, separator=TEXT_SEPARATOR)
    out[f] = value
  return out


def _text(a: np.ndarray) -> np.ndarray:
  """Byte strings (TFDS's text) -> a numpy str array; anything else unchanged."""
  if a.dtype.kind in "SO":
    return np.asarray([x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in a])
  return a


def _resize(tf, image, size):
  resized = tf.image.resize(image, _size_pair(size), antialias=True)
  return tf.cast(tf.round(tf.clip_by_value(resized, 0, 255)), tf.uint8)


def _size_pair(size: int | tuple[int, int]) -> tuple[int, int]:
  return (size, size) if isinstance(size, int) else tuple(size)


def _first_line(e: Exception) -> str:
  return (str(e).strip().splitlines() or [""])[0]
