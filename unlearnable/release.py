"""The protected set as others receive it: uint8 images, and the call that makes them.

    protected = unlearnable.protect(images_uint8, labels, method="em", eps=8 / 255)
    unlearnable.save_protected("protected.npz", protected, labels)   # + a PNG grid beside it
    released = unlearnable.load_protected("protected.npz")  # {'images', 'labels', 'indices', 'eps'}

Rounding x + delta to uint8 can move a pixel by up to half a grey level past the float budget;
`quantize` clips the uint8 difference to floor(255 * eps) levels, so |protected - clean| <= 8 in
uint8 units at eps = 8/255 and never more than eps * 255 at any eps. Victims in a run train on
the released uint8 images (`train.protect` reads them back), not on the float perturbation.
"""

from __future__ import annotations

import os

import numpy as np

from shared import workdir
from shared.data import to_float
from shared.errors import DataError
from unlearnable import perturb

KEYS = ("images", "labels", "indices", "eps")
GRID = 8  # images in the PNG grid


def budget_levels(eps: float) -> int:
  """The largest uint8 step |q - x| allowed by an L-inf budget eps on [0, 1] images."""
  return int(np.floor(255.0 * eps + 1e-6))


def quantize(images01: np.ndarray, delta: np.ndarray, eps: float) -> np.ndarray:
  """x + delta as uint8: rounded, its step from round(255 x) clipped to the budget, in [0, 255]."""
  clean = np.rint(np.asarray(images01, np.float64) * 255.0)
  step = np.rint((np.asarray(images01, np.float64) + np.asarray(delta, np.float64)) * 255.0) - clean
  b = budget_levels(eps)
  return np.clip(clean + np.clip(step, -b, b), 0, 255).astype(np.uint8)


def as_delta(protected_uint8: np.ndarray, images01: np.ndarray) -> np.ndarray:
  """The float perturbation a victim sees when it trains on the uint8 release of images01."""
  return (protected_uint8.astype(np.float32) / 255.0 - np.asarray(images01, np.float32)).astype(
    np.float32
  )


def resolved_config(config=None):
  """A private copy of `config`, or of configs/unlearnable.py's default variant when None."""
  if config is None:
    from configs import unlearnable as config_file  # noqa: PLC0415  (the default settings)

    config = config_file.get_config()
  return config.copy_and_resolve_references()


def protect(
  images_uint8,
  labels,
  *,
  method: str = "em",
  eps: float = 8 / 255,
  config=None,
  seed: int = 0,
  num_classes: int | None = None,
  workdir_path: str | None = None,
) -> np.ndarray:
  """Protected copies of images_uint8 ([N, H, W, C] or [N, H, W] uint8) as uint8, same shape.

  Args:
    method: one of `unlearnable.METHODS` (clean, random, lsp, ar, ops, em, em_class, tue, dist).
    eps: the L-inf budget on [0, 1] images (8/255 in the field).
    config: a config from configs/unlearnable.py (its surrogate, PGD and search settings); None
      takes that file's default variant. Its eps is replaced by `eps`.
    seed: the PRNG seed of the search and the noise.
    workdir_path: where a min-min search keeps its checkpoints (resumes after a kill).
  """
  images = np.asarray(images_uint8)
  if images.dtype != np.uint8:
    raise DataError(f"protect takes uint8 images, got {images.dtype} (scale [0, 1] floats by 255)")
  config = resolved_config(config)
  config.eps = float(eps)
  import jax  # noqa: PLC0415  (numpy-only callers of quantize never import JAX)

  images01 = to_float(images)
  delta = perturb.generate(
    config,
    images01,
    labels,
    jax.random.PRNGKey(seed),
    method=method,
    num_classes=num_classes,
    workdir=workdir_path,
  )
  return quantize(images01, delta, eps)


def save_protected(path: str, images_uint8, labels, *, indices=None, eps: float = 8 / 255) -> None:
  """Writes `protected.npz` (images uint8, labels int64, indices int64, eps) atomically."""
  images, labels = np.asarray(images_uint8), np.asarray(labels)
  _check(path, images, labels)
  indices = np.arange(len(labels)) if indices is None else np.asarray(indices)
  workdir.save_npz(
    path,
    {
      "images": images,
      "labels": labels.astype(np.int64),
      "indices": indices.astype(np.int64),
      "eps": np.float32(eps),
    },
  )


def load_protected(path: str) -> dict[str, np.ndarray]:
  """Reads a `protected.npz` back, checking its keys, dtype and shapes (DataError otherwise)."""
  if not os.path.isfile(path):
    raise DataError(f"protected set not found: {path}")
  try:
    with np.load(path, allow_pickle=False) as f:
      out = {k: f[k] for k in f.files}
  except (OSError, ValueError) as e:
    raise DataError(f"{path} is not a readable .npz ({e})") from None
  missing = [k for k in KEYS if k not in out]
  if missing:
    raise DataError(f"{path} lacks {missing}; a protected.npz holds {list(KEYS)}")
  _check(path, out["images"], out["labels"])
  return out


def _check(path: str, images: np.ndarray, labels: np.ndarray) -> None:
  if images.dtype != np.uint8 or images.ndim not in (3, 4):
    raise DataError(
      f"{path}: images must be uint8 [N, H, W(, C)], got {images.dtype} {images.shape}"
    )
  if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
    raise DataError(
      f"{path}: labels must be {images.shape[0]} integers, got {labels.dtype} {labels.shape}"
    )


def save_grid(path: str, clean_uint8, protected_uint8, eps: float, n: int = GRID) -> str:
  """A PNG of n clean images, their protected copies and the amplified difference 0.5 + d / 2eps."""
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  clean = np.asarray(clean_uint8[:n], np.float32) / 255.0
  prot = np.asarray(protected_uint8[:n], np.float32) / 255.0
  diff = np.clip(0.5 + (prot - clean) / (2 * eps), 0.0, 1.0)
  rows = (("clean", clean), ("protected", prot), (f"delta x {0.5 / eps:.0f}", diff))
  fig, axes = plt.subplots(3, len(clean), figsize=(1.2 * len(clean), 3.9), squeeze=False)
  for r, (name, imgs) in enumerate(rows):
    for c, img in enumerate(imgs):
      ax = axes[r][c]
      ax.imshow(
        img.squeeze(), cmap="gray" if img.shape[-1] == 1 or img.ndim == 2 else None, vmin=0, vmax=1
      )
      ax.set_xticks([])
      ax.set_yticks([])
      if c == 0:
        ax.set_ylabel(name, fontsize=8)
  fig.tight_layout()
  return workdir.save_figure(fig, path, dpi=100)
