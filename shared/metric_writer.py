"""Metrics: `metrics.jsonl` on process 0 (+ TensorBoard when TensorFlow is importable).

TensorFlow is never imported here unless it is installed and a TensorBoard writer is asked for.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np


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
    self._file = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115
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


def read_metrics(workdir: str, stage: str | None = None) -> list[dict]:
  """All lines of `metrics.jsonl`, optionally only those of one stage."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [r for r in rows if stage is None or r.get("stage") == stage]
