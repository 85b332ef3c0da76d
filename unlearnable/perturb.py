"""The public API: `delta = unlearnable.generate(config, images, labels, key)`.

`config` is a run config (configs/unlearnable.py); `config.generator` names the method unless
`method=` is given. Image shape (any size, grey or colour) and the number of classes come from
the inputs. The result has the images' shape, ||delta||_inf <= config.eps (OPS: one pixel per
image instead) and images + delta inside [0, 1].
"""

from __future__ import annotations

import zlib
from typing import Any

import jax
import numpy as np

from shared import workdir
from shared.errors import ConfigError, DataError
from unlearnable import baselines, minmin

# name -> (kind, description). "surrogate": made by a min-min search; "direct": no model.
METHODS = {
  "clean": ("direct", "no perturbation"),
  "random": ("direct", "uniform noise in [-eps, eps]"),
  "lsp": ("direct", "class-wise linearly separable synthetic noise (Yu et al. 2022)"),
  "ar": ("direct", "autoregressive perturbations (Sandoval-Segura et al. 2022)"),
  "ops": ("direct", "one-pixel shortcut (Wu et al. 2023); an L0 budget"),
  "em": ("surrogate", "sample-wise error-minimising noise (Huang et al. 2021)"),
  "em_class": ("surrogate", "class-wise error-minimising noise (Huang et al. 2021)"),
  "tue": ("surrogate", "SimCLR min-min + lambda * CSD (Ren et al. 2023)"),
  "dist": ("surrogate", "TUE + class separability across surrogates' feature spaces"),
}
L0_METHODS = ("ops",)


def _np_rng(key) -> np.random.Generator:
  seeds = np.asarray(jax.random.randint(key, (4,), 0, 2**31 - 1)).tolist()
  return np.random.default_rng(seeds)


def method_key(key, name: str):
  """A per-method key that does not depend on which other methods a run makes."""
  return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def check_inputs(images, labels, eps: float, num_classes: int | None = None):
  """Validates generate's inputs; returns (images NHWC float32, labels int32, num_classes)."""
  if not np.isfinite(eps) or eps <= 0:
    raise ConfigError(f"eps must be > 0 (an L-inf budget in [0, 1] pixel units), got {eps}")
  if eps > 1:
    raise ConfigError(f"eps={eps} is larger than the pixel range [0, 1]; use e.g. 8/255")
  images = np.asarray(images)
  if images.ndim not in (3, 4):
    raise DataError(
      f"images must be [N, H, W] (grey) or [N, H, W, C], got shape {tuple(images.shape)}"
    )
  if images.shape[0] == 0:
    raise DataError("images is empty (0 examples)")
  if not np.issubdtype(images.dtype, np.floating):
    raise DataError(f"images must be floats in [0, 1], got dtype {images.dtype}")
  lo, hi = float(np.min(images)), float(np.max(images))
  if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0.0 or hi > 1.0:
    raise DataError(f"images must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
  labels = np.asarray(labels)
  if labels.shape != (images.shape[0],):
    raise DataError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
  if not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f"labels must be integers, got dtype {labels.dtype}")
  if labels.min() < 0:
    raise DataError(f"labels must be >= 0, got {labels.min()}")
  k = int(labels.max()) + 1 if not num_classes else int(num_classes)
  if labels.max() >= k:
    raise DataError(f"labels outside the {k} classes (max label {labels.max()})")
  x = images.astype(np.float32)
  x = x[..., None] if x.ndim == 3 else x
  return x, labels.astype(np.int32), max(k, 2)


def minmin_settings(config, method: str) -> tuple[str, dict]:
  """The min-min search kind and its settings (plain data) for a surrogate method."""
  models = config.models.to_dict()

  def spec(name):
    if name not in models:
      raise ConfigError(f"model {name!r} is not in config.models ({sorted(models)})")
    return models[name]

  if method in ("em", "em_class"):
    s = config.em.to_dict()
    s["model"] = spec(config.surrogate)
    return "em", s
  s = config.tue.to_dict()
  s["model"] = spec(config.surrogate)
  if method == "dist":
    s["dist"] = {
      **config.dist.to_dict(),
      "feature_nets": [spec(n) for n in config.dist.feature_nets],
    }
    return "dist", s
  return "tue", s


def generate_with_info(
  config,
  images,
  labels,
  key,
  *,
  method: str | None = None,
  num_classes: int | None = None,
  workdir: str | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
  """`generate`, also returning what the search did (rounds, surrogate accuracy, time)."""
  method = method or config.generator
  if method not in METHODS:
    raise ConfigError(f"unknown protection method {method!r}; known: {', '.join(METHODS)}")
  eps = float(config.eps)
  x, y, k = check_inputs(images, labels, eps, num_classes)
  rng = _np_rng(method_key(key, method))
  info: dict[str, Any] = {}
  if method == "clean":
    delta = np.zeros_like(x)
  elif method == "random":
    delta = baselines.random_noise(x, y, k, eps, rng)
  elif method == "lsp":
    delta = baselines.synthetic_noise(x, y, k, eps, rng, config.lsp)
  elif method == "ar":
    delta = baselines.ar_noise(x, y, k, eps, rng, config.ar)
  elif method == "ops":
    delta = baselines.one_pixel_shortcut(x, y, k, eps, rng)
  else:
    kind, settings = minmin_settings(config, method)
    search = minmin.Search(
      kind,
      settings,
      x,
      y,
      k,
      eps,
      method_key(key, method),
      classwise=method == "em_class",
      workdir=workdir,
    )
    delta, info = search.run()
  delta = np.asarray(delta, np.float32).reshape(np.shape(images))
  return delta, info


def generate(config, images, labels, key, **kwargs) -> np.ndarray:
  """Protective perturbations for (images, labels).

  Args:
    config: a run config; uses eps, generator (the method, unless method= is given), the
      method's sub-config and the model specs.
    images: [N, H, W] or [N, H, W, C] floats in [0, 1].
    labels: [N] ints >= 0 (the number of classes is max + 1 unless num_classes= is given).
    key: a jax PRNG key.
    **kwargs: method=, num_classes=, workdir= (checkpoints of a min-min search, to resume it).

  Returns:
    delta, same shape as images: ||delta||_inf <= eps (OPS: one pixel changed per image) and
    images + delta in [0, 1].

  Raises:
    ConfigError: eps <= 0 or > 1, an unknown method.
    DataError: images not in [0, 1] or of the wrong rank, labels negative or outside the classes.
  """
  return generate_with_info(config, images, labels, key, **kwargs)[0]


def save(path: str, delta: np.ndarray, indices: np.ndarray, eps: float, **extra) -> None:
  """Writes perturbations.npz: delta [N, ...] float32, indices [N] (rows of the split), eps.

  Atomic (a resumed run never reads half a file), on process 0, tied to the run's config.
  """
  arrays = {
    "delta": np.asarray(delta, np.float32),
    "indices": np.asarray(indices, np.int64),
    "eps": np.float32(eps),
    **extra,
  }
  workdir.save_arrays(path, arrays)


def load(path: str) -> dict[str, np.ndarray]:
  """Reads perturbations.npz back: {'delta', 'indices', 'eps', ...}.

  Raises:
    CheckpointError: missing, truncated or from another config's run (naming the recovery).
    DataError: a file without the three arrays.
  """
  recover = (
    f"delete {path} and the generation.json beside it, then re-run the same command to make "
    "the perturbations again"
  )
  out = workdir.load_arrays(path, recover=recover)
  missing = {"delta", "indices", "eps"} - set(out)
  if missing:
    raise DataError(f"{path} lacks {sorted(missing)}; {recover}")
  return out
