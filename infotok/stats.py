"""Paired differences of two variants over seeds and test items, with a two-stage bootstrap.

A variant and the baseline of the same style and seed are scored on the same test items (the
first `eval.num_examples` of each split, the same prompts, the same sampling keys), so the
per-item difference d[s, i] = score_variant[s, i] - score_baseline[s, i] removes what the item
and the seed do to both. The statistic is the mean over seeds of each seed's mean over items; its
interval is the percentile bootstrap that resamples both stages, seeds with replacement and then
items with replacement within each drawn seed (Davison & Hinkley 1997, sec. 3.8). With one seed
only the items are resampled: the interval then says nothing about seed-to-seed variation.

`gradflow_prune/stats.py` bootstraps over seeds only (its scores are whole-set FD); shared/ has no
bootstrap helper, so this one lives here until a second method needs it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def paired_bootstrap(
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
    {"mean", "lo", "hi", "level", "n_seeds", "n_items"}: lo / hi are the (1 - level) / 2 and
    (1 + level) / 2 quantiles of the resampled statistic; n_items is the total over seeds.
  """
  diffs = [np.asarray(d, np.float64).reshape(-1) for d in diffs_by_seed]
  if not diffs or any(d.size == 0 for d in diffs):
    raise ValueError("paired_bootstrap needs at least one seed, each with at least one item")
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


def verdict(ci: dict) -> str:
  """'yes' when the interval lies above 0, 'worse' when below, else 'no difference shown'."""
  if ci["lo"] > 0:
    return "yes"
  if ci["hi"] < 0:
    return "worse"
  return "no difference shown"


def format_interval(ci: dict, precision: int = 3) -> str:
  """'mean [lo, hi]'."""
  return f"{ci['mean']:+.{precision}f} [{ci['lo']:+.{precision}f}, {ci['hi']:+.{precision}f}]"
