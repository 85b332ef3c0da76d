"""Which input pipeline feeds a training stage, chosen by config: in memory (default) or grain.

    batches = pipeline.train_batches(config.data, arrays, 128, seed=0, cache_dir=workdir)
    train_lib.train_loop(..., batches=batches, checkpointer=ckpt)

Config fields read from `data_cfg` (absent fields take the defaults):
  pipeline       'memory' (`shared.data.batches` over the loaded split) | 'grain' (streaming)
  stream_source  grain only: 'array_record:DIR' or 'tfds:NAME' (see `streaming.open_source`);
                 empty: the loaded split is written once to
                 `<cache_dir>/stream/<split>.array_record` and streamed from there
  worker_count   grain only: reader processes (0 reads in this process)

With grain, `train_loop` stores the iterator's state in every checkpoint and resumes from it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from shared.data.iterators import batches as memory_batches
from shared.errors import ConfigError

PIPELINES = ("memory", "grain")
Batch = dict[str, np.ndarray]


class MappedIterator(Iterator[Batch]):
  """`fn` applied to every batch of `it`, keeping `it`'s get_state / set_state / close."""

  def __init__(self, it: Iterator[Batch], fn: Callable[[Batch], Batch]):
    self._it, self._fn = it, fn
    for name in ("get_state", "set_state", "close"):
      if hasattr(it, name):
        setattr(self, name, getattr(it, name))

  def __next__(self) -> Batch:
    return self._fn(next(self._it))


def train_batches(
  data_cfg: Mapping[str, Any],
  arrays: Mapping[str, np.ndarray],
  batch_size: int,
  *,
  seed: int,
  split: str = "train",
  cache_dir: str | None = None,
  transform: Callable[[Batch], Batch] | None = None,
) -> Callable[[int], Iterator[Batch]]:
  """`start_step -> iterator` of this process's batches of `arrays` (or its streaming twin).

  Args:
    data_cfg: the config's `data` block (see the module docstring for the fields read).
    arrays: the loaded split (the memory pipeline's rows; written to ArrayRecord for grain
      when `stream_source` is empty).
    transform: applied to every host batch (e.g. scaling to the model's range).
  """
  get = data_cfg.get if hasattr(data_cfg, "get") else lambda k, d=None: getattr(data_cfg, k, d)
  kind = get("pipeline", "memory") or "memory"
  if kind not in PIPELINES:
    raise ConfigError(f"data.pipeline={kind!r}; known: {', '.join(PIPELINES)}")
  fn = transform or (lambda b: b)
  if kind == "memory":
    return lambda start: MappedIterator(
      memory_batches(arrays, batch_size, seed=seed, start_step=start), fn
    )
  from shared.data import streaming  # grain: the optional `stream` extra

  source = get("stream_source", "") or ""
  if source:
    split_ = streaming.open_source(source, split, data_dir=get("data_dir", "") or None)
  else:
    if not cache_dir:
      raise ConfigError("data.pipeline='grain' without data.stream_source needs a cache_dir")
    path = os.path.join(cache_dir, "stream", f"{split}.array_record")
    if not os.path.isfile(path):
      streaming.write_array_record({k: np.asarray(v) for k, v in arrays.items()}, path)
    split_ = streaming.StreamingSplit.open(path)
  workers = int(get("worker_count", 0) or 0)
  return lambda start: MappedIterator(
    streaming.batches(split_, batch_size, seed=seed, start_step=start, worker_count=workers), fn
  )
