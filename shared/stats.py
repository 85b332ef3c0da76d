"""Paired differences with bootstrap confidence intervals: the verdicts every method states.

Two designs, one per kind of score:

- `bootstrap_paired(a, b)`: whole-set scores per seed (an FD, an HTER): d_s = a_s - b_s over the
  seeds both arms ran with the same data order and noise; the percentile bootstrap of mean(d)
  with seeds resampled (Efron & Tibshirani 1993, ch. 13). With n seeds there are at most
  C(2n - 1, n) distinct resamples (10 for n = 3), so small-n intervals are coarse.
- `bootstrap_two_stage(diffs_by_seed)`: per-item scores on the same test items: the mean over
  seeds of each seed's mean item difference; seeds resampled, then items within each drawn seed
  (Davison & Hinkley 1997, sec. 3.8). With one seed only the items are resampled, and the
  interval then says nothing about seed-to-seed variation.

`verdict(ci, better=...)` says which side of 0 the interval lies on, or that it straddles it:
a difference counts only when the interval excludes 0, never by the sign of a mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def bootstrap_paired(
  a: Sequence[float],
  b: Sequence[float],
  *,
  n_boot: int = 10_000,
  level: float = 0.95,
  seed: int = 0,
) -> dict:
  """Mean of d = a - b over pairs and its percentile bootstrap interval.

  Returns:
    {"mean", "lo", "hi", "n", "level"}; lo / hi are the (1 - level) / 2 and (1 + level) / 2
    quantiles of the resampled means.
  """
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  if d.ndim != 1 or d.size == 0:
    raise ValueError(f"bootstrap_paired needs two equal-length non-empty sequences, got {d.shape}")
  rng = np.random.default_rng(seed)
  means = d[rng.integers(0, d.size, (n_boot, d.size))].mean(axis=1)
  lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
  return {
    "mean": float(d.mean()),
    "lo": float(lo),
    "hi": float(hi),
    "n": int(d.size),
    "level": level,
  }


def bootstrap_two_stage(
  diffs_by_seed: Sequence[Sequence[float]],
  *,
  n_boot: int = 4_000,
  level: float = 0.95,
  seed: int = 0,
) -> dict:
  """Mean of per-item paired differences and its two-stage percentile bootstrap interval.

  Args:
    diffs_by_seed: one array of per-item differences per seed (items may differ in number).

  Returns:
    {"mean", "lo", "hi", "level", "n_seeds", "n_items"}; n_items is the total over seeds.
  """
  diffs = [np.asarray(d, np.float64).reshape(-1) for d in diffs_by_seed]
  if not diffs or any(d.size == 0 for d in diffs):
    raise ValueError("bootstrap_two_stage needs at least one seed, each with at least one item")
  rng = np.random.default_rng(seed)
  # Stage 2 first, per seed: the mean of a resample of its items, for each bootstrap draw.
  item_means_SxB = np.stack([d[rng.integers(0, d.size, (n_boot, d.size))].mean(1) for d in diffs])
  n_seeds = len(diffs)
  picks_BxS = rng.integers(0, n_seeds, (n_boot, n_seeds))  # stage 1: seeds with replacement
  boot_B = item_means_SxB[picks_BxS, np.arange(n_boot)[:, None]].mean(axis=1)
  lo, hi = np.quantile(boot_B, [(1 - level) / 2, (1 + level) / 2])
  return {
    "mean": float(np.mean([d.mean() for d in diffs])),
    "lo": float(lo),
    "hi": float(hi),
    "level": level,
    "n_seeds": n_seeds,
    "n_items": int(sum(d.size for d in diffs)),
  }


def verdict(ci: Mapping, *, better: str = "higher", yes: str = "better") -> str:
  """`yes` when the interval lies wholly on the better side of 0 ("higher" or "lower" is
  better), 'worse' when wholly on the other, else 'no difference shown'."""
  if better not in ("higher", "lower"):
    raise ValueError(f"better={better!r}; known: higher, lower")
  sign = -1 if better == "lower" else 1
  lo, hi = sorted((sign * ci["lo"], sign * ci["hi"]))
  if lo > 0:
    return yes
  if hi < 0:
    return "worse"
  return "no difference shown"


def format_interval(ci: Mapping, precision: int = 3) -> str:
  """'mean [lo, hi]' with signs."""
  return f"{ci['mean']:+.{precision}f} [{ci['lo']:+.{precision}f}, {ci['hi']:+.{precision}f}]"
