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
import glob
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import grain.python as grain
import msgpack
import numpy as np

from shared.data.iterators import _local_batch_size, _process, num_rows
from shared.errors import DataError

Batch = dict[str, np.ndarray]
Row = dict[str, np.ndarray]

# One record per group: any row is read without decompressing its neighbours.
WRITER_OPTIONS = "group_size:1"
# Each grain element is a whole batch, so a small read-ahead is enough (grain's default of 500
# elements would hold 500 batches in memory).
READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})$")


class RowSource(Protocol):
  """A grain RandomAccessDataSource whose records are rows (dict name -> array)."""

  def __len__(self) -> int: ...

  def __getitem__(self, key: int) -> Row: ...


# ----------------------------------------------------------------------------------------------
# Rows <-> bytes


def encode_row(row: Mapping[str, Any]) -> bytes:
  """One row (name -> array or scalar) as msgpack bytes: name -> (dtype, shape, raw bytes)."""
  fields = {}
  for name, value in row.items():
    a = np.asarray(value)
    if a.dtype.hasobject:
      raise DataError(f"field {name!r} has dtype object; only fixed-width numpy dtypes stream")
    fields[name] = (a.dtype.str, list(a.shape), np.ascontiguousarray(a).tobytes())
  return msgpack.packb(fields, use_bin_type=True)


def decode_row(record: bytes) -> Row:
  """The inverse of `encode_row` (arrays are read-only views of the record's bytes)."""
  fields = msgpack.unpackb(record, raw=False)
  return {
    name: np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape)
    for name, (dtype, shape, raw) in fields.items()
  }


# ----------------------------------------------------------------------------------------------
# ArrayRecord files


def write_array_record(
  arrays: Mapping[str, np.ndarray],
  path: str,
  *,
  num_shards: int = 1,
  options: str = WRITER_OPTIONS,
) -> list[str]:
  """Writes the rows of an in-memory split to ArrayRecord file(s), atomically.

  Each file is written under a temporary name and renamed once all are complete, so a reader
  never sees a half-written split (a failed write removes its temporary files; a killed one
  leaves only `*.tmp-<pid>` files behind).

  Args:
    arrays: name -> array, equal numbers of rows (what `shared.data.load` returns).
    path: the file, or with `num_shards > 1` the prefix of `<path>-00000-of-0000N` files, which
      hold consecutive runs of rows.
    num_shards: how many files.
    options: ArrayRecord writer options; group_size:1 keeps random access cheap.

  Returns:
    The paths written, in row order (what `ArrayRecordSource` takes).
  """
  from array_record.python.array_record_module import ArrayRecordWriter

  n = num_rows(arrays)
  if not 1 <= num_shards <= n:
    raise DataError(f"num_shards must be in [1, {n}] (the number of rows), got {num_shards}")
  paths = (
    [path] if num_shards == 1 else [_shard_name(path, i, num_shards) for i in range(num_shards)]
  )
  bounds = np.linspace(0, n, num_shards + 1).astype(int)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  temps = [f"{p}.tmp-{os.getpid()}" for p in paths]
  try:
    for tmp, start, stop in zip(temps, bounds[:-1], bounds[1:], strict=True):
      writer = ArrayRecordWriter(tmp, options)
      try:
        for i in range(start, stop):
          writer.write(encode_row({k: v[i] for k, v in arrays.items()}))
      finally:
        writer.close()
    for tmp, final in zip(temps, paths, strict=True):
      os.replace(tmp, final)
  finally:
    for tmp in temps:
      if os.path.exists(tmp):
        os.remove(tmp)
  return paths


class ArrayRecordSource:
  """The rows of ArrayRecord files written by `write_array_record`, as a grain data source.

  Args:
    paths: a file, a list of files (read as one split, in order), or the prefix given to
      `write_array_record(..., num_shards=N)`: then all N `<prefix>-0000i-of-0000N` files.
  """

  def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike]):
    if isinstance(paths, str | os.PathLike):
      paths = _resolve(os.fspath(paths))
    self.paths = [os.fspath(p) for p in paths]
    if not self.paths:
      raise DataError("ArrayRecordSource needs at least one file")
    for p in self.paths:
      if not os.path.isfile(p):
        raise DataError(f"ArrayRecord file {p} does not exist")
    try:
      self._records = grain.ArrayRecordDataSource(self.paths)
    except Exception as e:  # array_record raises RuntimeError / ValueError for foreign files
      raise DataError(f"cannot read ArrayRecord files {self.paths} ({_first_line(e)})") from None
    if len(self._records) == 0:
      raise DataError(f"ArrayRecord files {self.paths} hold no rows")

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, key: int) -> Row:
    return decode_row(self._records[key])

  def __getitems__(self, keys: Sequence[int]) -> list[Row]:
    """Rows for many keys, read in parallel by array_record's own threads."""
    return [decode_row(r) for r in self._records.__getitems__(keys)]

  def __repr__(self) -> str:
    return f"ArrayRecordSource({self.paths!r})"


def _shard_name(prefix: str, index: int, count: int) -> str:
  return f"{prefix}-{index:05d}-of-{count:05d}"


def _resolve(path: str) -> list[str]:
  """A file, or the complete set of `<path>-NNNNN-of-NNNNN` shards."""
  if os.path.isfile(path):
    return [path]
  shards = sorted(
    glob.glob(glob.escape(path) + "-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9]")
  )
  if not shards:
    raise DataError(f"no ArrayRecord file {path} (nor shards {path}-NNNNN-of-NNNNN)")
  count = int(_SHARD.search(shards[0]).group(2))
  expected = [_shard_name(path, i, count) for i in range(count)]
  missing = sorted(set(expected) - set(shards))
  if missing or len(shards) != count:
    raise DataError(f"ArrayRecord shards of {path} are incomplete: missing {missing or shards}")
  return expected


# ----------------------------------------------------------------------------------------------
# TFDS


class TfdsSource:
  """A `tfds.data_source` with flattened feature names ('attributes/Smiling'), int64 -> int32.

  Reads one row at a time: TFDS decodes every record in Python anyway, so batched reads would
  buy little here (and the per-row path is the one `tfds.testing.mock_data` supports).
  """

  def __init__(self, source, features: Sequence[str] | None = None, name: str = ""):
    self._source = source
    self.features = tuple(features) if features else None
    self.name = name

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, key: int) -> Row:
    row = _flatten(self._source[key])
    if self.features is not None:
      missing = [f for f in self.features if f not in row]
      if missing:
        raise DataError(f"tfds:{self.name} has no features {missing}; it has {sorted(row)}")
      row = {f: row[f] for f in self.features}
    return {k: v.astype(np.int32) if v.dtype == np.int64 else v for k, v in row.items()}

  def __repr__(self) -> str:
    return f"TfdsSource({self.name!r}, features={self.features})"


def tfds_source(
  name: str, split: str, *, data_dir: str | None = None, features: Sequence[str] | None = None
) -> TfdsSource:
  """TFDS set `name` ('cifar10' or 'cifar10:3.0.2') as a random-access source, no TensorFlow.

  `tfds.data_source` needs the set prepared in ArrayRecord format
  (`tfds build NAME --file_format=array_record --data_dir DIR`); the default TFRecord format
  cannot be read at random, so it is an error that says how to prepare it.
  """
  try:
    import tensorflow_datasets as tfds  # only when asked: the optional `data` extra
  except ImportError:
    raise DataError(f"tfds:{name} needs tensorflow-datasets (pip install -e '.[data]')") from None
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir)
  except Exception as e:
    raise DataError(
      f"tfds:{name} split {split!r} cannot be opened for random access ({_first_line(e)}); "
      f"prepare it as ArrayRecord: tfds build {name.split(':')[0]} --file_format=array_record"
      + (f" --data_dir {data_dir}" if data_dir else "")
    ) from None
  return TfdsSource(source, features, name)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Row:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = np.asarray(v)
  return out


def _first_line(e: Exception) -> str:
  text = str(e).strip()
  return text.splitlines()[0][:200] if text else type(e).__name__


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
