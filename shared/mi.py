"""Mutual-information estimators, bounds and critics, in nats.

Convention for the critic-based bounds: `scores_NxN[i, j] = f(x_i, y_j)`, where (x_i, y_i) are
N samples of the joint p(x, y). The diagonal holds the positive pairs (samples of p(x, y)); the
off-diagonal pairs (x_i, y_j), i != j, stand in for samples of the product of marginals p(x)p(y).

References: Poole et al. 2019, "On Variational Bounds of Mutual Information" (InfoNCE, NWJ, DV);
Belghazi et al. 2018 (MINE); Cheng et al. 2020 (CLUB); Gretton et al. 2005 (HSIC).

Everything here is jit-compatible; shapes must be static, values may be traced.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from shared.errors import DataError

_LOG_2PI = 1.8378770664093453  # log(2 pi)


def _check_square(scores_NxN: jax.Array) -> int:
  if scores_NxN.ndim != 2 or scores_NxN.shape[0] != scores_NxN.shape[1]:
    raise DataError(f"scores must be a square N x N matrix, got shape {scores_NxN.shape}")
  n = scores_NxN.shape[0]
  if n < 2:
    raise DataError(f"scores need N >= 2 samples (off-diagonal negatives), got N = {n}")
  return n


def _offdiag_mask(n: int) -> jax.Array:
  return ~jnp.eye(n, dtype=bool)


def infonce(scores_NxN: jax.Array) -> jax.Array:
  """InfoNCE lower bound (van den Oord et al. 2018; Poole et al. 2019, eq. 12).

    I_NCE = 1/N sum_i [ s_ii - log sum_j exp(s_ij) ] + log N   <=  log N.

  Args:
    scores_NxN: critic scores, s_ij = f(x_i, y_j); positives on the diagonal.

  Returns:
    Scalar estimate in nats, in the dtype of `scores_NxN`.
  """
  n = _check_square(scores_NxN)
  per_row_N = jnp.diagonal(scores_NxN) - logsumexp(scores_NxN, axis=1)
  return jnp.mean(per_row_N) + jnp.log(n).astype(scores_NxN.dtype)


def nwj(scores_NxN: jax.Array) -> jax.Array:
  """NWJ / f-divergence lower bound (Nguyen, Wainwright & Jordan 2010; Poole et al. eq. 9).

    I_NWJ = E_p(x,y)[f] - E_p(x)p(y)[exp(f - 1)]
          = 1/N sum_i s_ii - 1/(N(N-1)) sum_{i != j} exp(s_ij - 1).

  Tight, and unbiased for I, at the optimal critic f*(x, y) = 1 + log p(y|x) / p(y).

  Args:
    scores_NxN: critic scores, s_ij = f(x_i, y_j); positives on the diagonal.

  Returns:
    Scalar estimate in nats.
  """
  n = _check_square(scores_NxN)
  joint_term = jnp.mean(jnp.diagonal(scores_NxN))
  # Mask before exp so a large diagonal cannot overflow into a NaN gradient.
  neg_inf = jnp.asarray(-jnp.inf, scores_NxN.dtype)
  offdiag_NxN = jnp.where(_offdiag_mask(n), scores_NxN - 1, neg_inf)
  return joint_term - jnp.sum(jnp.exp(offdiag_NxN)) / (n * (n - 1))


def mine(scores_NxN: jax.Array) -> jax.Array:
  """Donsker-Varadhan lower bound, the objective of MINE (Belghazi et al. 2018, eq. 6).

    I_DV = E_p(x,y)[f] - log E_p(x)p(y)[exp f]
         = 1/N sum_i s_ii - [ logsumexp_{i != j} s_ij - log(N(N-1)) ].

  Tight at f*(x, y) = log p(y|x) / p(y) + const. The log-mean-exp uses logsumexp for stability.
  (MINE's moving-average gradient correction is a training detail, not part of the estimate.)

  Args:
    scores_NxN: critic scores, s_ij = f(x_i, y_j); positives on the diagonal.

  Returns:
    Scalar estimate in nats.
  """
  n = _check_square(scores_NxN)
  joint_term = jnp.mean(jnp.diagonal(scores_NxN))
  neg_inf = jnp.asarray(-jnp.inf, scores_NxN.dtype)
  offdiag_NxN = jnp.where(_offdiag_mask(n), scores_NxN, neg_inf)
  log_mean_exp = logsumexp(offdiag_NxN) - jnp.log(n * (n - 1)).astype(scores_NxN.dtype)
  return joint_term - log_mean_exp


def gaussian_log_likelihood(
  mu_NxD: jax.Array, logvar_NxD: jax.Array, y_NxD: jax.Array
) -> jax.Array:
  """Per-example log N(y; mu, diag(exp(logvar))), summed over the last axis.

  log q(y|x) = -1/2 sum_d [ (y_d - mu_d)^2 / exp(logvar_d) + logvar_d + log 2 pi ].
  """
  sq_NxD = jnp.square(y_NxD - mu_NxD) * jnp.exp(-logvar_NxD)
  return -0.5 * jnp.sum(sq_NxD + logvar_NxD + _LOG_2PI, axis=-1)


def club(mu_NxD: jax.Array, logvar_NxD: jax.Array, y_NxD: jax.Array) -> jax.Array:
  """CLUB upper bound on I(x; y) with a Gaussian variational q(y|x) (Cheng et al. 2020, eq. 8).

    I_CLUB = 1/N sum_i log q(y_i|x_i) - 1/(N(N-1)) sum_{i != j} log q(y_j|x_i),
    q(y|x_i) = N(mu_i, diag(exp(logvar_i))).

  With q = p(y|x) this is >= I(x; y) (the gap is E_p(x) KL(p(y) || p(y|x))). The negative term is
  computed in O(N D) from the mean and variance of y, not by forming all N^2 pairs:
    sum_{j != i} (y_j - mu_i)^2 = N [ (ybar - mu_i)^2 + var(y) ] - (y_i - mu_i)^2   (per dim).
  The log-variance and log 2 pi terms are the same for positives and negatives and cancel.

  Args:
    mu_NxD, logvar_NxD: parameters of q(y|x_i), one row per sample x_i.
    y_NxD: the paired samples y_i.

  Returns:
    Scalar upper-bound estimate in nats.
  """
  if not mu_NxD.shape == logvar_NxD.shape == y_NxD.shape or mu_NxD.ndim != 2:
    raise DataError(
      f"club needs mu, logvar, y of equal shape (N, D); got {mu_NxD.shape}, "
      f"{logvar_NxD.shape}, {y_NxD.shape}"
    )
  n = mu_NxD.shape[0]
  if n < 2:
    raise DataError(f"club needs N >= 2 samples, got N = {n}")
  inv_var_NxD = jnp.exp(-logvar_NxD)
  pos_sq_NxD = jnp.square(y_NxD - mu_NxD)
  y_mean_D = jnp.mean(y_NxD, axis=0)
  y_var_D = jnp.var(y_NxD, axis=0)
  all_sq_NxD = n * (jnp.square(y_mean_D - mu_NxD) + y_var_D)
  neg_sq_NxD = (all_sq_NxD - pos_sq_NxD) / (n - 1)
  return 0.5 * jnp.mean(jnp.sum((neg_sq_NxD - pos_sq_NxD) * inv_var_NxD, axis=-1))


def gaussian_kl(mu_NxD: jax.Array, logvar_NxD: jax.Array) -> jax.Array:
  """Per-example KL(N(mu, diag(exp(logvar))) || N(0, I)), summed over the last axis.

    KL = 1/2 sum_d [ exp(logvar_d) + mu_d^2 - 1 - logvar_d ].

  This is the rate term of the variational information bottleneck (Alemi et al. 2017).

  Returns:
    Array of shape mu.shape[:-1].
  """
  return 0.5 * jnp.sum(jnp.exp(logvar_NxD) + jnp.square(mu_NxD) - 1.0 - logvar_NxD, axis=-1)


def gaussian_mi(rho: float | jax.Array, dim: int | jax.Array) -> jax.Array:
  """Closed-form MI of `dim` independent pairs (x_d, y_d) with correlation rho, unit variance.

  I(x; y) = -dim / 2 * log(1 - rho^2).
  """
  return -0.5 * dim * jnp.log1p(-jnp.square(rho))


def rho_for_mi(mi: float | jax.Array, dim: int | jax.Array) -> jax.Array:
  """Inverse of `gaussian_mi`: rho = sqrt(1 - exp(-2 I / dim))."""
  return jnp.sqrt(-jnp.expm1(-2.0 * mi / dim))


def sample_correlated_gaussian(
  key: jax.Array, batch: int, dim: int, rho: float | jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Samples (x, y) with x ~ N(0, I), y = rho x + sqrt(1 - rho^2) eps, eps ~ N(0, I).

  Each of the `dim` coordinate pairs has correlation rho, so I(x; y) = gaussian_mi(rho, dim).

  Returns:
    x_BxD, y_BxD.
  """
  key_x, key_eps = jax.random.split(key)
  x_BxD = jax.random.normal(key_x, (batch, dim))
  eps_BxD = jax.random.normal(key_eps, (batch, dim))
  y_BxD = rho * x_BxD + jnp.sqrt(1.0 - jnp.square(rho)) * eps_BxD
  return x_BxD, y_BxD


def gaussian_log_ratio(x_NxD: jax.Array, y_MxD: jax.Array, rho: float | jax.Array) -> jax.Array:
  """The optimal critic for `sample_correlated_gaussian`: log p(y_j | x_i) / p(y_j) for all pairs.

    log r(x, y) = -D/2 log(1 - rho^2)
                  - sum_d [ (y_d - rho x_d)^2 / (2 (1 - rho^2)) - y_d^2 / 2 ].

  Returns:
    scores_NxM with scores[i, j] = log r(x_i, y_j); its mean over the diagonal estimates I.
  """
  one_m_r2 = 1.0 - jnp.square(rho)
  d = x_NxD.shape[-1]
  x_sq_N = jnp.sum(jnp.square(x_NxD), axis=-1)
  y_sq_M = jnp.sum(jnp.square(y_MxD), axis=-1)
  cross_NxM = x_NxD @ y_MxD.T
  sq_dist_NxM = y_sq_M[None, :] - 2 * rho * cross_NxM + jnp.square(rho) * x_sq_N[:, None]
  return -0.5 * d * jnp.log(one_m_r2) - sq_dist_NxM / (2 * one_m_r2) + 0.5 * y_sq_M[None, :]


def pairwise_sq_dists(x_NxD: jax.Array) -> jax.Array:
  """Pairwise squared Euclidean distances, ||x_i - x_j||^2, clipped at 0 against round-off."""
  sq_N = jnp.sum(jnp.square(x_NxD), axis=-1)
  d_NxN = sq_N[:, None] + sq_N[None, :] - 2.0 * (x_NxD @ x_NxD.T)
  return jnp.maximum(d_NxN, 0.0)


def median_bandwidth(sq_dists_NxN: jax.Array) -> jax.Array:
  """Median heuristic: sigma = median_{i < j} ||x_i - x_j|| (Gretton et al. 2008), no gradient.

  Falls back to 1 when the median distance is 0 (e.g. constant inputs).
  """
  n = sq_dists_NxN.shape[0]
  rows, cols = jnp.triu_indices(n, k=1)
  sigma = jnp.sqrt(jnp.median(sq_dists_NxN[rows, cols]))
  sigma = jnp.where(sigma > 0, sigma, jnp.ones_like(sigma))
  return jax.lax.stop_gradient(sigma)


def _gaussian_gram(x_NxD: jax.Array, sigma: float | jax.Array | None) -> jax.Array:
  """K_ij = exp(-||x_i - x_j||^2 / (2 sigma^2)); sigma from the median heuristic when None."""
  return _gram_from_sq_dists(pairwise_sq_dists(jnp.reshape(x_NxD, (x_NxD.shape[0], -1))), sigma)


def _gram_from_sq_dists(d_NxN: jax.Array, sigma: float | jax.Array | None) -> jax.Array:
  if sigma is None:
    sigma = median_bandwidth(d_NxN)
  return jnp.exp(-d_NxN / (2.0 * jnp.square(sigma)))


def _center(k_NxN: jax.Array) -> jax.Array:
  """H K H with H = I - 11^T / N (double centring)."""
  return (
    k_NxN - jnp.mean(k_NxN, axis=0, keepdims=True) - jnp.mean(k_NxN, axis=1, keepdims=True)
  ) + jnp.mean(k_NxN)


def _check_pairs(x: jax.Array, y: jax.Array) -> int:
  if x.ndim < 2 or y.ndim < 2 or x.shape[0] != y.shape[0]:
    raise DataError(f"hsic needs x (N, ...) and y (N, ...) with equal N; got {x.shape}, {y.shape}")
  if x.shape[0] < 2:
    raise DataError(f"hsic needs N >= 2 samples, got N = {x.shape[0]}")
  return x.shape[0]


def hsic(
  x_NxD: jax.Array,
  y_NxE: jax.Array,
  sigma_x: float | jax.Array | None = None,
  sigma_y: float | jax.Array | None = None,
) -> jax.Array:
  """Biased empirical HSIC with Gaussian kernels (Gretton et al. 2005, eq. 4).

    HSIC(x, y) = tr(K H L H) / (N - 1)^2,
    K_ij = exp(-||x_i - x_j||^2 / (2 sigma_x^2)),  L_ij likewise for y,  H = I - 11^T / N.

  Inputs with more than two axes are flattened per example. A bandwidth of None uses the median
  heuristic (`median_bandwidth`), held constant under differentiation (stop_gradient), as is usual
  when HSIC is a training loss (e.g. the HSIC bottleneck, Ma et al. 2020).

  Returns:
    Scalar, >= 0; ~0 when x and y are independent.
  """
  _check_pairs(x_NxD, y_NxE)
  flat = lambda a: jnp.reshape(a, (a.shape[0], -1))
  dx, dy = pairwise_sq_dists(flat(x_NxD)), pairwise_sq_dists(flat(y_NxE))
  return hsic_from_sq_dists(dx, dy, sigma_x, sigma_y)


def hsic_from_sq_dists(
  sq_dists_x_NxN: jax.Array,
  sq_dists_y_NxN: jax.Array,
  sigma_x: float | jax.Array | None = None,
  sigma_y: float | jax.Array | None = None,
) -> jax.Array:
  """`hsic` from pairwise squared distances, for inputs whose features are too large to hold
  (e.g. the one-hot of a caption over a 50k-word vocabulary, whose distances are 2 x the number
  of differing tokens). Same kernels, bandwidths and estimator as `hsic`."""
  n = sq_dists_x_NxN.shape[0]
  if sq_dists_x_NxN.shape != (n, n) or sq_dists_y_NxN.shape != (n, n) or n < 2:
    raise DataError(
      f"hsic_from_sq_dists needs two (N, N) matrices, N >= 2; got "
      f"{sq_dists_x_NxN.shape}, {sq_dists_y_NxN.shape}"
    )
  k_NxN = _gram_from_sq_dists(sq_dists_x_NxN, sigma_x)
  l_NxN = _gram_from_sq_dists(sq_dists_y_NxN, sigma_y)
  return jnp.sum(_center(k_NxN) * l_NxN) / (n - 1) ** 2


def nhsic(
  x_NxD: jax.Array,
  y_NxE: jax.Array,
  sigma_x: float | jax.Array | None = None,
  sigma_y: float | jax.Array | None = None,
  eps: float = 1e-12,
) -> jax.Array:
  """Normalised HSIC, in [0, 1] (a kernel analogue of squared correlation, cf. CKA).

    nHSIC(x, y) = HSIC(x, y) / sqrt(HSIC(x, x) HSIC(y, y)).

  Bandwidths as in `hsic`; `eps` guards the denominator when one input is constant.
  """
  n = _check_pairs(x_NxD, y_NxE)
  kc_NxN = _center(_gaussian_gram(x_NxD, sigma_x))
  lc_NxN = _center(_gaussian_gram(y_NxE, sigma_y))
  scale = (n - 1) ** 2
  xy = jnp.sum(kc_NxN * lc_NxN) / scale
  xx = jnp.sum(kc_NxN * kc_NxN) / scale
  yy = jnp.sum(lc_NxN * lc_NxN) / scale
  return xy / jnp.sqrt(xx * yy + eps)


class MLP(nn.Module):
  """ReLU MLP: Dense(h_1) -> relu -> ... -> Dense(out_dim)."""

  hidden: Sequence[int]
  out_dim: int

  @nn.compact
  def __call__(self, x_NxD: jax.Array) -> jax.Array:
    h = x_NxD
    for width in self.hidden:
      h = nn.relu(nn.Dense(width)(h))
    return nn.Dense(self.out_dim)(h)


class SeparableCritic(nn.Module):
  """Separable critic f(x, y) = g(x)^T h(y), all N^2 scores from two N-row passes.

  scores_NxM = g(x_NxD) h(y_MxE)^T.
  """

  hidden: Sequence[int] = (256, 256)
  embed_dim: int = 32

  @nn.compact
  def __call__(self, x_NxD: jax.Array, y_MxE: jax.Array) -> jax.Array:
    g_NxK = MLP(self.hidden, self.embed_dim, name="g")(x_NxD)
    h_MxK = MLP(self.hidden, self.embed_dim, name="h")(y_MxE)
    return g_NxK @ h_MxK.T


class ConcatCritic(nn.Module):
  """Concatenated critic f(x, y) = MLP([x, y]), evaluated on all N x M pairs.

    scores_NxM[i, j] = MLP([x_i, y_j]).

  More expressive than `SeparableCritic` but costs N M forward passes.
  """

  hidden: Sequence[int] = (256, 256)

  @nn.compact
  def __call__(self, x_NxD: jax.Array, y_MxE: jax.Array) -> jax.Array:
    n, m = x_NxD.shape[0], y_MxE.shape[0]
    x_NxMxD = jnp.broadcast_to(x_NxD[:, None, :], (n, m, x_NxD.shape[-1]))
    y_NxMxE = jnp.broadcast_to(y_MxE[None, :, :], (n, m, y_MxE.shape[-1]))
    pairs_NxMxF = jnp.concatenate([x_NxMxD, y_NxMxE], axis=-1)
    return MLP(self.hidden, 1, name="mlp")(pairs_NxMxF)[..., 0]
