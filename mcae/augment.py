"""Per-sample image augmentation inside the jitted steps (dm-pix): flips and pad-and-crop shifts.

Colour jitter is left out on purpose: colour, gamut and gamma are spoof cues in FAS.
"""

from __future__ import annotations

import dm_pix as pix
import jax
import jax.numpy as jnp


def augment(key: jax.Array, images_BxHxWxC: jax.Array, *, flip: bool, pad: int) -> jax.Array:
  """Random horizontal flip and a random shift of up to `pad` pixels (edge padding), per sample."""
  if not flip and not pad:
    return images_BxHxWxC
  _, h, w, c = images_BxHxWxC.shape

  def one(k, x_HxWxC):
    k_flip, k_crop = jax.random.split(k)
    if flip:
      x_HxWxC = pix.random_flip_left_right(k_flip, x_HxWxC)
    if pad:
      x_HxWxC = jnp.pad(x_HxWxC, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
      x_HxWxC = pix.random_crop(k_crop, x_HxWxC, (h, w, c))
    return x_HxWxC

  keys = jax.random.split(key, images_BxHxWxC.shape[0])
  return jax.vmap(one)(keys, images_BxHxWxC)
