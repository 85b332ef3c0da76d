"""Pre-processing defences applied by the victim to the protected training images (on host)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from shared.errors import ConfigError

LUMA = np.array([0.2989, 0.5870, 0.1140], np.float32)  # rec601, as dm_pix.rgb_to_grayscale.


def grayscale(images: np.ndarray) -> np.ndarray:
  """Luma replicated over the 3 channels (the model's input shape stays the same)."""
  if images.shape[-1] != 3:
    return images.astype(np.float32)
  grey = images.astype(np.float32) @ LUMA
  return np.repeat(grey[..., None], 3, axis=-1)


def jpeg(images: np.ndarray, quality: int = 10) -> np.ndarray:
  """JPEG compression at `quality` (1-95) with PIL (libjpeg, 4:2:0 chroma subsampling), per image.

  Images are rounded to 8 bits first, as saving a protected image as PNG/JPEG would.
  """
  if not 1 <= quality <= 95:
    raise ConfigError(f"jpeg quality must be in [1, 95], got {quality}")
  x8 = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
  grey = x8.shape[-1] == 1
  out = np.empty(x8.shape, np.uint8)
  for i, img in enumerate(x8):
    pil = Image.fromarray(img[..., 0] if grey else img, mode="L" if grey else "RGB")
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=int(quality))
    dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
    out[i] = dec[..., None] if grey else dec
  return out.astype(np.float32) / 255.0
