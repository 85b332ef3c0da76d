"""Deterministic, resumable batch streams over in-memory splits, sharded across processes.

`batch_size` is always the global batch. When every process holds the whole split (built-in
sets), process p keeps rows [p*b, (p+1)*b) of each global batch, b = batch_size // process_count;
when each holds only its own part (`tfds:` sets, `Split.process_local`), it draws its b rows from
that part. Either way the stacked per-process batches form the global batch that
`jax.make_array_from_process_local_data` expects.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from shared.errors import DataError

Batch = dict[str, np.ndarray]


def batches(
  arrays: dict[str, np.ndarray],
  batch_size: int,
  *,
  seed: int,
  start_step: int = 0,
  shuffle: bool = True,
  drop_remainder: bool = True,
  process_index: int | None = None,
  process_count: int | None = None,
) -> Iterator[Batch]:
  """An endless stream of this process's share of each global batch, epoch after epoch.

  Epoch e is read in the order of a permutation drawn from (seed, e), so the batch at step k does
  not depend on where the stream started: `batches(..., start_step=k)` resumes exactly.

  Args:
    arrays: name -> array, all with the same number of rows (what `load` returns).
    batch_size: the global batch size; a multiple of the process count.
    seed: the shuffling seed.
    start_step: the step of the first batch yielded.
    shuffle: permute each epoch; False reads rows in order.
    drop_remainder: drop the last incomplete batch of each epoch; else yield it smaller (split
      across processes as evenly as it goes).
    process_index, process_count: default to `jax.process_index()`, `jax.process_count()`.

  Raises:
    DataError: a batch larger than the split, or not divisible by the process count.
  """
  index, count = _process(process_index, process_count)
  local_batch = _local_batch_size(batch_size, count)
  n = num_rows(arrays)
  process_local = getattr(arrays, "process_local", False)
  take = local_batch if process_local else batch_size  # Rows drawn per step from `arrays`.
  if take > n:
    where = "this process's part of the split" if process_local else "the split"
    raise DataError(f"batch_size {batch_size} is larger than {where} ({n} examples)")
  if start_step < 0:
    raise DataError(f"start_step must be >= 0, got {start_step}")
  steps_per_epoch = n // take if drop_remainder else math.ceil(n / take)

  def stream() -> Iterator[Batch]:
    step, perm_epoch, perm = start_step, None, None
    while True:
      epoch, i = divmod(step, steps_per_epoch)
      if epoch != perm_epoch:
        perm_epoch, perm = epoch, epoch_order(n, seed, epoch, shuffle)
      rows = perm[i * take : (i + 1) * take]
      if not process_local:
        if len(rows) == take:
          rows = rows[index * local_batch : (index + 1) * local_batch]
        else:  # The smaller last batch of an epoch (drop_remainder=False).
          rows = np.array_split(rows, count)[index]
      yield {k: v[rows] for k, v in arrays.items()}
      step += 1

  return stream()


def eval_batches(
  arrays: dict[str, np.ndarray],
  batch_size: int,
  *,
  process_index: int | None = None,
  process_count: int | None = None,
) -> Iterator[Batch]:
  """One pass over the split in order, for evaluation; the last batch padded with zero rows.

  Each batch has a boolean 'mask' marking real rows. Every process yields the same number of
  batches (needed for collective evaluation steps), of size batch_size // process_count.
  """
  index, count = _process(process_index, process_count)
  local_batch = _local_batch_size(batch_size, count)
  n = num_rows(arrays)
  if getattr(arrays, "process_local", False):
    shard = getattr(arrays, "shard_size", None) or n
    starts = [k * local_batch for k in range(math.ceil(shard / local_batch))]
  else:
    starts = [k * batch_size + index * local_batch for k in range(math.ceil(n / batch_size))]

  def stream() -> Iterator[Batch]:
    for start in starts:
      real = max(0, min(local_batch, n - start))
      batch = {}
      for k, v in arrays.items():
        padded = np.zeros((local_batch, *v.shape[1:]), v.dtype)
        padded[:real] = v[start : start + real]
        batch[k] = padded
      batch["mask"] = np.arange(local_batch) < real
      yield batch

  return stream()


def steps_per_epoch(
  arrays: dict[str, np.ndarray],
  batch_size: int,
  *,
  drop_remainder: bool = True,
  process_count: int | None = None,
) -> int:
  """How many steps of `batches(arrays, batch_size, ...)` make one epoch."""
  _, count = _process(0, process_count)
  take = batch_size // count if getattr(arrays, "process_local", False) else batch_size
  n = num_rows(arrays)
  return n // take if drop_remainder else math.ceil(n / take)


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
  """The order in which epoch `epoch` reads `n` rows: a permutation drawn from (seed, epoch)."""
  if not shuffle:
    return np.arange(n)
  return np.random.default_rng([seed % 2**64, epoch]).permutation(n)


def num_rows(arrays: dict[str, np.ndarray]) -> int:
  """The number of rows shared by all arrays."""
  sizes = {k: len(v) for k, v in arrays.items()}
  if not sizes or len(set(sizes.values())) != 1:
    raise DataError(f"arrays must be non-empty and have equal numbers of rows, got {sizes}")
  return next(iter(sizes.values()))


def _process(index: int | None, count: int | None) -> tuple[int, int]:
  if index is None or count is None:
    import jax  # Here, not at the top: `import shared.data` stays light.

    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
  if not 0 <= index < count:
    raise DataError(f"process_index {index} is outside [0, process_count={count})")
  return index, count


def _local_batch_size(batch_size: int, count: int) -> int:
  if batch_size <= 0 or batch_size % count:
    raise DataError(
      f"batch_size {batch_size} must be positive and divisible by the {count} processes"
    )
  return batch_size // count
