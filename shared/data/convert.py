"""uint8 images -> float, where the arithmetic happens (on the device, inside jitted code).

Splits hold images as uint8 NHWC (a quarter of float32's host memory and transfer); every step or
batch function that does arithmetic on images starts with `to_float(batch["image"])`.
"""

from __future__ import annotations

import numpy as np

SCALE = 255.0
_TABLE = np.arange(256, dtype=np.float32) / np.float32(SCALE)  # uint8 value -> float in [0, 1]


def to_float(images, dtype=None):
  """uint8 in [0, 255] -> float in [0, 1]; float images are returned as they are (cast to dtype).

  Works on numpy arrays (returns numpy) and jax arrays, inside `jit` too (the branch is on the
  static dtype). Values are float32 first, then cast, so a bf16 result is the rounded float32
  value; `to_float(x)` equals numpy's `x.astype(np.float32) / 255` exactly, on every backend.

  Args:
    images: uint8 or float array, any shape.
    dtype: the result's float dtype; default float32 (for float input: its own dtype).
  """
  if isinstance(images, np.ndarray):
    xp = np
  else:
    import jax.numpy as xp  # noqa: PLC0415  (numpy callers need not import jax)
  if images.dtype == np.uint8:
    # A 256-entry table, not a division: XLA rewrites x / 255 as x * (1 / 255), one ulp off
    # numpy's x / 255 for some values; the table gives the same floats on host and device.
    out = xp.asarray(_TABLE)[images]
    return out if dtype is None else out.astype(dtype)
  return images if dtype is None else images.astype(dtype)


def to_uint8(images) -> np.ndarray:
  """float in [0, 1] -> uint8 in [0, 255], rounded to nearest and clipped (host, numpy)."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  return np.clip(np.rint(np.asarray(images, np.float32) * SCALE), 0, 255).astype(np.uint8)


def images_to_float(arrays: dict) -> dict:
  """A split with every uint8 image array (rank 4) as float32 in [0, 1], on the host.

  For methods whose host code does arithmetic on whole splits (InfoTok's scenes and judge);
  keeps a `Split`'s process layout. Costs 4x the memory: prefer `to_float` inside jitted code.
  """
  from shared.data.split import Split

  out = Split(arrays)
  out.process_local = getattr(arrays, "process_local", False)
  out.shard_size = getattr(arrays, "shard_size", None)
  for key, value in arrays.items():
    if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 4:
      out[key] = to_float(value)
  return out
