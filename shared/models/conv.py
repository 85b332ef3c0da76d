"""A small convolutional encoder / decoder pair for image tokenizers (VQGAN-like, no attention).

Encoder: a patch stem (conv with kernel = stride = `patch_size`, as ViT's patch embedding; with
`patch_hidden` > 0 a per-patch MLP), then for each entry of `widths` after the first a stride-2
conv3x3, each stage followed by `blocks_per_stage` residual blocks, then `latent_blocks` residual
blocks on the latent grid and a 1x1 projection to `out_channels`. The grid is
H / (patch_size * 2 ** (len(widths) - 1)) a side: 48 px with patch 2 and 4 widths gives 3x3.
Decoder mirrors it: 1x1 in, residual blocks, nearest 2x upsampling + conv3x3 per stage, and a
per-cell dense layer (an MLP with `patch_hidden` > 0) that paints each patch (depth-to-space).

Why strided convs from the first layer and no full-resolution 3x3 convs: on 2 CPU cores those
dominate a tokenizer's step time; this layout costs a few MFLOP per 48 px image.
Why no normalisation: the latents feed a quantizer and information-bottleneck terms whose scale
matters (a Gaussian KL to N(0, I)); batch statistics would make a latent depend on its batch.
"""

from collections.abc import Sequence
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


class ResBlock(nn.Module):
  """x + conv3x3(gelu(conv3x3(gelu(x)))); a 1x1 projection of x when the width changes."""

  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    conv = lambda k, name: nn.Conv(
      self.features,
      (k, k),
      padding="SAME",
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name=name,
    )
    h_BxHxWxF = conv(3, "conv1")(nn.gelu(x_BxHxWxC))
    h_BxHxWxF = conv(3, "conv2")(nn.gelu(h_BxHxWxF))
    if x_BxHxWxC.shape[-1] != self.features:
      x_BxHxWxC = conv(1, "skip")(x_BxHxWxC)
    return x_BxHxWxC + h_BxHxWxF


def grid_size(image_size: int, patch_size: int, num_stages: int) -> int:
  """Side of the latent grid: image_size / (patch_size * 2 ** (num_stages - 1))."""
  return image_size // (patch_size * 2 ** max(num_stages - 1, 0))


class ConvEncoder(nn.Module):
  """Images [B, H, W, C] -> latents [B, h, w, out_channels] (see the module docstring).

  Attributes:
    widths: channels of each stage; stages after the first halve the grid.
    patch_size: kernel and stride of the stem.
    patch_hidden: hidden width of a per-patch MLP stem (0 = a linear stem).
    blocks_per_stage: residual blocks after each stage's (down)sampling.
    latent_blocks: residual blocks on the latent grid.
    out_channels: channels of the latent grid.
  """

  widths: Sequence[int] = (64,)
  patch_size: int = 4
  patch_hidden: int = 0
  blocks_per_stage: int = 0
  latent_blocks: int = 1
  out_channels: int = 16
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images_BxHxWxC: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    p = self.patch_size
    stem_width = self.patch_hidden or self.widths[0]
    x = nn.Conv(stem_width, (p, p), strides=(p, p), padding="VALID", name="stem", **kw)(
      images_BxHxWxC.astype(self.dtype)
    )
    if self.patch_hidden:
      x = nn.Dense(self.widths[0], name="stem_out", **kw)(nn.gelu(x))
    for i, width in enumerate(self.widths):
      if i > 0:
        x = nn.Conv(width, (3, 3), strides=(2, 2), padding="SAME", name=f"down{i}", **kw)(
          nn.gelu(x)
        )
      for j in range(self.blocks_per_stage):
        x = ResBlock(width, name=f"res{i}_{j}", **kw)(x)
    for j in range(self.latent_blocks):
      x = ResBlock(self.widths[-1], name=f"latent{j}", **kw)(x)
    x = nn.Conv(self.out_channels, (1, 1), name="proj", **kw)(nn.gelu(x))
    return x.astype(jnp.float32)


class ConvDecoder(nn.Module):
  """Latents [B, h, w, D] -> images [B, H, W, out_channels] (linear output), mirroring the encoder.

  Attributes:
    widths, patch_size, patch_hidden, blocks_per_stage, latent_blocks: as the encoder's
      (widths are used in reverse).
    out_channels: image channels.
  """

  widths: Sequence[int] = (64,)
  patch_size: int = 4
  patch_hidden: int = 0
  blocks_per_stage: int = 0
  latent_blocks: int = 1
  out_channels: int = 3
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, latents_BxHxWxD: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    widths = list(self.widths)[::-1]
    x = nn.Conv(widths[0], (1, 1), name="proj", **kw)(latents_BxHxWxD.astype(self.dtype))
    for j in range(self.latent_blocks):
      x = ResBlock(widths[0], name=f"latent{j}", **kw)(x)
    for i, width in enumerate(widths):
      if i > 0:
        b, h, w, c = x.shape
        x = jax.image.resize(nn.gelu(x), (b, 2 * h, 2 * w, c), method="nearest")
        x = nn.Conv(width, (3, 3), padding="SAME", name=f"up{i}", **kw)(x)
      for j in range(self.blocks_per_stage):
        x = ResBlock(width, name=f"res{i}_{j}", **kw)(x)
    p = self.patch_size
    if self.patch_hidden:
      x = nn.Dense(self.patch_hidden, name="patch_hidden", **kw)(nn.gelu(x))
    x = nn.Dense(p * p * self.out_channels, name="to_patches", **kw)(nn.gelu(x))
    x = einops.rearrange(x, "b h w (p q c) -> b (h p) (w q) c", p=p, q=p)
    return x.astype(jnp.float32)
