"""SimCLR (Chen et al. 2020): an encoder, a projection head, and the NT-Xent loss.

Used twice: as TUE's surrogate (the contrastive term of the min-min) and as a victim (trained from
scratch on protected data, then a linear probe).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class SimCLR(nn.Module):
  """encoder (features_BxF) -> MLP projection head (Linear-ReLU-Linear) -> z_BxP.

  Attributes:
    encoder: a classifier built with num_classes=None, so it returns pooled features.
    proj_hidden, proj_dim: head sizes (SimCLR CIFAR: 512 -> 128).
  """

  encoder: Any
  proj_hidden: int = 512
  proj_dim: int = 128

  @nn.compact
  def __call__(self, images_BxHxWxC, train: bool = False, features_only: bool = False):
    h_BxF = self.encoder(images_BxHxWxC, train=train)
    if features_only:
      return h_BxF
    z_BxH = nn.relu(nn.Dense(self.proj_hidden, name="proj1")(h_BxF))
    return nn.Dense(self.proj_dim, name="proj2")(z_BxH)


def nt_xent(z1_BxP: jax.Array, z2_BxP: jax.Array, temperature: float = 0.5) -> jax.Array:
  """NT-Xent over 2B views: view i's positive is its pair, the other 2B - 2 views are negatives.

  L = mean_i -log( exp(s(i, p(i)) / t) / sum_{k != i} exp(s(i, k) / t) ), s = cosine similarity.
  """
  b = z1_BxP.shape[0]
  z_2BxP = jnp.concatenate([z1_BxP, z2_BxP], 0).astype(jnp.float32)
  z_2BxP = z_2BxP / jnp.maximum(jnp.linalg.norm(z_2BxP, axis=-1, keepdims=True), 1e-8)
  logits = z_2BxP @ z_2BxP.T / temperature
  logits = jnp.where(jnp.eye(2 * b, dtype=bool), -jnp.inf, logits)
  positive = jnp.concatenate([jnp.arange(b, 2 * b), jnp.arange(b)])
  log_prob = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.mean(log_prob[jnp.arange(2 * b), positive])
