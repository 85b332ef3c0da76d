"""Vision Transformer and the Masked Autoencoder built on it.

ViT: Dosovitskiy et al. 2021 (arXiv 2010.11929); MAE: He et al. 2022 (arXiv 2111.06377), following
facebookresearch/mae `models_mae.py` for the details: conv patch embedding, fixed 2-D sin-cos
position embeddings (`get_2d_sincos_pos_embed`), optional cls token, pre-norm blocks with
LayerNorm eps 1e-6, per-sample random masking (`shared.masks.random_masking`), an encoder that
runs on the visible tokens only, a light decoder with mask tokens and its own sin-cos embedding,
and the loss on masked patches with normalised-pixel targets.

The encoder is one module (`ViTEncoder`), named "encoder" in both `MAE` and `ViTClassifier`, so a
fine-tune copies the pre-trained subtree with `init_classifier_from_mae`.
"""

import math
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import unfreeze

from shared.errors import ConfigError
from shared.masks import random_masking
from shared.models.transformer import block_class

Dtype = Any

# name -> (width, depth, num_heads); mlp ratio 4 throughout (ViT paper Table 1; DeiT for Ti/S).
VIT_SIZES: dict[str, tuple[int, int, int]] = {
  "mu": (32, 2, 2),  # tests only
  "Ti": (192, 12, 3),
  "S": (384, 12, 6),
  "B": (768, 12, 12),
  "L": (1024, 24, 16),
  "H": (1280, 32, 16),
}

_dense_init = nn.initializers.xavier_uniform()
_token_init = nn.initializers.normal(stddev=0.02)


def vit_size(
  name: str, width: int | None = None, depth: int | None = None, num_heads: int | None = None
) -> tuple[int, int, int]:
  """(width, depth, num_heads) for a size name, each optionally overridden."""
  if name not in VIT_SIZES:
    raise ConfigError(f"unknown ViT size {name!r}; known: {', '.join(VIT_SIZES)}")
  w, d, h = VIT_SIZES[name]
  w, d, h = width or w, depth or d, num_heads or h
  if w % h:
    raise ConfigError(f"ViT width {w} is not divisible by num_heads {h}")
  return w, d, h


# ------------------------------------------------------------------------------------------------
# Fixed 2-D sin-cos position embeddings.


def sincos_1d(embed_dim: int, pos: np.ndarray) -> np.ndarray:
  """1-D sin-cos embedding [M, embed_dim] of positions [M]: [sin(pos*w_k), cos(pos*w_k)],
  w_k = 1 / 10000^(k / (embed_dim/2)), k = 0 .. embed_dim/2 - 1 (Vaswani et al. 2017)."""
  if embed_dim % 2:
    raise ConfigError(f"sin-cos embedding dim must be even, got {embed_dim}")
  omega_K = 1.0 / 10000 ** (np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2))
  out_MxK = np.asarray(pos, np.float64).reshape(-1)[:, None] * omega_K[None, :]
  return np.concatenate([np.sin(out_MxK), np.cos(out_MxK)], axis=1)


def sincos_2d(embed_dim: int, grid_size: int | tuple[int, int], cls_token: bool = False):
  """2-D sin-cos position embedding [(1 +) gh*gw, embed_dim], float32, row-major tokens.

  Same values as MAE's `get_2d_sincos_pos_embed`: the first half of the channels encodes the
  column (w) index, the second half the row (h) index; with `cls_token` a zero row comes first.
  """
  if embed_dim % 4:
    raise ConfigError(f"2-D sin-cos embedding dim must be divisible by 4, got {embed_dim}")
  gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
  rows_HxW, cols_HxW = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
  emb_NxD = np.concatenate(
    [sincos_1d(embed_dim // 2, cols_HxW), sincos_1d(embed_dim // 2, rows_HxW)], axis=1
  )
  if cls_token:
    emb_NxD = np.concatenate([np.zeros((1, embed_dim)), emb_NxD], axis=0)
  return emb_NxD.astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Patches and the MAE loss.


def patchify(images_BxHxWxC: jax.Array, patch_size: int) -> jax.Array:
  """Images -> patches_BxNxP, N = (H/p)(W/p) row-major, P = p*p*C ordered (row, col, channel),
  as MAE's `patchify` (for NCHW there) does."""
  _, h, w, _ = images_BxHxWxC.shape
  if h % patch_size or w % patch_size:
    raise ConfigError(f"image size {h}x{w} is not divisible by patch size {patch_size}")
  return einops.rearrange(
    images_BxHxWxC, "b (h p) (w q) c -> b (h w) (p q c)", p=patch_size, q=patch_size
  )


def unpatchify(
  patches_BxNxP: jax.Array, patch_size: int, grid_hw: tuple[int, int] | None = None
) -> jax.Array:
  """Inverse of `patchify`. `grid_hw` defaults to a square grid."""
  n, dim = patches_BxNxP.shape[1:]
  if grid_hw is None:
    side = math.isqrt(n)
    if side * side != n:
      raise ConfigError(f"{n} patches do not form a square grid; pass grid_hw")
    grid_hw = (side, side)
  channels = dim // (patch_size * patch_size)
  return einops.rearrange(
    patches_BxNxP,
    "b (h w) (p q c) -> b (h p) (w q) c",
    h=grid_hw[0],
    w=grid_hw[1],
    p=patch_size,
    q=patch_size,
    c=channels,
  )


def mae_loss(pred_BxNxP, target_BxNxP, mask_BxN, norm_pix: bool = True) -> jax.Array:
  """MAE reconstruction loss (models_mae.py `forward_loss`), a scalar in float32.

  L = sum_n m_n * mean_p (pred_np - t_np)^2 / sum_n m_n, with m = 1 on masked patches and, with
  `norm_pix`, t = (x - mean(x)) / sqrt(var(x) + 1e-6) per patch.

  Args:
    pred_BxNxP: predicted patch pixels.
    target_BxNxP: `patchify(images)`.
    mask_BxN: 1 = masked (counted), 0 = visible (ignored).
    norm_pix: normalise each target patch by its own mean and variance.
  """
  target_BxNxP = target_BxNxP.astype(jnp.float32)
  if norm_pix:
    mean_BxNx1 = target_BxNxP.mean(axis=-1, keepdims=True)
    var_BxNx1 = target_BxNxP.var(axis=-1, keepdims=True)
    target_BxNxP = (target_BxNxP - mean_BxNx1) / jnp.sqrt(var_BxNx1 + 1e-6)
  per_patch_BxN = jnp.mean((pred_BxNxP.astype(jnp.float32) - target_BxNxP) ** 2, axis=-1)
  mask_BxN = mask_BxN.astype(jnp.float32)
  return jnp.sum(per_patch_BxN * mask_BxN) / jnp.maximum(jnp.sum(mask_BxN), 1.0)


def masking_from_ids_keep(ids_keep_BxK: jax.Array, n_tokens: int):
  """(mask_BxN, ids_restore_BxN) consistent with given visible indices (masked ones go after)."""
  batch = ids_keep_BxK.shape[0]
  mask_BxN = jnp.ones((batch, n_tokens), jnp.float32)
  mask_BxN = mask_BxN.at[jnp.arange(batch)[:, None], ids_keep_BxK].set(0.0)
  # Stable argsort puts visible (0) before masked (1); keep the masked part in index order.
  ids_masked_BxM = jnp.argsort(mask_BxN, axis=-1, stable=True)[:, ids_keep_BxK.shape[1] :]
  ids_shuffle_BxN = jnp.concatenate([ids_keep_BxK, ids_masked_BxM], axis=1)
  return mask_BxN, jnp.argsort(ids_shuffle_BxN, axis=-1)


# ------------------------------------------------------------------------------------------------
# Modules.


class ViTEncoder(nn.Module):
  """ViT encoder: patch embed + fixed sin-cos pos-embed (+ cls), pre-norm blocks, final norm.

  Attributes:
    size: 'mu', 'Ti', 'S', 'B', 'L' or 'H'; `width`, `depth`, `num_heads` override it.
    patch_size: p; the conv patch embedding has kernel = stride = p.
    use_cls_token: prepend a learned cls token (MAE does).
    dtype: compute dtype (bf16 on accelerators); params are `param_dtype` (f32).
    remat: rematerialise each block in the backward pass.
  """

  size: str = "B"
  patch_size: int = 16
  width: int | None = None
  depth: int | None = None
  num_heads: int | None = None
  mlp_ratio: float = 4.0
  use_cls_token: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: bool = False
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, images_BxHxWxC, ids_keep_BxK=None):
    """Encode all patches, or only the visible ones `ids_keep_BxK` (indices into the N patches).

    Returns:
      tokens_BxTxD after the final LayerNorm, T = (1 if cls) + (K or N); cls first.
    """
    width, depth, num_heads = vit_size(self.size, self.width, self.depth, self.num_heads)
    _, h, w, _ = images_BxHxWxC.shape
    p = self.patch_size
    if h % p or w % p:
      raise ConfigError(f"image size {h}x{w} is not divisible by patch size {p}")
    x_BxHxWxD = nn.Conv(
      width,
      (p, p),
      strides=(p, p),
      padding="VALID",
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      # MAE initialises the patch projection like a Linear over the flattened patch.
      kernel_init=nn.initializers.xavier_uniform(in_axis=(0, 1, 2), out_axis=-1),
      name="patch_embed",
    )(images_BxHxWxC.astype(self.dtype))
    x_BxNxD = einops.rearrange(x_BxHxWxD, "b h w d -> b (h w) d")
    pos_NxD = jnp.asarray(sincos_2d(width, (h // p, w // p)), self.dtype)
    x_BxNxD = x_BxNxD + pos_NxD[None]
    if ids_keep_BxK is not None:
      x_BxNxD = jnp.take_along_axis(x_BxNxD, ids_keep_BxK[:, :, None], axis=1)
    if self.use_cls_token:
      # The cls position embedding is zero in MAE, so the cls token is added as is.
      cls_1x1xD = self.param("cls_token", _token_init, (1, 1, width), self.param_dtype)
      cls_Bx1xD = jnp.broadcast_to(cls_1x1xD.astype(self.dtype), (x_BxNxD.shape[0], 1, width))
      x_BxNxD = jnp.concatenate([cls_Bx1xD, x_BxNxD], axis=1)
    block = block_class(self.remat)
    for i in range(depth):
      x_BxNxD = block(
        num_heads,
        mlp_ratio=self.mlp_ratio,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        attention_impl=self.attention_impl,
        name=f"block_{i}",
      )(x_BxNxD, None, False, True)
    return nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(
      x_BxNxD
    )


class MAEDecoder(nn.Module):
  """MAE decoder: embed encoder tokens, insert mask tokens, sin-cos pos-embed, blocks, predict.

  Attributes:
    width, depth, num_heads: decoder size (MAE ViT-B recipe: 512, 8, 16).
  """

  width: int = 512
  depth: int = 8
  num_heads: int = 16
  mlp_ratio: float = 4.0
  use_cls_token: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: bool = False
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, tokens_BxTxE, ids_restore_BxN, grid_hw: tuple[int, int], patch_dim: int):
    """Predicted pixels pred_BxNxP (P = `patch_dim` = p*p*C, float32), original patch order."""
    if self.width % self.num_heads:
      raise ConfigError(f"decoder width {self.width} is not divisible by {self.num_heads} heads")
    batch, n = ids_restore_BxN.shape
    x_BxTxD = nn.Dense(
      self.width,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=_dense_init,
      name="embed",
    )(tokens_BxTxE)
    n_cls = int(self.use_cls_token)
    cls_Bx1xD, x_BxKxD = x_BxTxD[:, :n_cls], x_BxTxD[:, n_cls:]
    mask_token = self.param("mask_token", _token_init, (1, 1, self.width), self.param_dtype)
    masked_BxMxD = jnp.broadcast_to(
      mask_token.astype(self.dtype), (batch, n - x_BxKxD.shape[1], self.width)
    )
    x_BxNxD = jnp.concatenate([x_BxKxD, masked_BxMxD], axis=1)
    x_BxNxD = jnp.take_along_axis(x_BxNxD, ids_restore_BxN[:, :, None], axis=1)  # unshuffle
    x_BxNxD = x_BxNxD + jnp.asarray(sincos_2d(self.width, grid_hw), self.dtype)[None]
    x_BxNxD = jnp.concatenate([cls_Bx1xD, x_BxNxD], axis=1)
    block = block_class(self.remat)
    for i in range(self.depth):
      x_BxNxD = block(
        self.num_heads,
        mlp_ratio=self.mlp_ratio,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        attention_impl=self.attention_impl,
        name=f"block_{i}",
      )(x_BxNxD, None, False, True)
    x_BxNxD = nn.LayerNorm(
      epsilon=1e-6, dtype=self.dtype, param_dtype=self.param_dtype, name="norm"
    )(x_BxNxD)
    pred_BxNxP = nn.Dense(
      patch_dim,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=_dense_init,
      name="pred",
    )(x_BxNxD[:, n_cls:])
    return pred_BxNxP.astype(jnp.float32)


class MAE(nn.Module):
  """Masked autoencoder (He et al. 2022): random masking, encoder on visible, light decoder.

  `__call__(images, key)` masks with `shared.masks.random_masking(key, N, mask_ratio, B)`;
  `__call__(images, ids_keep=...)` uses given visible indices instead.

  Returns (pred_BxNxP, mask_BxN, pooled_BxD):
    pred: decoder pixel predictions for every patch (compare to `patchify(images)`, `mae_loss`);
    mask: 1 = masked, 0 = visible;
    pooled: mean of the encoder's visible patch tokens after the final norm (cls excluded), the
      input of a SupCon projection head (MCAE).
  """

  size: str = "B"
  patch_size: int = 16
  width: int | None = None
  depth: int | None = None
  num_heads: int | None = None
  mlp_ratio: float = 4.0
  use_cls_token: bool = True
  mask_ratio: float = 0.75
  decoder_width: int = 512
  decoder_depth: int = 8
  decoder_num_heads: int = 16
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: bool = False
  attention_impl: str | None = None

  def setup(self):
    self.encoder = ViTEncoder(
      size=self.size,
      patch_size=self.patch_size,
      width=self.width,
      depth=self.depth,
      num_heads=self.num_heads,
      mlp_ratio=self.mlp_ratio,
      use_cls_token=self.use_cls_token,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      remat=self.remat,
      attention_impl=self.attention_impl,
    )
    self.decoder = MAEDecoder(
      width=self.decoder_width,
      depth=self.decoder_depth,
      num_heads=self.decoder_num_heads,
      mlp_ratio=self.mlp_ratio,
      use_cls_token=self.use_cls_token,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      remat=self.remat,
      attention_impl=self.attention_impl,
    )

  def __call__(self, images_BxHxWxC, key=None, *, ids_keep=None):
    batch, h, w, c = images_BxHxWxC.shape
    p = self.patch_size
    grid_hw = (h // p, w // p)
    n = grid_hw[0] * grid_hw[1]
    if ids_keep is not None:
      mask_BxN, ids_restore_BxN = masking_from_ids_keep(ids_keep, n)
      ids_keep_BxK = ids_keep
    elif key is not None:
      if not 0.0 <= self.mask_ratio < 1.0:
        raise ConfigError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
      ids_keep_BxK, mask_BxN, ids_restore_BxN = random_masking(key, n, self.mask_ratio, batch)
    else:
      raise ValueError("MAE needs a masking key or ids_keep")
    tokens_BxTxD = self.encoder(images_BxHxWxC, ids_keep_BxK)
    pooled_BxD = tokens_BxTxD[:, int(self.use_cls_token) :].astype(jnp.float32).mean(axis=1)
    pred_BxNxP = self.decoder(tokens_BxTxD, ids_restore_BxN, grid_hw, p * p * c)
    return pred_BxNxP, mask_BxN.astype(jnp.float32), pooled_BxD

  def encode(self, images_BxHxWxC):
    """Encoder tokens for the unmasked image, tokens_BxTxD (cls first when used)."""
    return self.encoder(images_BxHxWxC)


class ViTClassifier(nn.Module):
  """ViT on all patches, pooled ('mean' over patch tokens, or 'cls'), then a linear head.

  The encoder submodule is named "encoder", as in `MAE`, so `init_classifier_from_mae` can copy
  a pre-trained encoder. The head starts at zero (big_vision), so the first logits are uniform.

  `__call__(images, train=False)` returns logits_BxK in float32; with `num_classes=None` it returns
  the pooled features_BxD instead.
  """

  num_classes: int | None
  size: str = "B"
  patch_size: int = 16
  width: int | None = None
  depth: int | None = None
  num_heads: int | None = None
  mlp_ratio: float = 4.0
  use_cls_token: bool = True
  pool: str = "mean"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: bool = False
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, images_BxHxWxC, train: bool = False):
    del train  # no dropout or batch statistics; kept for a uniform model signature
    if self.pool not in ("mean", "cls"):
      raise ConfigError(f"unknown pool {self.pool!r}; use 'mean' or 'cls'")
    if self.pool == "cls" and not self.use_cls_token:
      raise ConfigError("pool='cls' needs use_cls_token=True")
    tokens_BxTxD = ViTEncoder(
      size=self.size,
      patch_size=self.patch_size,
      width=self.width,
      depth=self.depth,
      num_heads=self.num_heads,
      mlp_ratio=self.mlp_ratio,
      use_cls_token=self.use_cls_token,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      remat=self.remat,
      attention_impl=self.attention_impl,
      name="encoder",
    )(images_BxHxWxC)
    if self.pool == "cls":
      features_BxD = tokens_BxTxD[:, 0]
    else:
      features_BxD = tokens_BxTxD[:, int(self.use_cls_token) :].mean(axis=1)
    if self.num_classes is None:
      return features_BxD.astype(jnp.float32)
    logits_BxK = nn.Dense(
      self.num_classes,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=nn.initializers.zeros,
      name="head",
    )(features_BxD)
    return logits_BxK.astype(jnp.float32)


def init_classifier_from_mae(classifier_params, mae_params):
  """Classifier params with the "encoder" subtree replaced by the MAE's encoder.

  Both arguments are `params` collections (or variables dicts holding "params"). Shapes must
  match (same size, patch size and cls-token setting); a mismatch is a ConfigError.
  """
  cls_p = unfreeze(classifier_params)
  mae_p = unfreeze(mae_params)
  wrapped = "params" in cls_p
  cls_tree = cls_p["params"] if wrapped else cls_p
  mae_tree = mae_p.get("params", mae_p)
  if "encoder" not in cls_tree or "encoder" not in mae_tree:
    raise ConfigError("both parameter trees need an 'encoder' subtree")
  want = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), cls_tree["encoder"])
  have = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), mae_tree["encoder"])
  if want != have:
    raise ConfigError(
      "MAE encoder does not match the classifier's encoder (size, patch size or cls token differ)"
    )
  new_tree = dict(cls_tree, encoder=mae_tree["encoder"])
  return dict(cls_p, params=new_tree) if wrapped else new_tree
