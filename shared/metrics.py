"""Evaluation metrics: accuracy, PSNR, SSIM, Frechet distance, face anti-spoofing (FAS) metrics,
text (corpus BLEU) and image-text retrieval (R-precision).

Image metrics (`ssim`, `psnr`) and accuracies are JAX functions (jit-able, batched). The FAS
metrics, the Frechet distance, BLEU and R-precision are host-side numpy: they sort, count n-grams,
take matrix square roots and are evaluated once per evaluation, not inside a train step.
"""

import math
import warnings
from collections import Counter
from collections.abc import Sequence

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from shared import workdir
from shared.errors import ConfigError, DataError

# ---------------------------------------------------------------------------------------------
# Classification accuracy


def accuracy(logits_or_preds: jax.Array, labels: jax.Array) -> jax.Array:
  """Top-1 accuracy: mean_i [argmax_c logits_ic == y_i] (or [pred_i == y_i] for predictions).

  Args:
    logits_or_preds: logits (..., C) or integer predictions with the shape of `labels`.
    labels: integer class labels (...).
  """
  if logits_or_preds.shape == labels.shape:
    preds = logits_or_preds
  elif logits_or_preds.shape[:-1] == labels.shape:
    preds = jnp.argmax(logits_or_preds, axis=-1)
  else:
    raise DataError(
      f"accuracy: logits (..., C) or predictions must match labels {labels.shape}, "
      f"got {logits_or_preds.shape}"
    )
  return jnp.mean((preds == labels).astype(jnp.float32))


def top_k_accuracy(logits: jax.Array, labels: jax.Array, k: int = 5) -> jax.Array:
  """Top-k accuracy: mean_i [ #{c : logits_ic > logits_{i, y_i}} < k ].

  A label counts as within the top k when fewer than k classes score strictly higher than it, so
  ties with the true class are resolved in its favour.
  """
  if k < 1:
    raise ConfigError(f"top_k_accuracy needs k >= 1, got {k}")
  if logits.shape[:-1] != labels.shape:
    raise DataError(f"top_k_accuracy: logits {logits.shape} do not match labels {labels.shape}")
  true_logit = jnp.take_along_axis(logits, labels[..., None].astype(jnp.int32), axis=-1)
  rank = jnp.sum(logits > true_logit, axis=-1)
  return jnp.mean((rank < k).astype(jnp.float32))


# ---------------------------------------------------------------------------------------------
# Image quality


def _check_images(a: jax.Array, b: jax.Array, min_size: int = 1) -> None:
  if a.shape != b.shape or a.ndim not in (3, 4):
    raise DataError(f"image metrics need equal HWC or NHWC shapes, got {a.shape} and {b.shape}")
  height, width = a.shape[-3], a.shape[-2]
  if min(height, width) < min_size:
    raise DataError(f"images must be at least {min_size}x{min_size}, got {height}x{width}")


def psnr(a: jax.Array, b: jax.Array, data_range: float = 1.0) -> jax.Array:
  """Peak signal-to-noise ratio per image, in dB.

    PSNR = 10 log10(data_range^2 / MSE),  MSE = mean over H, W, C of (a - b)^2.

  Args:
    a, b: images (H, W, C) or (N, H, W, C) with values in [0, data_range].

  Returns:
    Scalar for one image, (N,) for a batch. Identical images give +inf.
  """
  _check_images(a, b)
  return pix.psnr(a / data_range, b / data_range)


def ssim(a: jax.Array, b: jax.Array, data_range: float = 1.0) -> jax.Array:
  """Structural similarity (Wang et al. 2004) with an 11x11 Gaussian window, sigma 1.5.

    SSIM = mean over valid windows and channels of
      (2 mu_a mu_b + C1)(2 sigma_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(sigma_a^2 + sigma_b^2 + C2)),
    C1 = (0.01 L)^2, C2 = (0.03 L)^2, L = data_range, moments under the Gaussian window.

  This is dm-pix's `ssim`, which equals scikit-image's `structural_similarity(...,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=L)` (per-channel mean
  for colour images; checked to 1e-4 in tests).

  Args:
    a, b: images (H, W, C) or (N, H, W, C), H and W >= 11.

  Returns:
    Scalar for one image, (N,) for a batch.
  """
  _check_images(a, b, min_size=11)
  return pix.ssim(a, b, max_val=data_range, filter_size=11, filter_sigma=1.5, k1=0.01, k2=0.03)


# ---------------------------------------------------------------------------------------------
# Frechet distance


def frechet_distance(
  mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray, eps: float = 1e-6
) -> float:
  """Frechet distance between N(mu1, cov1) and N(mu2, cov2) (Dowson & Landau 1982; FID).

    d^2 = ||mu1 - mu2||^2 + tr(cov1) + tr(cov2) - 2 tr((cov1 cov2)^(1/2)).

  Computed in float64 on the host with scipy.linalg.sqrtm, as pytorch-fid does: when the square
  root is not finite (a singular product), eps I is added to both covariances and it is retried; a
  complex result from round-off keeps its real part. A negative result from round-off is
  clipped to 0.

  Raises:
    DataError: on mismatched shapes, non-finite inputs, or a square root with a large imaginary
      part (the inputs are not covariance matrices).
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  cov1, cov2 = (
    np.atleast_2d(np.asarray(cov1, np.float64)),
    np.atleast_2d(np.asarray(cov2, np.float64)),
  )
  d = mu1.shape[0]
  if mu1.shape != (d,) or mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
    raise DataError(
      f"frechet_distance: shapes {mu1.shape}, {cov1.shape}, {mu2.shape}, {cov2.shape} "
      "are not (D,), (D, D), (D,), (D, D)"
    )
  if not all(np.all(np.isfinite(v)) for v in (mu1, mu2, cov1, cov2)):
    raise DataError("frechet_distance: means or covariances contain NaN or Inf")
  diff = mu1 - mu2
  with warnings.catch_warnings():
    # A singular product (fewer samples than dimensions) is common and handled below.
    warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
    covmean = scipy.linalg.sqrtm(cov1 @ cov2)
    if not np.all(np.isfinite(covmean)):
      offset = eps * np.eye(d)
      covmean = scipy.linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
  if np.iscomplexobj(covmean):
    max_imag = np.max(np.abs(np.diagonal(covmean).imag))
    if max_imag > 1e-3:
      raise DataError(
        f"frechet_distance: sqrt(cov1 cov2) has imaginary part {max_imag:.3g}; "
        "are both inputs symmetric positive semi-definite?"
      )
    covmean = covmean.real
  fd = diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(covmean)
  return float(max(fd, 0.0))


class FeatureStats:
  """Streaming mean and covariance of feature vectors in float64, mergeable across shards.

  Keeps n, mean and M2 = sum_i (x_i - mean)(x_i - mean)^T, combined per batch with Chan et al.'s
  parallel update (delta = mean_b - mean_a, n = n_a + n_b):

    mean = mean_a + delta n_b / n,   M2 = M2_a + M2_b + delta delta^T n_a n_b / n,

  so FD over 50K samples never holds all features. `cov` is M2 / (n - 1), as np.cov.
  """

  def __init__(self, dim: int | None = None):
    self.count = 0
    self._mean = None if dim is None else np.zeros(dim)
    self._m2 = None if dim is None else np.zeros((dim, dim))

  @property
  def dim(self) -> int | None:
    return None if self._mean is None else self._mean.shape[0]

  def _combine(self, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
    if self.dim is None:
      self._mean, self._m2 = np.zeros_like(mean_b), np.zeros_like(m2_b)
    elif mean_b.shape != self._mean.shape:
      raise DataError(f"FeatureStats: got {mean_b.shape[0]}-d features, expected {self.dim}-d")
    n = self.count + n_b
    delta = mean_b - self._mean
    self._mean = self._mean + delta * (n_b / n)
    self._m2 = self._m2 + m2_b + np.outer(delta, delta) * (self.count * n_b / n)
    self.count = n

  def update(self, features_NxD) -> "FeatureStats":
    """Adds a batch of feature rows; returns self so calls chain."""
    x_NxD = np.asarray(features_NxD, np.float64)
    if x_NxD.ndim != 2:
      raise DataError(f"FeatureStats.update needs (N, D) features, got shape {x_NxD.shape}")
    if x_NxD.shape[0] == 0:
      return self
    if not np.all(np.isfinite(x_NxD)):
      raise DataError("FeatureStats.update: features contain NaN or Inf")
    mean_D = x_NxD.mean(axis=0)
    centred_NxD = x_NxD - mean_D
    self._combine(x_NxD.shape[0], mean_D, centred_NxD.T @ centred_NxD)
    return self

  def merge(self, other: "FeatureStats") -> "FeatureStats":
    """Adds another accumulator's samples (e.g. from another process); returns self."""
    if other.count:
      self._combine(other.count, other._mean, other._m2)
    return self

  @property
  def mean(self) -> np.ndarray:
    if not self.count:
      raise DataError("FeatureStats: no features were added")
    return self._mean.copy()

  @property
  def cov(self) -> np.ndarray:
    if self.count < 2:
      raise DataError(f"FeatureStats: a covariance needs >= 2 samples, have {self.count}")
    return self._m2 / (self.count - 1)

  def frechet_distance(self, other: "FeatureStats") -> float:
    """`frechet_distance` between the Gaussians fitted to this and another accumulator."""
    return frechet_distance(self.mean, self.cov, other.mean, other.cov)

  def save(self, path) -> None:
    """Writes count, mean and M2 to an .npz file, atomically (reference statistics are cached)."""
    arrays = {"count": np.int64(self.count), "mean": self._mean, "m2": self._m2}
    workdir.save_npz(path, arrays, every_process=True)

  @classmethod
  def load(cls, path) -> "FeatureStats":
    try:
      with np.load(path) as data:
        stats = cls()
        stats.count = int(data["count"])
        stats._mean, stats._m2 = data["mean"], data["m2"]
    except FileNotFoundError as e:
      raise DataError(f"feature statistics file not found: {path}") from e
    except (KeyError, ValueError, OSError) as e:
      raise DataError(f"not a FeatureStats file: {path} ({e})") from e
    return stats


# ---------------------------------------------------------------------------------------------
# Face anti-spoofing


def _fas_inputs(scores, labels) -> tuple[np.ndarray, np.ndarray]:
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels)
  if scores.ndim != 1 or scores.shape != labels.shape:
    raise DataError(f"fas_metrics: scores {scores.shape} and labels {labels.shape} must be (N,)")
  if not np.all(np.isfinite(scores)):
    raise DataError("fas_metrics: scores contain NaN or Inf")
  if not np.all((labels == 0) | (labels == 1)):
    raise DataError("fas_metrics: labels must be 0 (attack) or 1 (live)")
  labels = labels.astype(bool)
  if labels.all() or not labels.any():
    raise DataError(
      "fas_metrics needs both live (1) and attack (0) samples; "
      f"got {int(labels.sum())} live and {int((~labels).sum())} attack"
    )
  return scores, labels


def roc_points(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """ROC of "accept as live when score >= t" over every distinct score t, plus t = +inf.

    TPR(t) = #{live: s >= t} / #live,   FPR(t) = #{attack: s >= t} / #attack.

  Same points as sklearn's `roc_curve(labels, scores, drop_intermediate=False)`; written here
  because the EER and TPR@FPR need every threshold, and so sklearn stays an independent check.

  Returns:
    fpr_K, tpr_K, thresholds_K, with thresholds decreasing from +inf.
  """
  scores, labels = _fas_inputs(scores, labels)
  order = np.argsort(-scores, kind="stable")
  s_sorted, live_sorted = scores[order], labels[order]
  last_of_tie = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]
  tp = np.cumsum(live_sorted)[last_of_tie]
  fp = (last_of_tie + 1) - tp
  tpr = np.r_[0.0, tp / labels.sum()]
  fpr = np.r_[0.0, fp / (~labels).sum()]
  return fpr, tpr, np.r_[np.inf, s_sorted[last_of_tie]]


def _eer(fpr: np.ndarray, tpr: np.ndarray) -> float:
  """Equal error rate: the point on the piecewise-linear ROC where FAR = FRR, i.e. FPR = 1 - TPR.

  g_k = FPR_k + TPR_k - 1 rises from -1 to 1 along the ROC; the EER is FPR at its root, linearly
  interpolated between the two ROC points that bracket it.
  """
  g = fpr + tpr - 1.0
  k = int(np.argmax(g >= 0))  # g[-1] = 1, so a root exists; k >= 1 because g[0] = -1
  alpha = -g[k - 1] / (g[k] - g[k - 1])
  return float(fpr[k - 1] + alpha * (fpr[k] - fpr[k - 1]))


def fas_metrics(scores, labels, threshold: float | None = None) -> dict[str, float]:
  """Face anti-spoofing metrics. Labels: 1 = live (bona fide), 0 = attack; high score = live.

  A sample is accepted as live when score >= threshold. With
    FAR(t) = #{attack: s >= t} / #attack  (attacks accepted; APCER),
    FRR(t) = #{live: s < t} / #live        (lives rejected; BPCER):

  - eer: FAR = FRR on the linearly interpolated ROC.
  - hter: (FAR(t) + FRR(t)) / 2 at t = `threshold`. With threshold None, t is the data's own EER
    threshold, the ROC threshold minimising |FAR - FRR| (ties: the highest), so HTER ~ EER (the
    convention of SSDG / SSAN / FLIP). Pass a threshold chosen on source validation data for an
    honest cross-domain HTER.
  - auc: area under the ROC (trapezoid rule; ties count one half), as sklearn's roc_auc_score.
  - tpr_at_fpr_1pct: the highest TPR among ROC thresholds with FPR <= 1% (no interpolation).
  - threshold: the t used for hter.

  Raises:
    DataError: single-class input, mismatched shapes, non-binary labels or non-finite scores.
  """
  scores, labels = _fas_inputs(scores, labels)
  fpr, tpr, thresholds = roc_points(scores, labels)
  if threshold is None:
    k = 1 + int(np.argmin(np.abs(fpr[1:] - (1.0 - tpr[1:]))))
    threshold = float(thresholds[k])
  accept = scores >= threshold
  far = float(np.mean(accept[~labels]))
  frr = float(np.mean(~accept[labels]))
  return {
    "hter": 0.5 * (far + frr),
    "eer": _eer(fpr, tpr),
    "auc": float(np.trapezoid(tpr, fpr)),
    "tpr_at_fpr_1pct": float(np.max(tpr[fpr <= 0.01])),
    "threshold": float(threshold),
  }


# ---------------------------------------------------------------------------------------------
# Text and image-text retrieval


def _ngrams(words: Sequence[str], n: int) -> Counter:
  return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def corpus_bleu(
  hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]], max_n: int = 4
) -> float:
  """Corpus-level BLEU-`max_n` (Papineni et al. 2002), in [0, 1]; words are lists of tokens.

  Clipped n-gram counts summed over the corpus, uniform weights, no smoothing (0 when some order
  has no match), brevity penalty against the reference length closest to each hypothesis (the
  shorter on ties), as `nltk.translate.bleu_score.corpus_bleu` with its defaults.
  """
  if len(hypotheses) != len(references) or not hypotheses:
    raise DataError(
      f"corpus_bleu needs as many hypotheses as references, >0; got "
      f"{len(hypotheses)} and {len(references)}"
    )
  matches, totals = [0] * max_n, [0] * max_n
  hyp_len = ref_len = 0
  for hyp, refs in zip(hypotheses, references, strict=True):
    if not refs:
      raise DataError("corpus_bleu: every hypothesis needs at least one reference")
    hyp_len += len(hyp)
    ref_len += min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]
    for n in range(1, max_n + 1):
      counts = _ngrams(hyp, n)
      best = Counter()
      for r in refs:
        best |= _ngrams(r, n)
      matches[n - 1] += sum(min(c, best[g]) for g, c in counts.items())
      totals[n - 1] += sum(counts.values())
  if min(matches) == 0:
    return 0.0
  log_precision = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / max_n
  brevity = 1.0 if hyp_len > ref_len else math.exp(1.0 - ref_len / max(hyp_len, 1))
  return float(brevity * math.exp(log_precision))


def r_precision(scores_NxN, group: int = 32) -> float:
  """Top-1 retrieval accuracy of the matching item among `group` candidates (AttnGAN's R-precision
  with R = 1): rows are queries, columns candidates, the match on the diagonal. The N items are
  cut into consecutive groups of `group` (the last one smaller); chance is 1 / group.
  """
  s = np.asarray(scores_NxN, np.float64)
  if s.ndim != 2 or s.shape[0] != s.shape[1] or len(s) < 2:
    raise DataError(f"r_precision needs square scores with N >= 2, got {s.shape}")
  hits = []
  for i in range(0, len(s), group):
    block = s[i : i + group, i : i + group]
    hits.append(block.argmax(axis=1) == np.arange(len(block)))
  return float(np.mean(np.concatenate(hits)))
