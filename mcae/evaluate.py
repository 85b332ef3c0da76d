"""Scores, FAS metrics in both HTER conventions, per frame and per video, ROC figures, tables.

Per sub-run (one method, protocol and seed):
  hter_eer  HTER at the test set's own EER threshold (SSDG / SSAN / FLIP convention; ~ EER): the
            field's number, an oracle (the threshold is chosen on the test labels),
  hter_val  HTER at the threshold fixed on the sources' val data (EER point there): the number a
            deployed model would get (honest),
  eer, auc, tpr_at_fpr_1pct on the target test set, and the source-val EER / AUC;
  video_*   the same at video level: a video's score is the mean of its frames' scores (video ids
            from the data's 'video' field, per domain), the val threshold set on val videos.
The "mean" protocol row averages the protocols within each seed, then mean ± std over seeds.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np

from shared import data as data_lib
from shared import train_lib
from shared.errors import DataError
from shared.metrics import fas_metrics, roc_points
from shared.report import format_mean_std

METRICS = (
  "hter_eer",
  "hter_val",
  "auc",
  "tpr_at_fpr_1pct",
  "eer",
  "video_hter_eer",
  "video_hter_val",
  "video_auc",
)
# The mechanism check's numbers (`mcae.mechanism`): only pre-trained methods have them.
MECHANISM = ("live_domain_acc", "live_domain_chance", "live_mmd")
MEAN_ROW = "mean"
# Per-method facts the tables print beside the metrics (the same for every run, or averaged).
INFO = (
  "params",
  "pretrain_steps",
  "pretrain_batch_size",
  "steps",
  "batch_size",
  "examples_seen",
  "wall_time_s",  # a sub-run's wall time: pre-training (unless shared) + classifier + scoring
)


def _to_host(x: jax.Array) -> np.ndarray:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def predict(
  score_fn: Callable,
  params,
  model_state,
  arrays: Mapping[str, np.ndarray],
  batch_size: int,
  data_sharding,
) -> np.ndarray:
  """Liveness scores for every row of `arrays` (in order), with a jitted `score_fn`."""
  out = []
  for batch in data_lib.eval_batches({"image": arrays["image"]}, batch_size):
    mask = batch.pop("mask")
    images = train_lib.global_batch(batch, data_sharding)["image"]
    scores = _to_host(score_fn(params, model_state, images))
    if jax.process_count() > 1:
      mask = _to_host(train_lib.global_batch({"m": mask}, data_sharding)["m"])
    out.append(scores[mask])
  return np.concatenate(out).astype(np.float64)


def video_keys(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
  """One id per frame naming its video, unique across domains (each frame its own video when
  the data has no 'video' field)."""
  n = len(arrays["label"])
  if "video" not in arrays:
    return np.arange(n)
  domain = arrays["domain"].astype(np.int64) if "domain" in arrays else np.zeros(n, np.int64)
  return domain * (int(arrays["video"].max()) + 1) + arrays["video"].astype(np.int64)


def video_scores(scores, labels, keys, what: str = "split") -> tuple[np.ndarray, np.ndarray]:
  """(mean frame score, label) per video; a video whose frames disagree on the label is an error."""
  unique, inverse = np.unique(keys, return_inverse=True)
  counts = np.bincount(inverse)
  means = np.bincount(inverse, weights=np.asarray(scores, np.float64)) / counts
  live = np.bincount(inverse, weights=np.asarray(labels, np.float64))
  mixed = (live > 0) & (live < counts)
  if mixed.any():
    raise DataError(
      f"{what}: video {unique[mixed.argmax()]} has both live and spoof frames; a video is one or "
      "the other (check photo_belong_to_video_ID)"
    )
  return means, (live == counts).astype(np.int32)


def fas_report(
  val_scores, val_labels, test_scores, test_labels, val_keys=None, test_keys=None
) -> dict[str, float]:
  """Target-test metrics in both conventions, per frame and per video (`*_keys`: video of each
  frame, see `video_keys`; None = each frame its own video), plus the source-val numbers."""
  out = {}
  val_keys = np.arange(len(val_labels)) if val_keys is None else val_keys
  test_keys = np.arange(len(test_labels)) if test_keys is None else test_keys
  for level in ("frame", "video"):
    vs, vl, ts, tl = val_scores, val_labels, test_scores, test_labels
    if level == "video":
      vs, vl = video_scores(vs, vl, val_keys, "source val")
      ts, tl = video_scores(ts, tl, test_keys, "target test")
    val = fas_metrics(vs, vl)
    test = fas_metrics(ts, tl)
    honest = fas_metrics(ts, tl, threshold=val["threshold"])
    prefix = "" if level == "frame" else "video_"
    out.update(
      {
        f"{prefix}hter_eer": test["hter"],
        f"{prefix}hter_val": honest["hter"],
        f"{prefix}eer": test["eer"],
        f"{prefix}auc": test["auc"],
        f"{prefix}tpr_at_fpr_1pct": test["tpr_at_fpr_1pct"],
        f"{prefix}threshold_val": val["threshold"],
        f"{prefix}threshold_test_eer": test["threshold"],
        f"{prefix}val_eer": val["eer"],
        f"{prefix}val_auc": val["auc"],
      }
    )
    if level == "video":
      out["num_test_videos"], out["num_val_videos"] = len(tl), len(vl)
  return out


def mean_roc(curves: Sequence[tuple[np.ndarray, np.ndarray]], grid: np.ndarray) -> np.ndarray:
  """Vertical average of ROC curves: mean TPR at each FPR of `grid` (step interpolation)."""
  tprs = []
  for fpr, tpr in curves:
    # The ROC is a staircase; at a given FPR take the highest TPR reached there.
    idx = np.searchsorted(fpr, grid, side="right") - 1
    tprs.append(tpr[np.clip(idx, 0, len(tpr) - 1)])
  return np.mean(tprs, axis=0)


def roc_figure(path: str, title: str, curves: Mapping[str, list[tuple[np.ndarray, np.ndarray]]]):
  """One PNG: per method, the ROC averaged over seeds (target test set)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  grid = np.linspace(0.0, 1.0, 201)
  fig, ax = plt.subplots(figsize=(4.5, 4.2), dpi=110)
  for name, runs in curves.items():
    ax.plot(grid, mean_roc(runs, grid), label=f"{name} (n={len(runs)})", lw=1.4)
  ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=0.8)
  ax.set(xlabel="FPR (attacks accepted)", ylabel="TPR (lives accepted)", title=title)
  ax.legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path)
  plt.close(fig)


def roc_of(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  fpr, tpr, _ = roc_points(scores, labels)
  return fpr, tpr


def summarise(
  runs: Sequence[Mapping], methods: Sequence[str], protocols: Sequence[str]
) -> list[dict]:
  """Rows (method, protocol incl. 'mean') with per-metric seed values, mean and std.

  Args:
    runs: one dict per sub-run with 'method', 'protocol', 'seed' and the METRICS.
  """
  rows = []
  for method in methods:
    mine = [r for r in runs if r["method"] == method]
    per_seed: dict[int, list[Mapping]] = {}
    for r in mine:
      per_seed.setdefault(r["seed"], []).append(r)
    for protocol in [*protocols, MEAN_ROW]:
      row: dict = {"method": method, "protocol": protocol}
      for m in (*METRICS, *MECHANISM):
        if protocol == MEAN_ROW:
          # Only seeds that ran every protocol count toward the mean row.
          values = [
            float(np.mean([r[m] for r in rs]))
            for rs in per_seed.values()
            if {r["protocol"] for r in rs} >= set(protocols) and all(m in r for r in rs)
          ]
        else:
          values = [float(r[m]) for r in mine if r["protocol"] == protocol and m in r]
        row[f"{m}_seeds"] = values
        row[f"{m}_mean"] = float(np.mean(values)) if values else float("nan")
        row[f"{m}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
      row["n_seeds"] = len(row[f"{METRICS[0]}_seeds"])
      for key in INFO:  # the same for every run of a method (params) or averaged (compute)
        known = [r[key] for r in mine if key in r]
        row[key] = float(np.mean(known)) if known else None
      rows.append(row)
  return rows


def markdown_tables(rows: Sequence[Mapping], protocols: Sequence[str], scale: float = 100.0) -> str:
  """One table per metric: methods x (protocols, mean), cells 'mean ± std' in percent."""
  titles = {
    "hter_eer": "Frame HTER % at the test set's own EER threshold (the field's convention; oracle)",
    "hter_val": "Frame HTER % at the threshold fixed on source val data (honest)",
    "video_hter_eer": "Video HTER % at the test videos' own EER threshold (field's; oracle)",
    "video_hter_val": "Video HTER % at the threshold fixed on source val videos (honest)",
    "auc": "Frame AUC %",
    "video_auc": "Video AUC %",
    "tpr_at_fpr_1pct": "Frame TPR % at FPR = 1%",
  }
  methods = list(dict.fromkeys(r["method"] for r in rows))
  columns = [*protocols, MEAN_ROW]
  summary = ("hter_val", "video_hter_val", "hter_eer", "video_hter_eer", "auc")
  out = [
    "**Summary**: mean over protocols (± std over seeds), with each method's classifier size and",
    "compute: pre-training steps x batch + classifier steps run (to convergence) x batch, mean",
    "over runs, and its wall minutes per sub-run on the run's device",
    "",
    "| method | params | compute (steps x batch) | examples | wall min | frame HTER % (honest) | "
    "video HTER % (honest) | frame HTER % (oracle) | video HTER % (oracle) | frame AUC % |",
    "|---" * 10 + "|",
  ]
  for method in methods:
    mean = next(r for r in rows if r["method"] == method and r["protocol"] == MEAN_ROW)
    cells = [_count(mean.get("params")), _compute(mean), _count(mean.get("examples_seen"))]
    wall = mean.get("wall_time_s")
    cells.append("—" if wall is None else f"{wall / 60:.1f}")
    for metric in summary:
      values = [scale * v for v in mean[f"{metric}_seeds"]]
      cells.append(format_mean_std(values, 1) if values else "—")
    out.append(f"| {method} | " + " | ".join(cells) + " |")
  out.append("")
  for metric, title in titles.items():
    out += [f"**{title}** (mean ± std over seeds)", ""]
    out.append("| method | " + " | ".join(columns) + " |")
    out.append("|---" * (len(columns) + 1) + "|")
    for method in methods:
      cells = []
      for protocol in columns:
        row = next(r for r in rows if r["method"] == method and r["protocol"] == protocol)
        values = [scale * v for v in row[f"{metric}_seeds"]]
        cells.append(format_mean_std(values, 1) if values else "—")
      out.append(f"| {method} | " + " | ".join(cells) + " |")
    out.append("")
  mechanism = [m for m in methods if _mean_row(rows, m)["live_mmd_seeds"]]
  if mechanism:
    out += [
      "**Mechanism check**: domain separability of the frozen pre-trained encoder's live "
      "features (lower = more shared across domains; mean over protocols ± std over seeds)",
      "",
      "| method | domain classifier accuracy % | chance % | MMD² between domains |",
      "|---|---|---|---|",
    ]
    for method in mechanism:
      row = _mean_row(rows, method)
      acc = format_mean_std([scale * v for v in row["live_domain_acc_seeds"]], 1)
      chance = f"{scale * row['live_domain_chance_mean']:.0f}"
      mmd = format_mean_std(row["live_mmd_seeds"], 3)
      out.append(f"| {method} | {acc} | {chance} | {mmd} |")
    out.append("")
  return "\n".join(out)


def _mean_row(rows, method):
  return next(r for r in rows if r["method"] == method and r["protocol"] == MEAN_ROW)


def _count(n) -> str:
  """12345 -> '12.3K', 11_200_000 -> '11.2M'."""
  if n is None:
    return "—"
  for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
    if n >= scale:
      return f"{n / scale:.1f}{suffix}"
  return str(int(n))


def _compute(row) -> str:
  """'200x32 + 163x32' (pre-training + classifier), or '540x32' without pre-training."""
  if row.get("steps") is None:
    return "—"
  head = f"{row['steps']:.0f}x{row['batch_size']:.0f}"
  if row.get("pretrain_steps"):
    return f"{row['pretrain_steps']:.0f}x{row['pretrain_batch_size']:.0f} + {head}"
  return head
