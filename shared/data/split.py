"""`Split`: the arrays of one split of a data set, and how they sit among processes."""

from __future__ import annotations


class Split(dict):
  """The arrays of one split (a dict name -> array, equal rows) and how they sit among processes.

  `process_local` is True when each process holds only its own part of the split (TFDS loads with
  `tfds.split_for_jax_process`), False when every process holds the whole split (built-in sets).
  `shard_size` is then the largest part any process holds, so evaluation can pad all processes to
  the same number of batches.
  """

  process_local: bool = False
  shard_size: int | None = None
