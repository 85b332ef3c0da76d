"""Rendering of `shapes` scenes: anti-aliased objects on a clean or a nuisance background.

Geometry is in image units ([0, 1] across), so a scene looks the same at every resolution. Each
object stays inside its grid cell (radius + jitter <= half a cell), so objects never overlap.
Shapes are signed distance functions in pixels; coverage = clip(0.5 - distance, 0, 1) gives
one-pixel anti-aliased edges.
"""

from __future__ import annotations

import numpy as np

# Mid-range RGB (no channel outside [0.15, 0.88]), far apart from each other and from grey.
COLOUR_RGB = np.array(
  [
    [0.85, 0.18, 0.15],  # red
    [0.20, 0.70, 0.25],  # green
    [0.18, 0.30, 0.85],  # blue
    [0.88, 0.80, 0.18],  # yellow
    [0.58, 0.22, 0.78],  # purple
    [0.18, 0.78, 0.82],  # cyan
  ],
  np.float32,
)
RADIUS = np.array([0.25, 0.40], np.float32)  # small, large; as a fraction of a cell.
MARGIN = 0.03  # Of a cell, kept free at its border.
CLEAN_BACKGROUND = 0.5
PIXEL_RANGE = (0.04, 0.96)  # Far from 0 and 1: perturbations are never clipped away.


def jitter_limit(size: np.ndarray) -> np.ndarray:
  """The largest centre offset (fraction of a cell) that keeps an object of `size` in its cell."""
  return 0.5 - MARGIN - RADIUS[size]


def centres(pos: np.ndarray, offset: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray]:
  """(x, y) object centres in image units from grid cells and offsets in cell units."""
  row, col = np.divmod(pos, grid)
  return (col + 0.5 + offset[..., 0]) / grid, (row + 0.5 + offset[..., 1]) / grid


def coverage(shape, x, y, radius, resolution: int) -> np.ndarray:
  """Anti-aliased masks [M, H, W] in [0, 1] for M objects (centres and radii in pixels)."""
  grid_1d = np.arange(resolution, dtype=np.float32) + 0.5
  dx = np.abs(grid_1d[None, None, :] - x[:, None, None])  # [M, 1, W]
  dy = grid_1d[None, :, None] - y[:, None, None]  # [M, H, 1], downwards positive
  r = radius[:, None, None]
  out = np.zeros((len(shape), resolution, resolution), np.float32)
  for s, sdf in enumerate(_SDFS):
    m = shape == s
    if m.any():
      out[m] = np.clip(0.5 - sdf(dx[m], dy[m], r[m]), 0.0, 1.0)
  return out


def _circle(dx, dy, r):
  return np.sqrt(dx**2 + dy**2) - r


def _square(dx, dy, r):
  return np.maximum(dx, np.abs(dy)) - 0.8 * r


def _triangle(dx, dy, r):
  # Equilateral, apex up, circumradius 1.15 r, its bounding box centred on the object's centre.
  big_r = 1.15 * r
  dy = dy - big_r / 4
  return np.maximum(dy, 0.866 * dx - 0.5 * dy) - big_r / 2


def _diamond(dx, dy, r):
  return (dx + np.abs(dy) - r) / np.sqrt(2.0)


def _cross(dx, dy, r):
  arm, half_width, ady = 0.95 * r, 0.33 * r, np.abs(dy)
  return np.minimum(np.maximum(dx - arm, ady - half_width), np.maximum(dx - half_width, ady - arm))


_SDFS = (_circle, _square, _triangle, _diamond, _cross)  # In the order of shapes_text.SHAPES.


def object_alphas(shape, size, pos, offset, *, resolution: int, grid: int) -> np.ndarray:
  """Coverage [N, K, H, W] of the objects given as [N, K] arrays (-1 = absent)."""
  x, y = centres(pos, offset, grid)
  radius = RADIUS[np.maximum(size, 0)] / grid
  present = shape >= 0
  alphas = np.zeros((*shape.shape, resolution, resolution), np.float32)
  alphas[present] = coverage(
    shape[present],
    x[present] * resolution,
    y[present] * resolution,
    radius[present] * resolution,
    resolution,
  )
  return alphas


def composite(canvas: np.ndarray, alphas: np.ndarray, rgb: np.ndarray) -> np.ndarray:
  """Paints objects (alphas [N, K, H, W], colours [N, K, 3]) over canvas [N, H, W, 3], in place.

  Objects never overlap, so the order they are painted in does not matter.
  """
  for k in range(alphas.shape[1]):
    alpha = alphas[:, k, :, :, None]
    canvas += alpha * (rgb[:, k, None, None, :] - canvas)
  return canvas


def nuisance_background(rng: np.random.Generator, n: int, resolution: int, strength: float):
  """High-entropy backgrounds [N, H, W, 3] no caption mentions: grey level, tint, smooth noise,
  stripes. Drawn from `rng` independently of the resolution, so a scene is the same at 32 and 64.
  """
  f32 = lambda a: (strength * a).astype(np.float32)
  base = f32(rng.uniform(-0.12, 0.12, (n, 1, 1, 1))) + f32(rng.uniform(-0.04, 0.04, (n, 1, 1, 3)))
  coarse = 5  # A 5x5 random field, bilinearly upsampled: smooth blobs. One GEMM for all images.
  field = 0.07 * rng.standard_normal((n, 1, coarse, coarse))
  field = f32(field + 0.02 * rng.standard_normal((n, 3, coarse, coarse)))
  up = _bilinear_matrix(coarse, resolution)
  smooth = field.reshape(n * 3, coarse * coarse) @ np.kron(up, up).T
  amplitude = f32(rng.uniform(0.0, 0.08, (n, 1, 1)))
  cycles = rng.uniform(1.5, 5.0, (n, 1, 1)).astype(np.float32)
  angle = rng.uniform(0.0, np.pi, (n, 1, 1)).astype(np.float32)
  phase = rng.uniform(0.0, 2 * np.pi, (n, 1, 1)).astype(np.float32)
  u = (np.arange(resolution, dtype=np.float32) + 0.5) / resolution
  along = np.cos(angle) * u[None, None, :] + np.sin(angle) * u[None, :, None]
  stripes = amplitude * np.sin((2 * np.pi) * cycles * along + phase)
  background = smooth.reshape(n, 3, resolution, resolution).transpose(0, 2, 3, 1)
  background += base + CLEAN_BACKGROUND
  background += stripes[..., None]
  return background


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights that upsample a signal linearly, cell-centre aligned."""
  pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
  lo = np.floor(pos).astype(int)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = (pos - lo).astype(np.float32)
  out = np.zeros((n_out, n_in), np.float32)
  out[np.arange(n_out), lo] += 1 - frac
  out[np.arange(n_out), hi] += frac
  return out


def to_uint8(image: np.ndarray) -> np.ndarray:
  """Clips to PIXEL_RANGE and quantises to 8 bits, as a camera would."""
  image = np.clip(image, *PIXEL_RANGE, out=image)
  image *= 255
  return np.rint(image, out=image).astype(np.uint8)


def render_pair(rng, shape, colour, size, pos, offset, *, resolution, grid, strength):
  """Uint8 [N, H, W, 3] (noisy, clean) renders of the same scenes.

  Noisy: nuisance background, colour jitter and pixel noise drawn from `rng`. Clean: flat grey
  background, canonical colours, no noise.
  """
  alphas = object_alphas(shape, size, pos, offset, resolution=resolution, grid=grid)
  rgb = COLOUR_RGB[np.maximum(colour, 0)]
  clean = np.full((len(shape), resolution, resolution, 3), CLEAN_BACKGROUND, np.float32)
  clean = to_uint8(composite(clean, alphas, rgb))
  noisy = nuisance_background(rng, len(shape), resolution, strength)
  jitter = strength * rng.uniform(-0.05, 0.05, (*shape.shape, 3)).astype(np.float32)
  noisy = composite(noisy, alphas, rgb + jitter)
  noisy += np.float32(strength * 0.03) * rng.standard_normal(noisy.shape, dtype=np.float32)
  return to_uint8(noisy), clean


def clean_scenes(shape, colour, size, pos, offset, *, resolution: int, grid: int) -> np.ndarray:
  """Uint8 [N, H, W, 3] scenes on a flat grey background, canonical colours, no noise."""
  alphas = object_alphas(shape, size, pos, offset, resolution=resolution, grid=grid)
  canvas = np.full((len(shape), resolution, resolution, 3), CLEAN_BACKGROUND, np.float32)
  return to_uint8(composite(canvas, alphas, COLOUR_RGB[np.maximum(colour, 0)]))
