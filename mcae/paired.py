"""Paired comparisons of MCAE against each other method on the honest HTER, with intervals.

The honest HTER of one sub-run is a mean over its target-test items (frames, or videos) once the
source-val threshold is fixed: HTER = (FAR + FRR) / 2 = mean_i w_i * err_i with
w_i = n / (2 * n_class(i)) and err_i = 1 when item i is on the wrong side of the threshold. The
"mean" protocol averages protocols, so across a seed's protocols each item also carries
1 / (P * n_p) * n_total. Two methods scored on the same items (same seed, same protocols) then
differ by the mean of per-item differences d_i, and `shared.stats.bootstrap_two_stage` gives
the interval over seeds (resampled) and items within each seed (resampled): the seed-to-seed
spread and the finite test set both count. `shared.stats.bootstrap_paired` over the per-seed
means is reported beside it (seeds only; coarse with 3 seeds).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from mcae import evaluate
from shared import stats
from shared.workdir import load_arrays

LEVELS = {"frame": "hter_val", "video": "video_hter_val"}


def weighted_errors(scores, labels, threshold: float) -> np.ndarray:
  """w_i * err_i per item, whose mean is the HTER at `threshold` (score >= threshold = live)."""
  labels = np.asarray(labels).astype(bool)
  accept = np.asarray(scores, np.float64) >= threshold
  err = np.where(labels, ~accept, accept).astype(np.float64)
  n, n_live = labels.size, int(labels.sum())
  weight = np.where(labels, n / (2.0 * n_live), n / (2.0 * (n - n_live)))
  return weight * err


def _items(run: Mapping, scores: Mapping, level: str) -> np.ndarray:
  ts, tl = scores["test_scores"], scores["test_labels"]
  if level == "video":
    ts, tl = evaluate.video_scores(ts, tl, scores["test_videos"], "target test")
    return weighted_errors(ts, tl, run["video_threshold_val"])
  return weighted_errors(ts, tl, run["threshold_val"])


def compare(
  runs: Sequence[Mapping],
  protocols: Sequence,
  reference: str,
  others: Sequence[str],
  folder_of: Callable[[int, object, str], str],
) -> list[dict]:
  """Rows {reference, other, level, two_stage, seeds, verdict} for every other method.

  Differences are reference - other (negative = the reference has the lower, better HTER).
  Only seeds where both methods ran every protocol count.
  """
  by_key = {(r["method"], int(r["seed"]), r["protocol"]): r for r in runs}
  seeds = sorted({int(r["seed"]) for r in runs})
  cache: dict = {}

  def items(spec, seed, proto, level):
    key = (spec, seed, proto.name, level)
    if key not in cache:
      path = os.path.join(folder_of(seed, proto, spec), "scores.npz")
      cache[key] = _items(by_key[(spec, seed, proto.name)], load_arrays(path), level)
    return cache[key]

  rows = []
  for other in others:
    both = [
      s
      for s in seeds
      if all((m, s, p.name) in by_key for m in (reference, other) for p in protocols)
    ]
    if not both:
      continue
    for level, metric in LEVELS.items():
      diffs, per_seed = [], []
      for s in both:
        a = [items(reference, s, p, level) for p in protocols]
        b = [items(other, s, p, level) for p in protocols]
        total = sum(x.size for x in a)
        # Each protocol's items weighted so the pooled mean is the mean over protocols.
        d = [total / (len(protocols) * x.size) * (x - y) for x, y in zip(a, b, strict=True)]
        diffs.append(np.concatenate(d))
        per_seed.append(
          np.mean([by_key[(reference, s, p.name)][metric] for p in protocols])
          - np.mean([by_key[(other, s, p.name)][metric] for p in protocols])
        )
      two_stage = stats.bootstrap_two_stage(diffs)
      seed_level = stats.bootstrap_paired(per_seed, np.zeros(len(per_seed)))
      rows.append(
        dict(
          reference=reference,
          other=other,
          level=level,
          seeds=both,
          per_seed=[float(x) for x in per_seed],
          two_stage=two_stage,
          seed_bootstrap=seed_level,
          verdict=stats.verdict(two_stage, better="lower", yes=f"{reference} lower"),
        )
      )
  return rows


def markdown(rows: Sequence[Mapping], scale: float = 100.0) -> str:
  """The paired table, in HTER percentage points."""
  if not rows:
    return ""

  def pct(ci):
    return stats.format_interval({k: scale * ci[k] for k in ("mean", "lo", "hi")}, 1)

  out = [
    "**Paired differences in honest HTER** (reference - other, percentage points; negative = "
    "the reference is lower; 95% intervals: two-stage bootstrap over seeds and test items, and "
    "over seeds alone)",
    "",
    "| reference - other | level | seeds | per-seed differences | two-stage 95% CI | "
    "seeds-only 95% CI | verdict |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    per_seed = ", ".join(f"{scale * x:+.1f}" for x in r["per_seed"])
    out.append(
      f"| {r['reference']} - {r['other']} | {r['level']} | {len(r['seeds'])} | {per_seed} | "
      f"{pct(r['two_stage'])} | {pct(r['seed_bootstrap'])} | {r['verdict']} |"
    )
  return "\n".join(out) + "\n"
