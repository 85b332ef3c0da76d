"""Paired differences between two pruning arms per seed (`shared.stats.bootstrap_paired`).

Runs of two arms with the same seed share the scoring batches, the data order, the training noise
and the evaluation noise (the paired design), so d_s = a_s - b_s removes what the seed does to
both; the interval resamples seeds, so n = 1 gives a point and no verdict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from shared.stats import bootstrap_paired as paired_bootstrap
from shared.stats import verdict as _verdict

__all__ = ["pair_by_seed", "paired_bootstrap", "verdict"]


def pair_by_seed(rows_a: Sequence[Mapping], rows_b: Sequence[Mapping], key: str):
  """(a values, b values, seeds) of the seeds both arms ran, in seed order."""
  a = {r["seed"]: r[key] for r in rows_a}
  b = {r["seed"]: r[key] for r in rows_b}
  seeds = sorted(set(a) & set(b))
  return [a[s] for s in seeds], [b[s] for s in seeds], seeds


def verdict(ci: Mapping, better: str) -> str:
  """'better' / 'worse' when the interval excludes 0 on that side, else 'no difference shown';
  `better` is "lower" (FD) or "higher" (SSIM)."""
  if ci["n"] < 2:
    return "one seed: no interval"
  return _verdict(ci, better=better, yes="better")
