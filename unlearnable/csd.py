"""Class-wise separability discriminant (CSD) and a class-conditional MMD, both differentiable.

CSD is the Davies-Bouldin-like score TUE (Ren et al., ICLR 2023, eq. 4) minimises on the
perturbations: with c_k the mean of class k's points, sigma_k their mean distance to c_k and
d_ij = ||c_i - c_j||,

    CSD = 1 / (M (M - 1)) * sum_{i != j} (sigma_i + sigma_j + e) / (d_ij + e)

over the M classes present in the batch (e = 1e-5 as in the released code). Lower = more separable.
The released code builds sigma with `torch.tensor(list_of_sigmas)`, which detaches it, so its
gradient only pushes class centres apart; here sigma is part of the graph, so minimising CSD also
pulls each class together (`detach_spread=True` reproduces the released behaviour for comparison).
Absent classes are masked, so the function has a fixed shape under jit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

EPS = 1e-5  # Added to numerator and denominator, as in the released TUE code.
_TINY = 1e-12  # Keeps sqrt differentiable where a distance is exactly zero.


def _as_float(x):
  """Flattened to [N, D], at least float32 (float64 kept, for gradient checks)."""
  x = jnp.asarray(x)
  return x.reshape(x.shape[0], -1).astype(jnp.promote_types(x.dtype, jnp.float32))


def _safe_norm(x, axis=-1):
  return jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=axis), _TINY))


def class_stats(x_NxD: jax.Array, labels_N: jax.Array, num_classes: int):
  """Class centres c_KxD, spreads sigma_K (mean distance to the centre) and a presence mask_K."""
  onehot_NxK = jax.nn.one_hot(labels_N, num_classes, dtype=x_NxD.dtype)
  count_K = onehot_NxK.sum(0)
  centre_KxD = (onehot_NxK.T @ x_NxD) / jnp.maximum(count_K, 1.0)[:, None]
  dist_N = _safe_norm(x_NxD - centre_KxD[labels_N])
  sigma_K = (onehot_NxK.T @ dist_N) / jnp.maximum(count_K, 1.0)
  return centre_KxD, sigma_K, count_K > 0


def csd(
  x_NxD: jax.Array, labels_N: jax.Array, num_classes: int, *, detach_spread: bool = False
) -> jax.Array:
  """CSD of points x_NxD (flatten images first) with integer labels; 0 with fewer than 2 classes.

  Args:
    x_NxD: points, e.g. perturbations flattened to [N, H*W*C] or features.
    labels_N: int labels in [0, num_classes).
    num_classes: K, static.
    detach_spread: stop the gradient through sigma (the released TUE code's behaviour).
  """
  x_NxD = _as_float(x_NxD)
  centre_KxD, sigma_K, present_K = class_stats(x_NxD, labels_N, num_classes)
  if detach_spread:
    sigma_K = jax.lax.stop_gradient(sigma_K)
  d_KxK = _safe_norm(centre_KxD[:, None, :] - centre_KxD[None, :, :])
  pair_KxK = present_K[:, None] & present_K[None, :] & ~jnp.eye(num_classes, dtype=bool)
  ratio_KxK = (sigma_K[:, None] + sigma_K[None, :] + EPS) / (d_KxK + EPS)
  n_pairs = pair_KxK.sum()
  return jnp.where(
    n_pairs > 0, jnp.sum(jnp.where(pair_KxK, ratio_KxK, 0.0)) / jnp.maximum(n_pairs, 1), 0.0
  )


def class_mmd(x_NxD: jax.Array, labels_N: jax.Array, num_classes: int) -> jax.Array:
  """Mean squared MMD between the class-conditional distributions of x (Gaussian kernel).

  The bandwidth is the median pairwise distance of the batch (stop-gradient), which makes the score
  invariant to a global rescaling of x: it can only grow by moving classes apart relative to the
  batch's own spread. Biased (V-statistic) estimator; higher = more separable.
  """
  x_NxD = _as_float(x_NxD)
  sq_NxN = jnp.maximum(
    jnp.sum(x_NxD**2, 1)[:, None] + jnp.sum(x_NxD**2, 1)[None, :] - 2.0 * x_NxD @ x_NxD.T, 0.0
  )
  bandwidth = jax.lax.stop_gradient(jnp.maximum(jnp.median(sq_NxN), _TINY))
  k_NxN = jnp.exp(-sq_NxN / bandwidth)
  onehot_NxK = jax.nn.one_hot(labels_N, num_classes, dtype=x_NxD.dtype)
  count_K = onehot_NxK.sum(0)
  w_NxK = onehot_NxK / jnp.maximum(count_K, 1.0)
  mean_k_KxK = w_NxK.T @ k_NxN @ w_NxK  # <mu_i, mu_j> in the kernel's feature space.
  diag_K = jnp.diag(mean_k_KxK)
  mmd2_KxK = diag_K[:, None] + diag_K[None, :] - 2.0 * mean_k_KxK
  present_K = count_K > 0
  pair_KxK = present_K[:, None] & present_K[None, :] & ~jnp.eye(num_classes, dtype=bool)
  return jnp.sum(jnp.where(pair_KxK, mmd2_KxK, 0.0)) / jnp.maximum(pair_KxK.sum(), 1)
