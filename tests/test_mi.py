"""shared.mi against closed forms: correlated Gaussians, the optimal critic, a trained critic."""

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import mi
from shared.errors import DataError

_SETTINGS = settings(max_examples=10, deadline=None)
# A few sizes only: every new shape is a fresh compilation, which dominates the run time.
_SIZES = st.sampled_from([2, 3, 8])


def _correlated(rng, shape, rho):
  """numpy (x, y) with coordinate correlation rho (numpy: JAX's threefry compiles per shape)."""
  x = rng.standard_normal(shape)
  y = rho * x + np.sqrt(1 - rho**2) * rng.standard_normal(shape)
  return x.astype(np.float32), y.astype(np.float32)


def _batched_estimates(estimator, mi_nats, dim, batch, repeats, seed=0):
  """Evaluates `estimator(x, y, rho)` on `repeats` independent batches of correlated Gaussians."""
  rho = float(mi.rho_for_mi(mi_nats, dim))
  x_RxBxD, y_RxBxD = _correlated(np.random.default_rng(seed), (repeats, batch, dim), rho)
  one = lambda x, y: estimator(x, y, rho)
  return np.asarray(jax.jit(jax.vmap(one))(x_RxBxD, y_RxBxD), dtype=np.float64)


def _assert_unbiased(estimates, truth, n_se=4.0):
  se = estimates.std(ddof=1) / np.sqrt(len(estimates))
  assert abs(estimates.mean() - truth) < n_se * se + 1e-3, (estimates.mean(), truth, se)


def test_gaussian_mi_closed_form_and_inverse():
  np.testing.assert_allclose(mi.gaussian_mi(0.5, 3), -1.5 * np.log(0.75), rtol=1e-6)
  assert mi.gaussian_mi(0.0, 8) == 0.0
  for nats in (0.1, 2.0, 7.0):
    np.testing.assert_allclose(mi.gaussian_mi(mi.rho_for_mi(nats, 8), 8), nats, rtol=1e-5)


def test_optimal_critic_diagonal_mean_is_mi():
  est = _batched_estimates(
    lambda x, y, r: jnp.mean(jnp.diagonal(mi.gaussian_log_ratio(x, y, r))), 2.0, 8, 256, 32
  )
  _assert_unbiased(est, 2.0)


@pytest.mark.parametrize("mi_nats", [0.5, 2.0])
def test_infonce_optimal_critic_close_to_mi_when_log_n_large(mi_nats):
  est = _batched_estimates(
    lambda x, y, r: mi.infonce(mi.gaussian_log_ratio(x, y, r)), mi_nats, 8, 1024, 8
  )
  # InfoNCE is a lower bound whose gap shrinks as N grows; at log N = 6.9 it is small.
  assert est.mean() <= mi_nats + 0.02
  assert est.mean() >= mi_nats - 0.1


def test_infonce_optimal_critic_saturates_at_log_n():
  n = 64
  est = _batched_estimates(
    lambda x, y, r: mi.infonce(mi.gaussian_log_ratio(x, y, r)), 12.0, 8, n, 8
  )
  assert np.all(est <= np.log(n) + 1e-5)
  assert est.mean() >= np.log(n) - 0.15


@pytest.mark.parametrize(("mi_nats", "dim"), [(0.5, 8), (1.0, 4), (2.0, 8)])
def test_nwj_and_dv_unbiased_at_optimal_critic(mi_nats, dim):
  # NWJ's optimal critic is 1 + log r; DV's is log r (+ any constant).
  nwj = _batched_estimates(
    lambda x, y, r: mi.nwj(1.0 + mi.gaussian_log_ratio(x, y, r)), mi_nats, dim, 512, 24
  )
  dv = _batched_estimates(
    lambda x, y, r: mi.mine(mi.gaussian_log_ratio(x, y, r)), mi_nats, dim, 512, 24
  )
  _assert_unbiased(nwj, mi_nats)
  _assert_unbiased(dv, mi_nats)


@pytest.mark.parametrize(("mi_nats", "dim"), [(0.5, 8), (2.0, 8), (1.0, 2)])
def test_club_with_true_conditional_upper_bounds_mi(mi_nats, dim):
  def club_true_q(x, y, rho):
    logvar = jnp.full_like(x, jnp.log(1.0 - rho**2))
    return mi.club(rho * x, logvar, y)

  est = _batched_estimates(club_true_q, mi_nats, dim, 512, 16)
  assert np.all(est >= mi_nats)
  # With q = p(y|x) the bound is I + E_x KL(p(y) || p(y|x)) = dim rho^2 / (1 - rho^2).
  rho = float(mi.rho_for_mi(mi_nats, dim))
  _assert_unbiased(est, dim * rho**2 / (1 - rho**2))


def test_club_matches_all_pairs_definition():
  rng = np.random.default_rng(3)
  mu, logvar, y = rng.standard_normal((3, 7, 3)).astype(np.float32) * [[[1.0]], [[0.3]], [[1.0]]]
  ll_NxN = jax.vmap(lambda m, lv: mi.gaussian_log_likelihood(m, lv, y))(mu, logvar)
  off = ~np.eye(7, dtype=bool)
  expected = np.mean(np.diag(ll_NxN)) - np.mean(np.asarray(ll_NxN)[off])
  np.testing.assert_allclose(mi.club(mu, logvar, y), expected, rtol=1e-5, atol=1e-5)


_CRITIC = mi.SeparableCritic(hidden=(64,), embed_dim=32)
_CRITIC_OPT = optax.adam(3e-3)


@jax.jit
def _critic_train_step(params, opt_state, key, rho):
  """One Adam step on -InfoNCE over a fresh batch; rho is an argument so one compile serves all."""
  x_BxD, y_BxD = mi.sample_correlated_gaussian(key, 512, 8, rho)
  grads = jax.grad(lambda p: -mi.infonce(_CRITIC.apply(p, x_BxD, y_BxD)))(params)
  updates, opt_state = _CRITIC_OPT.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


@jax.jit
def _critic_infonce(params, x_BxD, y_BxD):
  return mi.infonce(_CRITIC.apply(params, x_BxD, y_BxD))


@pytest.mark.parametrize("mi_nats", [0.5, 2.0, 4.0])
def test_trained_separable_critic_reaches_80_percent_of_mi(mi_nats):
  dim, steps = 8, 400  # batch 512: log 512 = 6.2 > 4 nats
  rho = mi.rho_for_mi(mi_nats, dim)
  key = jax.random.key(0)
  params = jax.jit(_CRITIC.init)(
    jax.random.key(0, impl="rbg"), jnp.zeros((2, 8)), jnp.zeros((2, 8))
  )
  opt_state = _CRITIC_OPT.init(params)
  for i in range(steps):
    params, opt_state = _critic_train_step(params, opt_state, jax.random.fold_in(key, i), rho)
  # Held-out estimate on fresh samples, with a larger batch (smaller InfoNCE bias).
  x_RxBxD, y_RxBxD = _correlated(np.random.default_rng(1), (4, 1024, dim), float(rho))
  held_out = np.mean([_critic_infonce(params, x, y) for x, y in zip(x_RxBxD, y_RxBxD, strict=True)])
  assert held_out >= 0.8 * mi_nats, held_out
  assert held_out <= mi_nats + 0.05, held_out


def test_concat_critic_scores_every_pair():
  rng = np.random.default_rng(0)
  x, y = rng.standard_normal((5, 3)), rng.standard_normal((4, 2))
  critic = mi.ConcatCritic(hidden=(8,))
  params = jax.jit(critic.init)(jax.random.key(2, impl="rbg"), x, y)
  scores = critic.apply(params, x, y)
  chex.assert_shape(scores, (5, 4))
  one = critic.apply(params, x[2:3], y[1:2])
  np.testing.assert_allclose(scores[2, 1], one[0, 0], rtol=1e-5)


def test_separable_critic_is_inner_product():
  rng = np.random.default_rng(1)
  x, y = rng.standard_normal((5, 3)), rng.standard_normal((6, 2))
  critic = mi.SeparableCritic(hidden=(8,), embed_dim=4)
  params = jax.jit(critic.init)(jax.random.key(2, impl="rbg"), x, y)
  scores = critic.apply(params, x, y)
  chex.assert_shape(scores, (5, 6))
  g = mi.MLP((8,), 4).apply({"params": params["params"]["g"]}, x)
  h = mi.MLP((8,), 4).apply({"params": params["params"]["h"]}, y)
  np.testing.assert_allclose(scores, g @ h.T, rtol=1e-5, atol=1e-5)


def test_gaussian_kl_matches_monte_carlo():
  rng = np.random.default_rng(0)
  mu_NxD = rng.standard_normal((3, 4)).astype(np.float32)
  logvar_NxD = 0.5 * rng.standard_normal((3, 4)).astype(np.float32)
  eps_SxNxD = rng.standard_normal((100_000, 3, 4)).astype(np.float32)

  @jax.jit
  def log_ratio(mu, logvar, eps):
    z = mu + jnp.exp(0.5 * logvar) * eps  # z ~ q = N(mu, exp(logvar))
    zeros = jnp.zeros_like(z)
    return mi.gaussian_log_likelihood(mu, logvar, z) - mi.gaussian_log_likelihood(zeros, zeros, z)

  samples_SxN = np.asarray(log_ratio(mu_NxD, logvar_NxD, eps_SxNxD), dtype=np.float64)
  se_N = samples_SxN.std(axis=0) / np.sqrt(samples_SxN.shape[0])
  kl_N = mi.gaussian_kl(mu_NxD, logvar_NxD)
  chex.assert_shape(kl_N, (3,))
  assert np.all(np.abs(samples_SxN.mean(axis=0) - kl_N) < 5 * se_N + 1e-4)
  np.testing.assert_allclose(mi.gaussian_kl(jnp.zeros((2, 5)), jnp.zeros((2, 5))), 0.0)


def _numpy_hsic(x, y):
  """Reference: explicit H and median-heuristic bandwidths, float64."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  n = x.shape[0]

  def gram(a):
    d = np.sum((a[:, None, :] - a[None, :, :]) ** 2, axis=-1)
    sigma = np.sqrt(np.median(d[np.triu_indices(n, k=1)]))
    return np.exp(-d / (2 * sigma**2))

  h = np.eye(n) - np.ones((n, n)) / n
  return np.trace(gram(x) @ h @ gram(y) @ h) / (n - 1) ** 2


_hsic_and_nhsic = jax.jit(lambda x, y: (mi.hsic(x, y), mi.nhsic(x, y)))


def test_hsic_matches_numpy_reference():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((40, 3)).astype(np.float32)
  y = x[:, :2] ** 2 + 0.5 * rng.standard_normal((40, 2)).astype(np.float32)
  np.testing.assert_allclose(_hsic_and_nhsic(x, y)[0], _numpy_hsic(x, y), rtol=1e-4)


def test_hsic_from_sq_dists_equals_hsic():
  rng = np.random.default_rng(3)
  x, y = rng.normal(size=(12, 4)), rng.normal(size=(12, 7))
  from_dists = mi.hsic_from_sq_dists(mi.pairwise_sq_dists(x), mi.pairwise_sq_dists(y))
  np.testing.assert_allclose(from_dists, mi.hsic(x, y), rtol=1e-6)
  with pytest.raises(DataError):
    mi.hsic_from_sq_dists(jnp.zeros((3, 3)), jnp.zeros((4, 4)))


def test_hsic_near_zero_when_independent_and_grows_with_dependence():
  n, dim = 300, 2
  rng = np.random.default_rng(0)
  x, noise = rng.standard_normal((2, n, dim)).astype(np.float32)
  results = [
    _hsic_and_nhsic(x, rho * x + np.sqrt(1 - rho**2) * noise) for rho in (0, 0.3, 0.6, 0.9)
  ]
  values = [float(h) for h, _ in results]
  assert values[0] < 0.05 * values[-1]
  assert values[0] < 5.0 / n  # the biased estimator's bias under independence is O(1/n)
  assert all(a < b for a, b in zip(values, values[1:], strict=False)), values
  assert float(results[0][1]) < 0.05
  assert float(results[-1][1]) > 0.3
  assert float(_hsic_and_nhsic(x, 0.9 * x + 0.1 * noise)[1]) > 0.5


def test_hsic_bandwidth_has_no_gradient_and_gradient_is_finite():
  rng = np.random.default_rng(0)
  x, y = rng.standard_normal((16, 3)).astype(np.float32), rng.standard_normal((16, 2))

  @jax.jit
  def grads(x):
    # With a fixed bandwidth equal to the median, the gradient must be the same: the median
    # heuristic's bandwidth is held constant.
    sigma = mi.median_bandwidth(mi.pairwise_sq_dists(x))
    return jax.grad(lambda x: mi.hsic(x, y))(x), jax.grad(lambda x: mi.hsic(x, y, sigma))(x)

  grad, grad_fixed = grads(x)
  assert np.all(np.isfinite(grad)) and np.any(grad != 0)
  np.testing.assert_allclose(grad, grad_fixed, rtol=1e-4, atol=1e-6)


def test_bad_shapes_raise_data_error():
  with pytest.raises(DataError):
    mi.infonce(jnp.zeros((3, 4)))
  with pytest.raises(DataError):
    mi.nwj(jnp.zeros((1, 1)))
  with pytest.raises(DataError):
    mi.club(jnp.zeros((4, 2)), jnp.zeros((4, 2)), jnp.zeros((4, 3)))
  with pytest.raises(DataError):
    mi.hsic(jnp.zeros((4, 2)), jnp.zeros((5, 2)))


# ---- property tests ----

_dtypes = st.sampled_from([jnp.float32, jnp.bfloat16])


@st.composite
def _scores(draw):
  n = draw(_SIZES)
  arr = draw(
    hnp.arrays(np.float32, (n, n), elements=st.floats(-20, 20, width=32, allow_subnormal=False))
  )
  return arr


_bounds = jax.jit(lambda s: (mi.infonce(s), mi.nwj(s), mi.mine(s)))


@_SETTINGS
@given(scores=_scores(), dtype=_dtypes)
def test_bounds_shapes_dtypes_and_log_n_ceiling(scores, dtype):
  n = scores.shape[0]
  tol = 1e-4 if dtype == jnp.float32 else 0.1
  outs = _bounds(jnp.asarray(scores, dtype))
  chex.assert_shape(outs, ())
  assert all(out.dtype == dtype for out in outs)
  assert float(outs[0]) <= np.log(n) + tol
  # log t <= t / e for all t > 0, hence DV >= NWJ for the same critic.
  _, nwj, dv = _bounds(jnp.asarray(scores))
  assert float(dv) >= float(nwj) - 1e-3 * (1 + abs(float(nwj)))


@_SETTINGS
@given(scores=_scores(), shift=st.floats(-5, 5))
def test_invariances(scores, shift):
  # InfoNCE is a row-wise softmax: invariant to f(x, y) + c(x). DV is invariant to f + c.
  row_shift = shift * np.arange(scores.shape[0], dtype=np.float32)[:, None]
  shifted, base = _bounds(scores + row_shift), _bounds(scores)
  np.testing.assert_allclose(shifted[0], base[0], atol=2e-3)
  np.testing.assert_allclose(_bounds(scores + np.float32(shift))[2], base[2], atol=2e-3)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_jit_matches_eager(seed):
  n, dim = 6, 4  # one shape: eager ops compile once, later examples reuse them
  rng = np.random.default_rng(seed)
  x, y = rng.standard_normal((2, n, dim)).astype(np.float32)
  logvar = (0.3 * rng.standard_normal((n, dim))).astype(np.float32)
  s = x @ y.T
  cases = [
    (mi.infonce, (s,)),
    (mi.nwj, (s,)),
    (mi.mine, (s,)),
    (mi.club, (x, logvar, y)),
    (mi.gaussian_kl, (x, logvar)),
    (mi.hsic, (x, y)),
    (mi.nhsic, (x, y)),
  ]
  for fn, args in cases:
    np.testing.assert_allclose(jax.jit(fn)(*args), fn(*args), rtol=1e-4, atol=1e-5)
  chex.assert_shape(mi.gaussian_kl(x, logvar), (n,))
  assert float(mi.hsic(x, y)) >= -1e-6
  np.testing.assert_allclose(mi.hsic(x, y), mi.hsic(y, x), rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(mi.nhsic(x, x), 1.0, atol=1e-3)
