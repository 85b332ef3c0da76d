"""Per-sample image augmentation inside the jitted steps: flips and pad-and-crop shifts.

Colour jitter is left out on purpose: colour, gamut and gamma are spoof cues in FAS.
"""

from __future__ import annotations

import jax

from shared.augment import pad_and_crop, per_example, random_flip


def augment(key: jax.Array, images_BxHxWxC: jax.Array, *, flip: bool, pad: int) -> jax.Array:
  """Random horizontal flip and a random shift of up to `pad` pixels (edge padding), per sample."""
  if not flip and not pad:
    return images_BxHxWxC

  def one(k, x_HxWxC):
    k_flip, k_crop = jax.random.split(k)
    if flip:
      x_HxWxC = random_flip(k_flip, x_HxWxC)
    if pad:
      x_HxWxC = pad_and_crop(k_crop, x_HxWxC, pad, "edge")
    return x_HxWxC

  return per_example(one, key, images_BxHxWxC)
