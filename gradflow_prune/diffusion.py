"""DDPM training loss and DDIM sampling.

DDPM (Ho et al. 2020): linear betas 1e-4..0.02 over T = 1000 steps, x_t = sqrt(abar_t) x_0 +
sqrt(1 - abar_t) eps, loss = E_{t, eps} ||eps - eps_theta(x_t, t)||^2 (L_simple, eq. 14).

DDIM (Song et al. 2021, arXiv 2010.02502, eq. 12), on a sub-sequence tau of the T steps:
  x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)
  x_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps + sigma z,
  sigma  = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev),
with a = abar and a_prev = 1 after the last step. Step skips as ermongroup/ddim's `--skip_type`:
'uniform' = range(0, T, T // S), 'quad' = int(linspace(0, sqrt(0.8 T), S)^2) (used for CIFAR-10 by
the DDIM paper and by Diff-Pruning).

Images live in [-1, 1] here (`to_model_range`, `to_unit_range`).
"""

from __future__ import annotations

from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np

from shared.errors import ConfigError

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]  # (x_BxHxWxC, t_B) -> eps_BxHxWxC


@flax.struct.dataclass
class Schedule:
  """The noise schedule: betas and abar_t = prod_{s <= t} (1 - beta_s), float32, t = 0..T-1."""

  betas: jax.Array
  alphas_cumprod: jax.Array

  @property
  def num_timesteps(self) -> int:
    return int(self.betas.shape[0])


def linear_schedule(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
  """DDPM's linear beta schedule (computed in float64, stored float32)."""
  if num_timesteps < 1 or not 0 < beta_start <= beta_end < 1:
    raise ConfigError(
      f"diffusion schedule: need T >= 1 and 0 < beta_start <= beta_end < 1, got "
      f"T={num_timesteps}, betas {beta_start}..{beta_end}"
    )
  betas = np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
  abar = np.cumprod(1.0 - betas)
  return Schedule(jnp.asarray(betas, jnp.float32), jnp.asarray(abar, jnp.float32))


def to_model_range(images01):
  return images01 * 2.0 - 1.0


def to_unit_range(x):
  return jnp.clip((x + 1.0) / 2.0, 0.0, 1.0)


def q_sample(sched: Schedule, x0_BxHxWxC, t_B, noise_BxHxWxC):
  """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps."""
  abar_B = sched.alphas_cumprod[t_B][:, None, None, None]
  return jnp.sqrt(abar_B) * x0_BxHxWxC + jnp.sqrt(1.0 - abar_B) * noise_BxHxWxC


def eps_mse(eps_fn: EpsFn, sched: Schedule, x0_BxHxWxC, t_B, noise_BxHxWxC):
  """||eps - eps_theta(x_t, t)||^2, averaged over pixels and the batch, at given t and noise."""
  x_t = q_sample(sched, x0_BxHxWxC, t_B, noise_BxHxWxC)
  return jnp.mean(jnp.square(eps_fn(x_t, t_B) - noise_BxHxWxC))


def ddpm_loss(eps_fn: EpsFn, sched: Schedule, x0_BxHxWxC, rng):
  """L_simple: t ~ U{0..T-1}, eps ~ N(0, I)."""
  t_rng, n_rng = jax.random.split(rng)
  t_B = jax.random.randint(t_rng, (x0_BxHxWxC.shape[0],), 0, sched.num_timesteps)
  noise = jax.random.normal(n_rng, x0_BxHxWxC.shape, x0_BxHxWxC.dtype)
  return eps_mse(eps_fn, sched, x0_BxHxWxC, t_B, noise)


def ddim_timesteps(num_timesteps: int, num_steps: int, skip: str = "uniform") -> np.ndarray:
  """The increasing sub-sequence tau of {0..T-1} that DDIM visits (in reverse)."""
  if not 1 <= num_steps <= num_timesteps:
    raise ConfigError(f"DDIM steps must be in 1..{num_timesteps}, got {num_steps}")
  if skip == "uniform":
    seq = np.arange(0, num_timesteps, num_timesteps // num_steps)
  elif skip == "quad":
    seq = (np.linspace(0, np.sqrt(num_timesteps * 0.8), num_steps) ** 2).astype(np.int64)
  else:
    raise ConfigError(f"DDIM skip type {skip!r}; known: uniform, quad")
  return np.asarray(seq, np.int32)


def ddim_sample(
  eps_fn: EpsFn,
  sched: Schedule,
  x_T: jax.Array,
  timesteps: np.ndarray,
  *,
  eta: float = 0.0,
  rng: jax.Array | None = None,
  clip_x0: bool = True,
) -> jax.Array:
  """DDIM from x_T ~ N(0, I) down to x_0 (in [-1, 1] when clip_x0), as one `lax.scan`.

  Jit it from outside (`jax.jit(lambda params, x: ddim_sample(...))`); `timesteps` is static.

  Args:
    eps_fn: the noise predictor.
    sched: the training schedule.
    x_T: start noise.
    timesteps: increasing ints from `ddim_timesteps`.
    eta: 0 = deterministic DDIM, 1 = DDPM-like ancestral noise.
    rng: needed when eta > 0.
    clip_x0: clip the predicted x_0 to [-1, 1] at every step (diffusers' `clip_sample`).
  """
  seq = np.asarray(timesteps, np.int32)
  prev = np.concatenate([[-1], seq[:-1]]).astype(np.int32)
  t_S, prev_S = jnp.asarray(seq[::-1].copy()), jnp.asarray(prev[::-1].copy())
  if eta > 0 and rng is None:
    raise ValueError("ddim_sample: eta > 0 needs an rng")
  keys = jax.random.split(rng if rng is not None else jax.random.PRNGKey(0), len(seq))

  def step(x, inputs):
    t, t_prev, key = inputs
    a_t = sched.alphas_cumprod[t]
    a_prev = jnp.where(t_prev >= 0, sched.alphas_cumprod[jnp.maximum(t_prev, 0)], 1.0)
    eps = eps_fn(x, jnp.full((x.shape[0],), t, jnp.int32))
    x0 = (x - jnp.sqrt(1.0 - a_t) * eps) / jnp.sqrt(a_t)
    if clip_x0:
      x0 = jnp.clip(x0, -1.0, 1.0)
      eps = (x - jnp.sqrt(a_t) * x0) / jnp.sqrt(1.0 - a_t)  # the noise consistent with x0
    sigma = eta * jnp.sqrt((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev))
    x = jnp.sqrt(a_prev) * x0 + jnp.sqrt(jnp.maximum(1.0 - a_prev - sigma**2, 0.0)) * eps
    if eta > 0:
      x = x + sigma * jax.random.normal(key, x.shape, x.dtype)
    return x, None

  x_0, _ = jax.lax.scan(step, x_T, (t_S, prev_S, keys))
  return x_0
