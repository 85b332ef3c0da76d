"""Row sources for `shared.data.streaming`: rows <-> bytes, ArrayRecord files, TFDS's files.

A row is a dict name -> numpy array. `encode_row` / `decode_row` store it as one msgpack record
(name -> (dtype string, shape, raw bytes)); `write_array_record` writes a split's arrays as
ArrayRecord file(s), optionally sharded (`<path>-00000-of-00004`), and `ArrayRecordSource` reads
them back with random access (grain's `RandomAccessDataSource` protocol). `tfds_source` reads a
prepared TFDS data set's ArrayRecord files without TensorFlow's input pipeline (TensorFlow is
imported there only). `shared.data.streaming` re-exports every public name.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import grain.python as grain
import msgpack
import numpy as np

from shared.data.iterators import num_rows
from shared.errors import DataError

Row = dict[str, np.ndarray]

# One record per group: any row is read without decompressing its neighbours.
WRITER_OPTIONS = "group_size:1"
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
