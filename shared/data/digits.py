"""`digits`: scikit-learn's 1,797 8x8 handwritten digits, for tiny tests."""

from __future__ import annotations

import numpy as np

from shared.data.registry import register
from shared.data.splits import partition

NUM_EXAMPLES = 1797


def _info(seed: int = 0, test_size: int = 297, val_size: int = 0) -> dict:
  del seed  # The description does not depend on the partition.
  return {
    "num_classes": 10,
    "image_shape": (8, 8, 1),
    "class_names": [str(d) for d in range(10)],
    "sizes": {"train": NUM_EXAMPLES - test_size - val_size, "val": val_size, "test": test_size},
  }


@register("digits", splits=("train", "val", "test"), info=_info, version=2)
def build(
  split: str, data_dir: str, *, seed: int = 0, test_size: int = 297, val_size: int = 0
) -> dict[str, np.ndarray]:
  """8x8x1 uint8 images (the raw 0..16 intensities scaled to 0..255, rounded) and int32 labels.

  Args:
    split: 'train', 'val' or 'test'; by default 1,500 / 0 / 297 rows of a permutation from `seed`.
  """
  del data_dir  # Shipped with scikit-learn.
  from sklearn.datasets import load_digits  # Imported here: scikit-learn is slow to import.

  x, y = load_digits(return_X_y=True)
  rows = partition(len(x), split, seed=seed, test_size=test_size, val_size=val_size)
  image = np.round(x[rows] * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 8, 8, 1)
  return {"image": image, "label": y[rows].astype(np.int32)}
