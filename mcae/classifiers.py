"""Supervised live/spoof training: fine-tuning a pre-trained ViT, or ERM from scratch.

Both classifiers output two logits (0 = spoof, 1 = live); the liveness score is
logit_live - logit_spoof (higher = more live), the convention of `shared.metrics.fas_metrics`.
Which layers train is a config choice (`train_blocks`): -1 all; k >= 0 the head, the encoder's
final norm and its last k blocks (0 = a linear probe).
The Python API's `mcae.finetune(encoder, images, labels, ...)` (`mcae.api`) trains them.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mcae.augment import augment
from mcae.pretrain_loss import vit_kwargs
from shared.data.convert import to_float
from shared.errors import ConfigError
from shared.models.resnet import ResNet18
from shared.models.vit import ViTClassifier, vit_size

NUM_CLASSES = 2  # 0 spoof, 1 live


def vit_classifier(model_cfg, dtype) -> ViTClassifier:
  return ViTClassifier(num_classes=NUM_CLASSES, pool=model_cfg.pool, **vit_kwargs(model_cfg, dtype))


def resnet18(width: int, dtype) -> ResNet18:
  return ResNet18(num_classes=NUM_CLASSES, width=width, dtype=dtype)


def num_params(params) -> int:
  """Parameter count of a params tree (what the tables print beside each method)."""
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def uses_batch_stats(model: nn.Module) -> bool:
  return isinstance(model, ResNet18)


def init_params(model: nn.Module, image_shape):
  """`key -> (params, model_state)` for `shared.train_lib.init_state`."""

  def init(key):
    variables = model.init(key, jnp.zeros((2, *image_shape), jnp.float32), train=False)
    params = variables.pop("params")
    return params, dict(variables)

  return init


def trainable_labels(params, train_blocks: int, depth: int):
  """'train' / 'freeze' per leaf of ViTClassifier params, for `optax.multi_transform`."""
  if train_blocks < 0:
    return jax.tree.map(lambda _: "train", params)
  if train_blocks > depth:
    raise ConfigError(f"finetune.train_blocks={train_blocks} exceeds the encoder's {depth} blocks")
  trained = {f"block_{i}" for i in range(depth - train_blocks, depth)} | {"norm"}

  def label(path, _):
    keys = [getattr(k, "key", str(k)) for k in path]
    if keys[0] != "encoder":
      return "train"  # the head
    return "train" if keys[1] in trained else "freeze"

  return jax.tree_util.tree_map_with_path(label, params)


def optimizer(tx: optax.GradientTransformation, model_cfg, train_blocks: int):
  """`tx` on the trained leaves, zero updates (no decay either) on the frozen ones."""
  if train_blocks < 0:
    return tx
  depth = vit_size(model_cfg.size, model_cfg.width, model_cfg.depth, model_cfg.num_heads)[1]
  return optax.multi_transform(
    {"train": tx, "freeze": optax.set_to_zero()},
    lambda params: trainable_labels(params, train_blocks, depth),
  )


def make_loss(model: nn.Module, ft_cfg):
  """Cross-entropy on augmented images `(params, model_state, batch, rng) -> (loss, aux)`."""
  batch_stats = uses_batch_stats(model)

  def loss_fn(params, model_state, batch, rng):
    x = augment(rng, to_float(batch["image"]), flip=ft_cfg.flip, pad=ft_cfg.pad)
    if batch_stats:
      logits_BxK, new_state = model.apply(
        {"params": params, **model_state}, x, train=True, mutable=["batch_stats"]
      )
      model_state = dict(new_state)
    else:
      logits_BxK = model.apply({"params": params}, x, train=True)
    targets_BxK = optax.smooth_labels(
      jax.nn.one_hot(batch["label"], NUM_CLASSES), ft_cfg.label_smoothing
    )
    loss = optax.softmax_cross_entropy(logits_BxK, targets_BxK).mean()
    accuracy = (logits_BxK.argmax(-1) == batch["label"]).mean()
    return loss, ({"accuracy": accuracy}, model_state)

  return loss_fn


def make_score(model: nn.Module):
  """`(params, model_state, images) -> liveness scores_B` (logit live - logit spoof)."""

  def score(params, model_state, images_BxHxWxC):
    x = to_float(images_BxHxWxC)  # uint8 until here
    logits_BxK = model.apply({"params": params, **model_state}, x, train=False)
    return logits_BxK[:, 1] - logits_BxK[:, 0]

  return score
