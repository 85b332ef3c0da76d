"""Metrics: `metrics.jsonl` on process 0 (+ TensorBoard when TensorFlow is importable).

TensorFlow is never imported here unless it is installed and a TensorBoard writer is asked for.

Each row is written as one line with a single `write` and flushed; a kill in the middle of one
leaves a line without its newline at the end of the file, which the next writer cuts off before
appending (`repair_tail`), so the file stays one JSON object per line.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from shared.errors import CheckpointError


def _to_python(value):
  value = np.asarray(value)
  return value.item() if value.size == 1 else value.tolist()


class MetricWriter:
  """Writes scalars to `metrics.jsonl` (always) and TensorBoard (when TensorFlow is importable).

  Only process 0 writes. Each line: {"step": s, "stage": name, **metrics}.
  """

  def __init__(self, workdir: str, *, tensorboard: bool = True, stage: str | None = None):
    self.workdir = workdir
    self.stage = stage
    self.enabled = jax.process_index() == 0
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "metrics.jsonl")
    repair_tail(path)
    self._file = open(path, "a")  # noqa: SIM115
    if tensorboard and _tensorflow_available():
      try:
        from clu import metric_writers

        logdir = os.path.join(workdir, "tensorboard", stage or "")
        self._tb = metric_writers.SummaryWriter(logdir)
      except Exception as e:  # TensorBoard is a nicety; never fail a run over it
        logging.warning("TensorBoard disabled: %s", e)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    scalars = {k: _to_python(v) for k, v in metrics.items()}
    line = {"step": int(step), **({"stage": self.stage} if self.stage else {}), **scalars}
    self._file.write(json.dumps(line) + "\n")
    self._file.flush()
    if self._tb is not None:
      numeric = {k: v for k, v in scalars.items() if isinstance(v, int | float)}
      self._tb.write_scalars(int(step), numeric)

  def close(self) -> None:
    if self.enabled:
      self._file.close()
      if self._tb is not None:
        self._tb.close()

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _tensorflow_available() -> bool:
  import importlib.util

  try:
    return importlib.util.find_spec("tensorflow") is not None
  except (ImportError, ValueError):
    return False


def repair_tail(path: str) -> None:
  """Cuts a last line that lacks its newline (a row torn by a kill) off `path`, if any."""
  try:
    with open(path, "rb+") as f:
      f.seek(0, os.SEEK_END)
      size = f.tell()
      if size == 0:
        return
      f.seek(size - 1)
      if f.read(1) == b"\n":
        return
      keep, block = 0, 65536
      pos = size
      while pos > 0:  # the last newline, read backwards block by block
        start = max(0, pos - block)
        f.seek(start)
        chunk = f.read(pos - start)
        i = chunk.rfind(b"\n")
        if i >= 0:
          keep = start + i + 1
          break
        pos = start
      logging.warning("%s: dropping a torn last row (%d bytes)", path, size - keep)
      f.truncate(keep)
  except FileNotFoundError:
    return


def read_metrics(workdir: str, stage: str | None = None) -> list[dict]:
  """All rows of `metrics.jsonl`, optionally only those of one stage.

  A torn last row (a kill mid-write) is skipped; a corrupt row elsewhere is an error.

  Raises:
    CheckpointError: a row that is not JSON, naming the file, the line and how to recover.
  """
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, "rb") as f:
    data = f.read()
  lines = data.split(b"\n")
  torn = lines.pop()  # b"" when the file ends with a newline
  rows = []
  for i, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise CheckpointError(
        f"{path} line {i} is corrupt ({e}); delete that line (or the file, losing the logged "
        "history) and re-run the same command"
      ) from None
  if torn.strip():
    logging.warning("%s: ignoring a torn last row (%d bytes)", path, len(torn))
  return [r for r in rows if stage is None or r.get("stage") == stage]
