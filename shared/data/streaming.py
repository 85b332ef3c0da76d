"""Streaming input for splits larger than memory: grain over ArrayRecord (or TFDS) sources.

The same contract as the in-memory `shared.data.batches`, read from disk row by row:

  paths = streaming.write_array_record(arrays, "/data/cifar10/train.array_record", num_shards=4)
  split = streaming.StreamingSplit.open(paths)       # or open_source("tfds:cifar10", "train")
  it = streaming.batches(split, 512, seed=0, start_step=step, worker_count=4)
  batch = next(it)                                   # this process's rows: dict name -> array
  it.get_state()  /  it.set_state(state)            # JSON-serialisable, saved with the TrainState

`batch_size` is the global batch. Epoch e reads the rows in grain's permutation of (seed, e)
(`MapDataset.shuffle`, O(1) memory whatever the size), cut into global batches; process p keeps
rows [p*b, (p+1)*b) of each, b = batch_size // process_count, and reads only those. So the global
batch at step k is the same for any number of processes and any number of grain workers, and
`start_step=k` or a saved state resumes exactly. The order differs from `shared.data.batches`'s
(numpy's permutation): switching pipeline changes which rows meet in a batch, not the statistics.

How a method uses it, from `config.data.pipeline = 'memory' | 'grain'` (with `data.worker_count`):

  if config.data.pipeline == "grain":
    split = streaming.open_source(config.data.name, "train", data_dir=config.data.data_dir)
    make = lambda s: streaming.batches(split, b, seed=seed, start_step=s, worker_count=w)
  else:
    arrays = data.load(config.data.name, "train", data_dir=config.data.data_dir)
    make = lambda s: data.batches(arrays, b, seed=seed, start_step=s)
  train_lib.train_loop(..., batches=make, checkpointer=ckpt)

`train_loop` saves `it.get_state()` beside the TrainState in each checkpoint and restores it with
`it.set_state` on resume (`Checkpointer.save(step, state, data_state=...)`). A built-in set goes
to ArrayRecord once with `write_array_record(data.load(name, split), path)` (on one process).

Rows are stored one ArrayRecord record each (group_size 1, for random access), as a msgpack map
name -> (numpy dtype string, shape, raw bytes): uint8 images stay uint8, fixed-width strings
(captions) are kept. Row fields must be numpy arrays or scalars (no nested dicts, no objects).
grain, array_record and msgpack are imported here, TensorFlow only by `tfds_source`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain.python as grain
import numpy as np

from shared.data.iterators import _local_batch_size, _process
from shared.data.stream_sources import (  # noqa: F401  (re-exported: the one streaming API)
  WRITER_OPTIONS,
  ArrayRecordSource,
  RowSource,
  TfdsSource,
  _first_line,
  decode_row,
  encode_row,
  tfds_source,
  write_array_record,
)
from shared.errors import DataError

Batch = dict[str, np.ndarray]
Row = dict[str, np.ndarray]


# Each grain element is a whole batch, so a small read-ahead is enough (grain's default of 500
# elements would hold 500 batches in memory).
READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)


# ----------------------------------------------------------------------------------------------
# Splits and batches


@dataclasses.dataclass(frozen=True)
class StreamingSplit:
  """A split read from disk: a row source and its number of rows (the stand-in for `Split`)."""

  source: RowSource
  num_rows: int

  @classmethod
  def of(cls, source: RowSource | StreamingSplit) -> StreamingSplit:
    if isinstance(source, StreamingSplit):
      return source
    n = len(source)
    if n <= 0:
      raise DataError(f"{source!r} is empty")
    return cls(source, n)

  @classmethod
  def open(cls, paths: str | Sequence[str]) -> StreamingSplit:
    """The split in ArrayRecord file(s) written by `write_array_record`."""
    return cls.of(ArrayRecordSource(paths))

  def __len__(self) -> int:
    return self.num_rows


def open_source(
  name: str, split: str, *, data_dir: str | None = None, features: Sequence[str] | None = None
) -> StreamingSplit:
  """A streaming split named as in a config's `data.name`.

  'array_record:DIR' reads `DIR/<split>.array_record` (one file or its shards); 'tfds:NAME'
  reads TFDS's ArrayRecord files (see `tfds_source`). Built-in sets are in memory already: use
  the 'memory' pipeline, or write them once with `write_array_record`.
  """
  kind, _, rest = name.partition(":")
  if kind == "array_record" and rest:
    return StreamingSplit.open(os.path.join(rest, f"{split}.array_record"))
  if kind == "tfds" and rest:
    return StreamingSplit.of(tfds_source(rest, split, data_dir=data_dir, features=features))
  raise DataError(
    f"data set {name!r} does not stream; use 'array_record:DIR' or 'tfds:NAME' "
    "(or data.pipeline='memory')"
  )


def steps_per_epoch(
  split: RowSource | StreamingSplit, batch_size: int, *, drop_remainder: bool = True
) -> int:
  """How many steps of `batches(split, batch_size, ...)` make one epoch."""
  n = StreamingSplit.of(split).num_rows
  return n // batch_size if drop_remainder else -(-n // batch_size)


def batches(
  split: RowSource | StreamingSplit,
  batch_size: int,
  *,
  seed: int,
  start_step: int = 0,
  shuffle: bool = True,
  drop_remainder: bool = True,
  process_index: int | None = None,
  process_count: int | None = None,
  worker_count: int = 0,
  read_options: grain.ReadOptions = READ_OPTIONS,
) -> StreamIterator:
  """An endless stream of this process's share of each global batch, epoch after epoch.

  The grain pipeline: `MapDataset.range(n).shuffle(seed).batch(batch_size).repeat()` gives the
  row keys of global batch k (per-epoch permutations, the last incomplete batch of each epoch
  dropped or kept); `.map` reads this process's slice of them from `split`. Each grain element is
  one step, so the stream is the same for any `worker_count`.

  Args:
    split: a `StreamingSplit` or any row source (`ArrayRecordSource`, `tfds_source(...)`).
    batch_size: the global batch size; a multiple of the process count.
    seed: the shuffling seed (taken mod 2**32, grain's range).
    start_step: the step of the first batch yielded.
    shuffle: permute each epoch; False reads rows in order.
    drop_remainder: drop the last incomplete batch of each epoch; else yield it smaller (split
      across processes as evenly as it goes).
    process_index, process_count: default to `jax.process_index()`, `jax.process_count()`.
    worker_count: grain worker processes reading and collating batches (0 = in this process,
      with `read_options.num_threads` threads).
    read_options: grain's read-ahead in this process, in batches.

  Returns:
    A `StreamIterator` (`get_state` / `set_state` for checkpoints).

  Raises:
    DataError: a batch larger than the split, or not divisible by the process count.
  """
  split = StreamingSplit.of(split)
  index, count = _process(process_index, process_count)
  local_batch = _local_batch_size(batch_size, count)
  if batch_size > split.num_rows:
    raise DataError(f"batch_size {batch_size} is larger than the split ({split.num_rows} rows)")
  if start_step < 0:
    raise DataError(f"start_step must be >= 0, got {start_step}")
  if worker_count < 0:
    raise DataError(f"worker_count must be >= 0, got {worker_count}")
  keys = grain.MapDataset.range(split.num_rows)
  if shuffle:
    keys = keys.shuffle(seed=seed % 2**32)
  steps = keys.batch(batch_size, drop_remainder=drop_remainder).repeat()
  steps = steps.map(_ReadLocalRows(split.source, index, count, local_batch))
  pipeline = {
    "rows": split.num_rows,
    "batch_size": batch_size,
    "process_count": count,
    "seed": seed,
    "shuffle": shuffle,
    "drop_remainder": drop_remainder,
  }
  return StreamIterator(steps, pipeline, start_step, worker_count, read_options)


class _ReadLocalRows:
  """Global batch keys -> this process's rows, collated (picklable, for grain's workers)."""

  def __init__(self, source: RowSource, index: int, count: int, local_batch: int):
    self.source, self.index, self.count, self.local_batch = source, index, count, local_batch

  def __call__(self, keys: np.ndarray) -> Batch:
    if len(keys) == self.local_batch * self.count:
      keys = keys[self.index * self.local_batch : (self.index + 1) * self.local_batch]
    else:  # The smaller last batch of an epoch (drop_remainder=False).
      keys = np.array_split(keys, self.count)[self.index]
    keys = [int(k) for k in keys]
    getitems = getattr(self.source, "__getitems__", None)
    rows = getitems(keys) if getitems is not None else [self.source[k] for k in keys]
    if not rows:  # More processes than rows in the last batch: an empty batch, same fields.
      first = self.source[0]
      return {k: np.zeros((0, *v.shape), v.dtype) for k, v in first.items()}
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _absl_flags_parsed() -> None:
  """grain's worker processes read absl flags; outside an absl app (tests, notebooks) they were
  never parsed and grain raises UnparsedFlagAccessError. Their defaults are what we want."""
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


class StreamIterator(Iterator[Batch]):
  """This process's batches from a step-indexed grain MapDataset, checkpointable.

  `get_state()` is a JSON-serialisable dict: the step of the next batch, grain's own iterator
  state, and the pipeline's settings (a state saved for other settings is refused with a
  DataError). `set_state` restores grain's state when the worker count is unchanged; otherwise
  it reopens at the saved step, which is the same stream because each element is one step.
  """

  def __init__(
    self,
    steps: grain.MapDataset,
    pipeline: dict[str, Any],
    start_step: int,
    worker_count: int,
    read_options: grain.ReadOptions,
  ):
    self._steps = steps
    self.pipeline = pipeline
    self.worker_count = worker_count
    self._read_options = read_options
    self._it = None
    self._open(start_step)

  @property
  def step(self) -> int:
    """The step of the next batch."""
    return self._step

  def _open(self, start_step: int) -> None:
    self.close()
    ds = self._steps[start_step:].to_iter_dataset(self._read_options)
    if self.worker_count:
      _absl_flags_parsed()
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.worker_count))
    self._it = iter(ds)
    self._start = self._step = start_step

  def __next__(self) -> Batch:
    batch = next(self._it)
    self._step += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    return {
      "step": self._step,
      "start_step": self._start,
      "worker_count": self.worker_count,
      "pipeline": self.pipeline,
      "grain": self._it.get_state(),
    }

  def set_state(self, state: Mapping[str, Any] | str | bytes) -> None:
    if isinstance(state, str | bytes):
      state = json.loads(state)
    saved = state.get("pipeline", {})
    differ = {k: (saved.get(k), v) for k, v in self.pipeline.items() if saved.get(k) != v}
    if differ:
      what = ", ".join(f"{k}={a!r} (now {b!r})" for k, (a, b) in differ.items())
      raise DataError(f"the data iterator state was saved for another stream: {what}")
    if state["worker_count"] == self.worker_count:
      self._open(int(state["start_step"]))
      self._it.set_state(state["grain"])
      self._step = int(state["step"])
    else:
      self._open(int(state["step"]))

  def close(self) -> None:
    """Stops grain's worker processes, if any (also done when the iterator is collected)."""
    close = getattr(self._it, "close", None)
    if close is not None:
      close()
