"""Paired differences between two arms, with bootstrap confidence intervals.

Runs of two arms with the same seed share the scoring batches, the data order, the training noise
and the evaluation noise (the paired design), so their difference d_s = a_s - b_s removes what the
seed does to both. The interval is the percentile bootstrap of mean(d) over seeds resampled with
replacement (Efron & Tibshirani 1993, ch. 13); with n seeds there are at most C(2n - 1, n) distinct
resamples (10 for n = 3), so small-n intervals are coarse, and n = 1 gives a point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, n_boot: int = 10_000,
                     level: float = 0.95, seed: int = 0) -> dict:  # fmt: skip
  """Mean of d = a - b over pairs and its percentile bootstrap interval.

  Returns:
    {"mean", "lo", "hi", "n", "level"}; lo / hi are the (1 - level) / 2 and (1 + level) / 2
    quantiles of the resampled means.
  """
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  if d.ndim != 1 or d.size == 0:
    raise ValueError(f"paired_bootstrap needs two equal-length non-empty sequences, got {d.shape}")
  rng = np.random.default_rng(seed)
  means = d[rng.integers(0, d.size, (n_boot, d.size))].mean(axis=1)
  lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
  return {"mean": float(d.mean()), "lo": float(lo), "hi": float(hi), "n": int(d.size),
          "level": level}  # fmt: skip


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
  sign = -1 if better == "lower" else 1
  lo, hi = sorted((sign * ci["lo"], sign * ci["hi"]))
  if lo > 0:
    return "better"
  if hi < 0:
    return "worse"
  return "no difference shown"
