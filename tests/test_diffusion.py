"""DDPM schedule and loss, DDIM sampling and step skips."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradflow_prune import diffusion
from shared.errors import ConfigError


def test_linear_schedule_values():
  s = diffusion.linear_schedule(1000, 1e-4, 0.02)
  assert s.num_timesteps == 1000
  np.testing.assert_allclose(
    np.asarray(s.betas)[[0, 499, 999]], [1e-4, 1e-4 + 499 * (0.02 - 1e-4) / 999, 0.02], rtol=1e-6
  )
  abar = 1.0
  for b in np.linspace(1e-4, 0.02, 1000):
    abar *= 1.0 - b
  np.testing.assert_allclose(s.alphas_cumprod[-1], abar, rtol=1e-4)
  assert 4.0e-5 < abar < 4.1e-5  # the well-known abar_T of DDPM's schedule
  assert np.all(np.diff(np.asarray(s.alphas_cumprod)) < 0)
  with pytest.raises(ConfigError):
    diffusion.linear_schedule(1000, 0.02, 1e-4)


def test_q_sample_matches_running_the_forward_chain():
  """x_t from the closed form has the law of t steps of x <- sqrt(1-b) x + sqrt(b) z."""
  s = diffusion.linear_schedule(1000)
  rng = np.random.default_rng(0)
  x0, n, t = 0.7, 20000, 300
  x = np.full(n, x0)
  for b in np.asarray(s.betas[: t + 1], np.float64):
    x = np.sqrt(1 - b) * x + np.sqrt(b) * rng.normal(size=n)
  closed = diffusion.q_sample(
    s,
    jnp.full((n, 1, 1, 1), x0),
    jnp.full((n,), t),
    jax.random.normal(jax.random.PRNGKey(0), (n, 1, 1, 1)),
  )
  abar = float(s.alphas_cumprod[t])
  assert abs(x.mean() - np.sqrt(abar) * x0) < 0.02 and abs(x.var() - (1 - abar)) < 0.03
  assert abs(float(closed.mean()) - x.mean()) < 0.03 and abs(float(closed.var()) - x.var()) < 0.03


def oracle(sched, x0_star):
  """The exact eps predictor when the data is the single point x0_star."""

  def eps_fn(x, t_B):
    abar = sched.alphas_cumprod[t_B][:, None, None, None]
    return (x - jnp.sqrt(abar) * x0_star) / jnp.sqrt(1 - abar)

  return eps_fn


def test_loss_is_zero_for_the_oracle_and_positive_otherwise():
  s = diffusion.linear_schedule(1000)
  x0 = jnp.full((4, 2, 2, 1), 0.3)
  assert float(diffusion.ddpm_loss(oracle(s, x0), s, x0, jax.random.PRNGKey(0))) < 1e-8
  zero = lambda x, t: jnp.zeros_like(x)
  assert abs(float(diffusion.ddpm_loss(zero, s, x0, jax.random.PRNGKey(0))) - 1.0) < 0.5


@pytest.mark.parametrize("skip", ["uniform", "quad"])
def test_ddim_with_eta_0_is_deterministic_and_recovers_the_oracles_point(skip):
  s = diffusion.linear_schedule(1000)
  x0 = jnp.linspace(-0.8, 0.8, 8).reshape(2, 2, 2, 1)
  steps = diffusion.ddim_timesteps(1000, 20, skip)
  sample = jax.jit(
    lambda x, k: diffusion.ddim_sample(oracle(s, x0), s, x, steps, eta=0.0, rng=k, clip_x0=False)
  )
  x_T = jax.random.normal(jax.random.PRNGKey(0), x0.shape)
  a, b = sample(x_T, jax.random.PRNGKey(1)), sample(x_T, jax.random.PRNGKey(2))
  np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(a, x0, atol=1e-4)


def test_ddim_with_eta_1_uses_its_rng():
  s = diffusion.linear_schedule(1000)
  eps = lambda x, t: 0.5 * x
  steps = diffusion.ddim_timesteps(1000, 10)
  run = lambda k: diffusion.ddim_sample(eps, s, jnp.ones((1, 2, 2, 1)), steps, eta=1.0, rng=k)
  assert not np.allclose(run(jax.random.PRNGKey(1)), run(jax.random.PRNGKey(2)))
  assert float(jnp.abs(run(jax.random.PRNGKey(1))).max()) <= 1.0 + 1e-6  # clip_x0 keeps [-1, 1]


def test_step_skip_lists():
  np.testing.assert_array_equal(
    diffusion.ddim_timesteps(1000, 10, "uniform"), np.arange(0, 1000, 100)
  )
  quad = diffusion.ddim_timesteps(1000, 100, "quad")
  assert len(quad) == 100 and quad[0] == 0 and 790 <= quad[-1] <= 800
  assert np.all(np.diff(quad) >= 0)
  np.testing.assert_array_equal(quad, (np.linspace(0, np.sqrt(800), 100) ** 2).astype(int))
  assert np.diff(quad)[:10].mean() < np.diff(quad)[-10:].mean()  # dense near t = 0
  with pytest.raises(ConfigError):
    diffusion.ddim_timesteps(1000, 10, "cosine")
  with pytest.raises(ConfigError):
    diffusion.ddim_timesteps(10, 11)
