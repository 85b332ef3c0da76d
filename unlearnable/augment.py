"""Image augmentations in JAX (dm-pix), batched over NHWC images in [0, 1].

Every function takes the already protected images (x + delta): augmentation is applied to the
protected image, never delta added to an augmented clean image (a reproduction gap users of
unlearnable-example repos report). All are differentiable in the image, so PGD can be taken through
them (TUE's step through both SimCLR views; adversarial training through the crop).
"""

from __future__ import annotations

import dm_pix as pix
import jax
import jax.numpy as jnp

from shared.augment import pad_and_crop, per_example, random_flip


def crop_flip(
  key: jax.Array, images_BxHxWxC: jax.Array, pad: int | None = None, mode: str = "reflect"
) -> jax.Array:
  """The CIFAR recipe: pad by `pad` (H // 8 by default), random crop back, random h-flip.

  Padding reflects by default: on 16x16 images the CIFAR zero padding blacks out up to a quarter
  of the crop, which shifts BatchNorm's statistics away from the test images'.
  """
  pad = max(1, images_BxHxWxC.shape[1] // 8) if pad is None else pad

  def one(k, img):
    k_crop, k_flip = jax.random.split(k)
    return random_flip(k_flip, pad_and_crop(k_crop, img, pad, mode))

  return per_example(one, key, images_BxHxWxC)


def flip(key: jax.Array, images_BxHxWxC: jax.Array) -> jax.Array:
  """Random horizontal flip of each image."""
  return per_example(random_flip, key, images_BxHxWxC)


def random_resized_crop(
  key: jax.Array, image_HxWxC: jax.Array, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)
) -> jax.Array:
  """torchvision's RandomResizedCrop for one image, as a differentiable bilinear resample."""
  h, w, _ = image_HxWxC.shape
  k_area, k_ratio, k_y, k_x = jax.random.split(key, 4)
  area = jax.random.uniform(k_area, (), minval=scale[0], maxval=scale[1]) * h * w
  log_r = jax.random.uniform(k_ratio, (), minval=jnp.log(ratio[0]), maxval=jnp.log(ratio[1]))
  aspect = jnp.exp(log_r)
  crop_w = jnp.clip(jnp.sqrt(area * aspect), 1.0, w)
  crop_h = jnp.clip(jnp.sqrt(area / aspect), 1.0, h)
  y0 = jax.random.uniform(k_y, ()) * (h - crop_h)
  x0 = jax.random.uniform(k_x, ()) * (w - crop_w)
  s = jnp.stack([h / crop_h, w / crop_w])
  return jax.image.scale_and_translate(
    image_HxWxC,
    (h, w, image_HxWxC.shape[2]),
    spatial_dims=(0, 1),
    scale=s,
    translation=-jnp.stack([y0, x0]) * s,
    method="linear",
    antialias=False,
  )


_RGB_TO_YIQ = jnp.array(
  [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], jnp.float32
)


def _hue_rotate(img, shift):
  """Hue shift by `shift` turns as a rotation of the YIQ chroma plane.

  A linear stand-in for torchvision's HSV hue shift: dm_pix.adjust_hue's gradient (through
  rgb_to_hsv) runs ~100x slower on CPU, and PGD differentiates through every view.
  """
  c, s = jnp.cos(2 * jnp.pi * shift), jnp.sin(2 * jnp.pi * shift)
  rot = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) * jnp.array([1.0, c, c])
  rot = rot + jnp.array([[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]) * s
  m = jnp.linalg.inv(_RGB_TO_YIQ) @ rot @ _RGB_TO_YIQ
  return img @ m.T


def _colour_jitter(key, img, strength: float):
  """Brightness, contrast, saturation (factors in [1 - 0.4s, 1 + 0.4s]) and hue (+-0.1s)."""
  kb, kc, ks, kh = jax.random.split(key, 4)
  lo, hi = 1.0 - 0.4 * strength, 1.0 + 0.4 * strength
  img = img * jax.random.uniform(kb, (), minval=lo, maxval=hi)
  img = pix.adjust_contrast(img, jax.random.uniform(kc, (), minval=lo, maxval=hi))
  if img.shape[-1] == 3:
    img = pix.adjust_saturation(img, jax.random.uniform(ks, (), minval=lo, maxval=hi))
    img = _hue_rotate(img, jax.random.uniform(kh, (), minval=-0.1, maxval=0.1) * strength)
  return jnp.clip(img, 0.0, 1.0)


def simclr_view(
  key: jax.Array,
  images_BxHxWxC: jax.Array,
  *,
  crop_scale: tuple[float, float] = (0.2, 1.0),
  jitter_strength: float = 1.0,
  jitter_prob: float = 0.8,
  grayscale_prob: float = 0.2,
) -> jax.Array:
  """One SimCLR view (Chen et al. 2020, the CIFAR recipe: no blur): resized crop, flip, colour
  jitter with probability 0.8, grayscale with probability 0.2 (colour steps only for RGB)."""

  def one(k, img):
    k_crop, k_flip, k_jit, k_pj, k_pg = jax.random.split(k, 5)
    img = random_resized_crop(k_crop, img, scale=crop_scale)
    img = pix.random_flip_left_right(k_flip, img)
    if jitter_strength > 0:
      jittered = _colour_jitter(k_jit, img, jitter_strength)
      img = jnp.where(jax.random.uniform(k_pj) < jitter_prob, jittered, img)
    if img.shape[-1] == 3 and grayscale_prob > 0:
      grey = jnp.broadcast_to(pix.rgb_to_grayscale(img, keep_dims=True), img.shape)
      img = jnp.where(jax.random.uniform(k_pg) < grayscale_prob, grey, img)
    return img

  return per_example(one, key, images_BxHxWxC)


def cutout(key: jax.Array, images_BxHxWxC: jax.Array, size: int) -> jax.Array:
  """DeVries & Taylor 2017: zero a size x size square at a random centre (may cross the border)."""
  _, h, w, _ = images_BxHxWxC.shape

  def one(k, img):
    ky, kx = jax.random.split(k)
    cy, cx = jax.random.randint(ky, (), 0, h), jax.random.randint(kx, (), 0, w)
    ys, xs = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    hole = (ys >= cy - size // 2) & (ys < cy - size // 2 + size) & (xs >= cx - size // 2)
    hole = hole & (xs < cx - size // 2 + size)
    return jnp.where(hole[..., None], 0.0, img)

  return per_example(one, key, images_BxHxWxC)


def mixup(key: jax.Array, images_BxHxWxC: jax.Array, onehot_BxK: jax.Array, alpha: float):
  """Zhang et al. 2018: one lambda ~ Beta(alpha, alpha) per batch, mixed with a permutation."""
  k_lam, k_perm = jax.random.split(key)
  lam = jax.random.beta(k_lam, alpha, alpha)
  perm = jax.random.permutation(k_perm, images_BxHxWxC.shape[0])
  images = lam * images_BxHxWxC + (1.0 - lam) * images_BxHxWxC[perm]
  return images, lam * onehot_BxK + (1.0 - lam) * onehot_BxK[perm]


def grayscale(images_BxHxWxC):
  """Luma (rec601) replicated to the input's channels, so the model's input shape is unchanged."""
  if images_BxHxWxC.shape[-1] != 3:
    return images_BxHxWxC
  grey = pix.rgb_to_grayscale(images_BxHxWxC, keep_dims=True)
  return jnp.broadcast_to(grey, images_BxHxWxC.shape)
