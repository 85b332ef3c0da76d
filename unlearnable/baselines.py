"""Perturbations made without a surrogate: random noise, synthetic (LSP), AR and one-pixel.

Each takes clean images [N, H, W, C] in [0, 1], labels, the number of classes, eps and a numpy
Generator, and returns delta of the images' shape with images + delta in [0, 1]. All but OPS
respect ||delta||_inf <= eps; OPS is an L0 attack (one pixel per image, any amplitude).
"""

from __future__ import annotations

import numpy as np


def box(images: np.ndarray, delta: np.ndarray, eps: float) -> np.ndarray:
  """Projects delta onto {||delta||_inf <= eps, images + delta in [0, 1]}."""
  delta = np.clip(delta, -eps, eps)
  return (np.clip(images + delta, 0.0, 1.0) - images).astype(np.float32)


def random_noise(images, labels, num_classes, eps, rng: np.random.Generator, cfg=None):
  """Sample-wise uniform noise in [-eps, eps]: the control that should not protect."""
  del labels, num_classes, cfg
  return box(images, rng.uniform(-eps, eps, images.shape), eps)


def _upsample(codes_NxhxwxC, h: int, w: int) -> np.ndarray:
  """Nearest-neighbour upsampling of a coarse grid to H x W (patches of constant value)."""
  n, gh, gw, c = codes_NxhxwxC.shape
  rows = (np.arange(h) * gh) // h
  cols = (np.arange(w) * gw) // w
  return codes_NxhxwxC[:, rows][:, :, cols]


def synthetic_noise(images, labels, num_classes, eps, rng, cfg):
  """Linearly separable synthetic perturbations (LSP; Yu et al., KDD 2022, "Availability attacks
  create shortcuts"): each class a Gaussian centre in a low-dimensional patch space, each image
  a point near its class's centre, upsampled to patches and scaled to the L-inf budget.

  cfg: patch (pixels per patch side), spread (per-image std relative to the unit-variance centres).
  """
  n, h, w, c = images.shape
  gh, gw = max(1, h // cfg.patch), max(1, w // cfg.patch)
  centres_KxD = rng.standard_normal((num_classes, gh * gw * c))
  codes = centres_KxD[labels] + cfg.spread * rng.standard_normal((n, gh * gw * c))
  codes = codes / np.maximum(np.abs(codes).max(axis=1, keepdims=True), 1e-12)
  delta = eps * _upsample(codes.reshape(n, gh, gw, c), h, w)
  return box(images, delta, eps)


def ar_coefficients(num_classes: int, channels: int, rng, window: int = 3, tries: int = 200):
  """Per class and channel, causal AR coefficients over a window x window neighbourhood.

  The current pixel is the window's bottom-right entry, fixed to -1; the other window*window - 1
  coefficients are Gaussian, scaled to sum to 1, and kept only if the process they drive stays
  bounded (a 32x32 test sequence grows less than 100x), as Sandoval-Segura et al. sample them.
  Returns [K, C, window, window]; the recurrence is sum(coeff * neighbourhood) = 0.
  """
  out = np.zeros((num_classes, channels, window, window))
  for k in range(num_classes):
    for ch in range(channels):
      for _ in range(tries):
        a = rng.standard_normal(window * window - 1)
        if abs(a.sum()) < 1e-3:
          continue
        a = a / a.sum()
        coef = np.append(a, -1.0).reshape(window, window)
        test = _ar_run(
          coef[None],
          np.random.default_rng(0).standard_normal((1, 32 + window, 32 + window)),
          window,
        )
        if np.abs(test).max() < 100 * 3:
          break
      out[k, ch] = coef
  return out


def _ar_run(coef_NxWxW, x_NxHxW, window: int) -> np.ndarray:
  """Fills x (whose first window-1 rows and columns are the initial noise) in raster order."""
  w = window
  x = x_NxHxW.copy()
  a = coef_NxWxW.reshape(len(coef_NxWxW), -1)[:, :-1]  # Coefficients of the causal neighbours.
  for i in range(w - 1, x.shape[1]):
    for j in range(w - 1, x.shape[2]):
      patch = x[:, i - w + 1 : i + 1, j - w + 1 : j + 1].reshape(len(x), -1)[:, :-1]
      x[:, i, j] = np.sum(a * patch, axis=1)
  return x


def ar_noise(images, labels, num_classes, eps, rng, cfg):
  """Autoregressive perturbations (Sandoval-Segura et al., NeurIPS 2022): each image's channel c
  is a fresh run of its class's AR process (random Gaussian start), cropped to H x W and scaled
  to ||.||_inf = eps (the paper scales to an L2 norm; the L-inf budget keeps all methods alike).

  cfg: window (the AR neighbourhood side, 3 in the paper).
  """
  n, h, w, c = images.shape
  win = cfg.window
  coef = ar_coefficients(num_classes, c, rng, win)
  delta = np.empty(images.shape)
  for ch in range(c):
    start = rng.standard_normal((n, h + win - 1, w + win - 1))
    run = _ar_run(coef[labels, ch], start, win)[:, win - 1 :, win - 1 :]
    delta[..., ch] = run
  delta = delta / np.maximum(np.abs(delta).reshape(n, -1).max(1), 1e-12)[:, None, None, None]
  return box(images, eps * delta, eps)


def one_pixel_shortcut(images, labels, num_classes, eps, rng, cfg=None):
  """One-pixel shortcut (OPS; Wu et al., ICLR 2023): per class, the pixel position and extreme
  colour (each channel 0 or 1) that deviate most from the class's own pixel values there while
  varying least across its images; every image of the class gets that pixel set to that colour.

  score(p, colour) = mean_i |x_i[p] - colour| - std_i x_i[p] (both averaged over channels).
  Returns delta with one non-zero pixel per image (an L0 budget; eps is not used).
  """
  del eps, rng, cfg
  n, h, w, c = images.shape
  colours = ((np.arange(2**c)[:, None] >> np.arange(c)[None, :]) & 1).astype(np.float32)
  delta = np.zeros_like(images, dtype=np.float32)
  for k in range(num_classes):
    members = np.flatnonzero(labels == k)
    if members.size == 0:
      continue
    x = images[members].reshape(len(members), h * w, c)
    spread = x.std(0).mean(-1)  # [HW]
    dev = np.abs(x[:, :, None, :] - colours[None, None]).mean(0).mean(-1)  # [HW, colours]
    score = dev - spread[:, None]
    p, col = np.unravel_index(np.argmax(score), score.shape)
    y, xx = divmod(int(p), w)
    delta[members, y, xx, :] = colours[col] - images[members, y, xx, :]
  return delta
