"""Per-example image augmentations in JAX (dm-pix), for NHWC float batches inside jitted steps.

The pieces both the CIFAR recipe (unlearnable's victims and surrogates) and MCAE's flips and
shifts are made of; each method composes them in its own order (`unlearnable.augment.crop_flip`,
`mcae.augment`). All are differentiable in the image.
"""

from __future__ import annotations

from collections.abc import Callable

import dm_pix as pix
import jax
import jax.numpy as jnp


def per_example(fn: Callable, key: jax.Array, images_BxHxWxC: jax.Array) -> jax.Array:
  """`fn(key_b, image_b)` for every image, with a key split per image."""
  keys = jax.random.split(key, images_BxHxWxC.shape[0])
  return jax.vmap(fn)(keys, images_BxHxWxC)


def pad_and_crop(key: jax.Array, image_HxWxC: jax.Array, pad: int, mode: str) -> jax.Array:
  """Pads by `pad` pixels (`mode`: 'reflect', 'edge', 'constant', as jnp.pad) and crops a random
  window of the original size: a random shift of up to `pad` pixels."""
  h, w, c = image_HxWxC.shape
  padded = jnp.pad(image_HxWxC, ((pad, pad), (pad, pad), (0, 0)), mode=mode)
  return pix.random_crop(key, padded, (h, w, c))


def random_flip(key: jax.Array, image_HxWxC: jax.Array) -> jax.Array:
  """A horizontal flip with probability 1/2."""
  return pix.random_flip_left_right(key, image_HxWxC)
