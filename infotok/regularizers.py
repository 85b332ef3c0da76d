"""The information terms of the tokenizer objective, each a thin wrapper over `shared.mi`.

With X the image, Z the (quantized) tokens and Y the caption:

  vib_rate           KL(q(z|x) || N(0, I)) summed over tokens and channels: an upper bound on
                     I(X; Z) (Alemi et al. 2017, VIB), nats per image.
  hsic_bottleneck    beta_x HSIC(X, Z) - lambda_y HSIC(Z, Y) (the HSIC bottleneck, Ma et al. 2020),
                     biased estimator, Gaussian kernels, median-heuristic bandwidths.
  consistency        InfoNCE(f(Z), g(Y)): a lower bound on I(Z; Y) (van den Oord et al. 2018); the
                     loss is its negative. Raises task relevance.
  clip_loss          symmetric image-text contrastive loss (CLIP), the semantic-alignment term of
                     VILA-U / UniTok style tokenizers.

The caption embedding for HSIC is fixed and parameter-free: the flattened one-hot of the caption's
token ids (`caption_onehot`), so ||y_i - y_j||^2 = 2 x (number of differing tokens) and the
kernel sees which words bind to which object. The kernel is computed from those distances
(`caption_sq_dists`), never from the one-hot itself, which would be L x V floats per caption
(1.6M for GPT-2's vocabulary). The InfoNCE / CLIP terms use a small learned text
encoder (`TextEncoder`, in tokenizer.py) as critic.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from shared import mi


def vib_rate(mu_BxNxD: jax.Array, logvar_BxNxD: jax.Array) -> jax.Array:
  """Per-image KL(N(mu, diag exp(logvar)) || N(0, I)) in nats, summed over tokens and channels."""
  return jnp.sum(mi.gaussian_kl(mu_BxNxD, logvar_BxNxD), axis=-1)


def caption_onehot(ids_BxL: jax.Array, vocab_size: int) -> jax.Array:
  """Flattened one-hot of caption ids: [B, L * V] float32 (the fixed caption embedding Y)."""
  return jax.nn.one_hot(ids_BxL, vocab_size, dtype=jnp.float32).reshape(ids_BxL.shape[0], -1)


def caption_sq_dists(ids_BxL: jax.Array) -> jax.Array:
  """||onehot(y_i) - onehot(y_j)||^2 = 2 x the number of positions where captions differ."""
  return 2.0 * jnp.sum(ids_BxL[:, None, :] != ids_BxL[None, :, :], axis=-1).astype(jnp.float32)


def hsic_bottleneck(
  x_BxF: jax.Array, z_BxF: jax.Array, caption_BxL: jax.Array, beta_x, lambda_y
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """beta_x HSIC(X, Z) - lambda_y HSIC(Z, Y), Y the one-hot caption; returns (term, {'hsic_xz',
  'hsic_zy'})."""
  hsic_xz = mi.hsic(x_BxF, z_BxF)
  hsic_zy = mi.hsic_from_sq_dists(mi.pairwise_sq_dists(z_BxF), caption_sq_dists(caption_BxL))
  return beta_x * hsic_xz - lambda_y * hsic_zy, {"hsic_xz": hsic_xz, "hsic_zy": hsic_zy}


def cosine_scores(a_BxE: jax.Array, b_BxE: jax.Array, log_scale: jax.Array) -> jax.Array:
  """s_ij = exp(log_scale) cos(a_i, b_j): the critic of InfoNCE / CLIP."""
  # sqrt(|a|^2 + eps), not |a| + eps: the gradient of |a| is NaN at a = 0 (FSQ can map a whole
  # image to the all-zero code, and a bias-free head maps that to a zero embedding).
  a = a_BxE * jax.lax.rsqrt(jnp.sum(jnp.square(a_BxE), axis=-1, keepdims=True) + 1e-12)
  b = b_BxE * jax.lax.rsqrt(jnp.sum(jnp.square(b_BxE), axis=-1, keepdims=True) + 1e-12)
  return jnp.exp(log_scale) * (a @ b.T)


def consistency(scores_BxB: jax.Array) -> jax.Array:
  """I_NCE(Z; Y) from image-to-caption scores (positives on the diagonal), nats."""
  return mi.infonce(scores_BxB)


def clip_loss(scores_BxB: jax.Array) -> jax.Array:
  """Symmetric contrastive loss: -(I_NCE(rows) + I_NCE(columns)) / 2 + log B (CLIP's loss)."""
  n = scores_BxB.shape[0]
  return jnp.log(n) - 0.5 * (mi.infonce(scores_BxB) + mi.infonce(scores_BxB.T))
