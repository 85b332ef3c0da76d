"""Which code builds the benchmark cases of each method: an explicit registry.

Each method's `bench.py` exposes `cases(config, what, batch_size) -> list[harness.Case]`, built
from the same step-building functions its `train.py` uses, so the timed step is the trained one.
"""

from __future__ import annotations

from collections.abc import Callable


def _mcae():
  from mcae import bench

  return bench


def _gradflow_prune():
  from gradflow_prune import bench

  return bench


def _unlearnable():
  from unlearnable import bench

  return bench


def _infotok():
  from infotok import bench

  return bench


BENCH_MODULES: dict[str, Callable] = {
  "mcae": _mcae,
  "gradflow_prune": _gradflow_prune,
  "unlearnable": _unlearnable,
  "infotok": _infotok,
}
