"""Mask schedules: MAE random masking, MaskGIT's cosine schedule, Zhu & Gupta sparsity ramps.

Sizes (`n_tokens`, `batch`, `mask_ratio`, `total_steps`) fix array shapes and must be Python
numbers; steps and times may be traced, so every function here works inside `jax.jit` and
`lax.fori_loop`.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from shared.errors import ConfigError


def num_kept(n_tokens: int, mask_ratio: float) -> int:
  """Tokens an MAE encoder sees: K = round(N (1 - mask_ratio)) (Python's round, ties to even)."""
  if not 0.0 <= mask_ratio <= 1.0:
    raise ConfigError(f"mask_ratio must be in [0, 1], got {mask_ratio}")
  if n_tokens < 1:
    raise ConfigError(f"n_tokens must be >= 1, got {n_tokens}")
  return int(round(n_tokens * (1.0 - mask_ratio)))


def random_masking(
  key: jax.Array, n_tokens: int, mask_ratio: float, batch: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-sample random masking by argsort of uniform noise (He et al. 2022, MAE).

    noise ~ U(0, 1)^(B x N),  shuffle = argsort(noise),  restore = argsort(shuffle),
    keep = shuffle[:, :K] with K = round(N (1 - mask_ratio)),
    mask[b, n] = 1 if token n is dropped (not in keep[b]) else 0.

  `restore` undoes the shuffle: for tokens laid out as [kept, mask tokens] in shuffled order,
  `take_along_axis(tokens, restore)` puts them back in their original positions.

  Returns:
    ids_keep_BxK (int32, indices of kept tokens, in random order), mask_BxN (float32, 1 = masked),
    ids_restore_BxN (int32).
  """
  k = num_kept(n_tokens, mask_ratio)
  noise_BxN = jax.random.uniform(key, (batch, n_tokens))
  ids_shuffle_BxN = jnp.argsort(noise_BxN, axis=1).astype(jnp.int32)
  ids_restore_BxN = jnp.argsort(ids_shuffle_BxN, axis=1).astype(jnp.int32)
  ids_keep_BxK = ids_shuffle_BxN[:, :k]
  mask_shuffled_BxN = jnp.broadcast_to(
    (jnp.arange(n_tokens) >= k).astype(jnp.float32), (batch, n_tokens)
  )
  mask_BxN = jnp.take_along_axis(mask_shuffled_BxN, ids_restore_BxN, axis=1)
  return ids_keep_BxK, mask_BxN, ids_restore_BxN


def maskgit_schedule(t: float | jax.Array) -> jax.Array:
  """MaskGIT's cosine mask schedule (Chang et al. 2022, eq. 3): fraction of tokens masked.

  gamma(t) = cos(pi / 2 * t),  t clipped to [0, 1];  gamma(0) = 1, gamma(1) = 0.
  """
  t = jnp.clip(jnp.asarray(t, jnp.float32), 0.0, 1.0)
  return jnp.cos(0.5 * jnp.pi * t)


def num_masked(step: int | jax.Array, total_steps: int, n_tokens: int) -> jax.Array:
  """Tokens still masked after iterative-decoding step `step` (0-based) of `total_steps`.

  The cosine target a_s = floor(N gamma((s + 1) / T)) is tightened so that every step reveals at
  least one token while any remain:

    m_s = max(0, min(a_s, m_{s-1} - 1)),  m_{-1} = N
        = max(0, min_{k in [-1, s]} (a_k - (s - k))),  with a_{-1} = N,

  (the closed form is what lets `step` be traced). m_{T-1} = 0: all tokens are decoded at the end.

  Returns:
    int32 scalar in [0, N - 1] (or 0 when T > N and the tokens ran out early).
  """
  if total_steps < 1 or n_tokens < 1:
    raise ConfigError(f"need total_steps >= 1 and n_tokens >= 1, got {total_steps}, {n_tokens}")
  # The targets depend only on static sizes: computed on the host in float64 so that floor() is
  # not thrown off by float32 round-off (e.g. 20 cos(pi/3) = 9.99999 in float32).
  ks = np.arange(total_steps)
  target_K = np.floor(n_tokens * np.cos(0.5 * np.pi * (ks + 1) / total_steps)).astype(np.int32)
  target_K[-1] = 0  # cos(pi/2) is 6e-17, not 0, in floating point
  step = jnp.asarray(step, jnp.int32)
  big = jnp.iinfo(jnp.int32).max
  candidates_K = jnp.where(jnp.asarray(ks) <= step, target_K - (step - ks), big)
  masked = jnp.minimum(jnp.min(candidates_K), n_tokens - (step + 1))
  return jnp.maximum(masked, 0)


def sparsity_schedule(
  step: int | jax.Array, total: int, final: float, power: float = 3.0
) -> jax.Array:
  """Gradual pruning schedule (Zhu & Gupta 2017, eq. 1, with initial sparsity 0, start step 0).

    s(t) = final * (1 - (1 - clip(t / total, 0, 1))^power).

  Monotone non-decreasing in t for power > 0; s(0) = 0 and s(t) = final for t >= total.
  """
  if total <= 0:
    raise ConfigError(f"sparsity_schedule needs total > 0 steps, got {total}")
  if isinstance(final, int | float) and not 0.0 <= final <= 1.0:
    raise ConfigError(f"final sparsity must be in [0, 1], got {final}")
  if isinstance(power, int | float) and not (power > 0 and math.isfinite(power)):
    raise ConfigError(f"sparsity_schedule needs a finite power > 0, got {power}")
  frac = jnp.clip(jnp.asarray(step, jnp.float32) / total, 0.0, 1.0)
  return final * (1.0 - (1.0 - frac) ** power)
