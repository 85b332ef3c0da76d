"""MCAE pre-training: MAE reconstruction + lambda * SupCon on the pooled visible tokens.

One loss covers the three pre-trained methods of the comparison, by its weights:
  MCAE        mae_weight 1, supcon_weight lambda  (MAE encoder/decoder + projection head)
  MAE -> FT   mae_weight 1, supcon_weight 0       (facebookresearch/mae)
  SupCon -> FT mae_weight 0, supcon_weight 1      (Khosla et al.; no decoder; masking optional)

Params are {"backbone": ..., "projection": ...}; the backbone always has an "encoder" subtree, so
`shared.models.vit.init_classifier_from_mae(classifier_params, params["backbone"])` fine-tunes it.
The Python API's `mcae.pretrain(images, labels, domains, ...)` (`mcae.api`) trains with it.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mcae.augment import augment
from mcae.supcon import positive_groups, supcon_loss
from shared.data.convert import to_float
from shared.errors import ConfigError
from shared.masks import random_masking
from shared.models.vit import MAE, ViTEncoder, mae_loss, patchify, vit_size


def vit_kwargs(model_cfg, dtype) -> dict:
  """The ViT encoder fields shared by the pre-training backbones and the classifier."""
  return dict(
    size=model_cfg.size,
    patch_size=model_cfg.patch_size,
    width=model_cfg.width or None,
    depth=model_cfg.depth or None,
    num_heads=model_cfg.num_heads or None,
    use_cls_token=model_cfg.use_cls_token,
    dtype=dtype,
    attention_impl=attention_impl(model_cfg.get("attention_impl", ""), dtype),
  )


def attention_impl(name: str, dtype) -> str | None:
  """The `jax.nn.dot_product_attention` implementation: "auto" = cuDNN's fused attention on NVIDIA
  GPUs in half precision (measured on an H200: MAE ViT-B/16 3,258 -> 4,382 img/s), XLA's
  elsewhere; "" = XLA's; "cudnn" = cuDNN's (an error where it is unavailable)."""
  if name == "auto":
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return "cudnn" if half and jax.default_backend() == "gpu" else None
  if name not in ("", "cudnn", "xla"):
    raise ConfigError(f"model.attention_impl must be auto, cudnn, xla or '', not {name!r}")
  return name or None


class ProjectionHead(nn.Module):
  """SupCon's 'mlp' head (HobbitLong/SupContrast): Dense(hidden) -> ReLU -> Dense(out)."""

  hidden: int
  out: int

  @nn.compact
  def __call__(self, x_BxD):
    h_BxH = nn.relu(nn.Dense(self.hidden, name="hidden")(x_BxD.astype(jnp.float32)))
    return nn.Dense(self.out, name="out")(h_BxH)


class MaskedEncoder(nn.Module):
  """The ViT encoder on a random subset of patches (or all), mean-pooled: SupCon's backbone.

  Same "encoder" submodule name as `MAE`, so either backbone fine-tunes the same way.
  """

  encoder_kwargs: dict
  mask_ratio: float = 0.0

  @nn.compact
  def __call__(self, images_BxHxWxC, key):
    encoder = ViTEncoder(**self.encoder_kwargs, name="encoder")
    b, h, w, _ = images_BxHxWxC.shape
    p = self.encoder_kwargs["patch_size"]
    ids_keep_BxK = None
    if self.mask_ratio > 0:
      ids_keep_BxK, _, _ = random_masking(key, (h // p) * (w // p), self.mask_ratio, b)
    tokens_BxTxD = encoder(images_BxHxWxC, ids_keep_BxK)
    cls = int(self.encoder_kwargs["use_cls_token"])
    return tokens_BxTxD[:, cls:].astype(jnp.float32).mean(axis=1)


def backbone(model_cfg, pre_cfg, dtype) -> nn.Module:
  """MAE (with decoder) when the MAE term is on, else the masked encoder alone."""
  kwargs = vit_kwargs(model_cfg, dtype)
  if pre_cfg.mae_weight > 0:
    return MAE(
      **kwargs,
      mask_ratio=pre_cfg.mask_ratio,
      decoder_width=model_cfg.decoder_width,
      decoder_depth=pre_cfg.decoder_depth,
      decoder_num_heads=model_cfg.decoder_num_heads,
    )
  return MaskedEncoder(kwargs, mask_ratio=pre_cfg.mask_ratio)


def projection(model_cfg) -> ProjectionHead:
  return ProjectionHead(model_cfg.proj_hidden, model_cfg.proj_dim)


def init_params(model_cfg, pre_cfg, dtype, image_shape):
  """`key -> (params, {})` for `shared.train_lib.init_state`."""
  net, head = backbone(model_cfg, pre_cfg, dtype), projection(model_cfg)

  def init(key):
    k_net, k_head, k_mask = jax.random.split(key, 3)
    x = jnp.zeros((2, *image_shape), jnp.float32)
    params = {"backbone": net.init(k_net, x, k_mask)["params"]}
    if pre_cfg.supcon_weight > 0:
      width = vit_size(model_cfg.size, model_cfg.width, model_cfg.depth, model_cfg.num_heads)[0]
      params["projection"] = head.init(k_head, jnp.zeros((2, width), jnp.float32))["params"]
    return params, {}

  return init


def make_loss(model_cfg, pre_cfg, dtype, *, num_domains: int, num_attacks: int):
  """The pre-training loss `(params, model_state, batch, rng) -> (loss, (metrics, model_state))`.

    L = mae_weight * L_MAE + supcon_weight * L_SupCon,

  over `pre_cfg.views` augmented views of the batch, each with its own random mask; L_MAE is the
  masked-patch MSE (normalised-pixel targets) averaged over views, L_SupCon is taken over all
  views together, positives from `positive_groups` (two views of a sample are always positives).
  """
  net, head = backbone(model_cfg, pre_cfg, dtype), projection(model_cfg)
  use_mae, use_supcon = pre_cfg.mae_weight > 0, pre_cfg.supcon_weight > 0
  p = model_cfg.patch_size

  def loss_fn(params, model_state, batch, rng):
    k_aug, k_mask = jax.random.split(rng)
    images_BxHxWxC = to_float(batch["image"])  # uint8 until here
    views = [
      augment(jax.random.fold_in(k_aug, v), images_BxHxWxC, flip=pre_cfg.flip, pad=pre_cfg.pad)
      for v in range(pre_cfg.views)
    ]
    x_NxHxWxC = jnp.concatenate(views, axis=0)  # N = views * B, view-major
    metrics = {}
    loss = jnp.zeros((), jnp.float32)
    if use_mae:
      pred_NxLxP, mask_NxL, pooled_NxD = net.apply(
        {"params": params["backbone"]}, x_NxHxWxC, k_mask
      )
      l_mae = mae_loss(pred_NxLxP, patchify(x_NxHxWxC, p), mask_NxL, norm_pix=pre_cfg.norm_pix)
      loss += pre_cfg.mae_weight * l_mae
      metrics["mae_loss"] = l_mae
    else:
      pooled_NxD = net.apply({"params": params["backbone"]}, x_NxHxWxC, k_mask)
    if use_supcon:
      z_NxE = head.apply({"params": params["projection"]}, pooled_NxD)
      groups_B = positive_groups(
        batch["label"],
        batch["domain"],
        batch["attack"],
        live=pre_cfg.live_positives,
        spoof=pre_cfg.spoof_positives,
        num_domains=num_domains,
        num_attacks=num_attacks,
      )
      groups_N = jnp.tile(groups_B, pre_cfg.views)
      l_supcon = supcon_loss(z_NxE, groups_N, pre_cfg.temperature)
      loss += pre_cfg.supcon_weight * l_supcon
      metrics["supcon_loss"] = l_supcon
    return loss, (metrics, model_state)

  return loss_fn
