"""Fixed train / val / test partitions of a small data set by a seeded permutation."""

from __future__ import annotations

import numpy as np

from shared.errors import DataError


def partition(n: int, split: str, *, seed: int, test_size: int, val_size: int = 0) -> np.ndarray:
  """The row indices of `split` among `n` rows: test first, then val, the rest is train.

  The permutation depends only on (n, seed), so test and val stay fixed when the other sizes
  change, and the three splits never overlap. The indices are returned in the source's row order
  (sorted): where the source is ordered by label (mnist5k), so is every split, so take random
  subsets (`np.random.default_rng(seed).choice`), never the first n, and shuffle training batches.
  """
  if test_size < 0 or val_size < 0 or test_size + val_size > n:
    raise DataError(f"test_size {test_size} + val_size {val_size} must fit in the {n} examples")
  order = np.random.default_rng([seed % 2**64, n]).permutation(n)
  bounds = {
    "test": (0, test_size),
    "val": (test_size, test_size + val_size),
    "train": (test_size + val_size, n),
  }
  if split not in bounds:
    raise DataError(f"unknown split {split!r}; expected one of {list(bounds)}")
  lo, hi = bounds[split]
  return np.sort(order[lo:hi])
