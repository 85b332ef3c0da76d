"""Data-wise transfer: perturbations made on a source set, applied to a target set with the same
classes (class k's perturbations go to the target's class k).

Rules (config `transfer.rule`):
  class_sample  each target image gets the perturbation of a random source image of its class;
  interp        a random convex combination u * d_a + (1 - u) * d_b of two source perturbations
                of its class (stays inside the L-inf ball; gives new perturbations, not copies);
  class_mean    the class's mean perturbation rescaled to ||.||_inf = eps (a class-wise noise).
Source and target sizes may differ: perturbations are resized (bilinear) to the target's size.
L0 perturbations (OPS) carry their pixel *values*: the changed pixels are set to the value they
had in the protected source image.
"""

from __future__ import annotations

import jax
import numpy as np

from shared.errors import ConfigError, DataError
from unlearnable.baselines import box

RULES = ("class_sample", "interp", "class_mean")


def _resize(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  if a.shape[1:3] == tuple(hw):
    return a
  return np.asarray(jax.image.resize(a, (a.shape[0], *hw, a.shape[3]), method="linear"))


def transfer(
  delta_src: np.ndarray,
  images_src: np.ndarray,
  labels_src: np.ndarray,
  images_tgt: np.ndarray,
  labels_tgt: np.ndarray,
  eps: float,
  rule: str,
  rng: np.random.Generator,
  *,
  l0: bool = False,
) -> np.ndarray:
  """Perturbations for the target images from the source's; images_tgt + result in [0, 1]."""
  if rule not in RULES:
    raise ConfigError(f"transfer.rule={rule!r}; known: {', '.join(RULES)}")
  if images_src.shape[-1] != images_tgt.shape[-1]:
    raise DataError(
      f"data-wise transfer needs the same channels: source {images_src.shape[-1]}, "
      f"target {images_tgt.shape[-1]}"
    )
  hw = images_tgt.shape[1:3]
  by_class = {k: np.flatnonzero(labels_src == k) for k in np.unique(labels_tgt)}
  empty = sorted(int(k) for k, v in by_class.items() if v.size == 0)
  if empty:
    raise DataError(f"data-wise transfer: target classes {empty} have no source images")
  n = len(labels_tgt)
  pick_a = np.array([rng.choice(by_class[k]) for k in labels_tgt])
  if l0:
    values = _resize(images_src + delta_src, hw)[pick_a]
    changed = _resize(np.abs(delta_src).max(-1, keepdims=True), hw)[pick_a] > 0
    return np.where(changed, values - images_tgt, 0.0).astype(np.float32)
  src = _resize(delta_src, hw)
  if rule == "class_sample":
    delta = src[pick_a]
  elif rule == "interp":
    pick_b = np.array([rng.choice(by_class[k]) for k in labels_tgt])
    u = rng.uniform(0.0, 1.0, (n, 1, 1, 1))
    delta = u * src[pick_a] + (1.0 - u) * src[pick_b]
  else:
    means = {k: src[idx].mean(0) for k, idx in by_class.items()}
    means = {k: eps * m / max(np.abs(m).max(), 1e-12) for k, m in means.items()}
    delta = np.stack([means[k] for k in labels_tgt])
  return box(images_tgt, delta, eps)
