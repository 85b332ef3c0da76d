"""InfoTok quantizers: straight-through gradients, index round trips, usage and entropy loss."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infotok import quantizers as qz


@pytest.mark.parametrize("normalize", [False, True])
def test_vq_straight_through_gradient_is_identity(normalize):
  vq = qz.VectorQuantizer(codebook_size=16, code_dim=4, normalize=normalize)
  z = jax.random.normal(jax.random.key(0), (2, 5, 4))
  params = vq.init(jax.random.key(1), z)
  cot = jax.random.normal(jax.random.key(2), z.shape)

  def f(z):
    zq, _, _ = vq.apply(params, z)
    return jnp.sum(zq * cot)

  grad = jax.grad(f)(z)
  if normalize:
    # The identity passes the gradient to the normalised latent; compare with its chain rule.
    expected = jax.grad(lambda z: jnp.sum(qz._l2_normalize(z) * cot))(z)
  else:
    expected = cot
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)


def test_vq_forward_is_nearest_code_and_indices_round_trip():
  vq = qz.VectorQuantizer(codebook_size=32, code_dim=3, normalize=False)
  z = jax.random.normal(jax.random.key(0), (4, 7, 3))
  params = vq.init(jax.random.key(1), z)
  zq, idx, aux = vq.apply(params, z)
  codebook = np.asarray(params["params"]["codebook"])
  brute = np.argmin(((np.asarray(z)[..., None, :] - codebook) ** 2).sum(-1), axis=-1)
  np.testing.assert_array_equal(idx, brute)
  np.testing.assert_allclose(vq.apply(params, idx, method=vq.decode), zq, atol=1e-6)
  np.testing.assert_allclose(zq, codebook[brute], atol=1e-6)
  # VQ-VAE eq. 3 terms: both equal mean ||z - e||^2 in value.
  mse = np.mean((np.asarray(z) - codebook[brute]) ** 2)
  np.testing.assert_allclose(aux["codebook_loss"], mse, rtol=1e-5)
  np.testing.assert_allclose(aux["vq_loss"], 1.25 * mse, rtol=1e-5)


def test_vq_codebook_gets_gradient_only_from_codebook_loss():
  vq = qz.VectorQuantizer(codebook_size=8, code_dim=2, normalize=False)
  z = jax.random.normal(jax.random.key(0), (1, 6, 2))
  params = vq.init(jax.random.key(1), z)
  g_st = jax.grad(lambda p: jnp.sum(vq.apply(p, z)[0]))(params)
  chex.assert_trees_all_close(g_st, jax.tree.map(jnp.zeros_like, params))
  g_cb = jax.grad(lambda p: vq.apply(p, z)[2]["codebook_loss"])(params)
  assert float(jnp.abs(g_cb["params"]["codebook"]).sum()) > 0


@pytest.mark.parametrize("levels", [(8, 5, 5, 5), (3, 4, 2)])
def test_fsq_indices_round_trip_over_every_code(levels):
  fsq = qz.FSQ(levels)
  k = qz.fsq_num_codes(levels)
  codes = fsq.apply({}, jnp.arange(k)[None], method=fsq.decode)  # [1, K, D] in [-1, 1]
  assert codes.shape == (1, k, len(levels))
  assert float(jnp.abs(codes).max()) <= 1.0
  idx = fsq.apply({}, codes, method=fsq.codes_to_indices)
  np.testing.assert_array_equal(idx[0], np.arange(k))
  assert len(np.unique(np.asarray(codes[0]), axis=0)) == k  # distinct codes


def test_fsq_forward_round_trip_and_levels():
  fsq = qz.FSQ((8, 5, 5, 5))
  z = 3.0 * jax.random.normal(jax.random.key(0), (4, 9, 4))
  zq, idx, aux = fsq.apply({}, z)
  np.testing.assert_allclose(fsq.apply({}, idx, method=fsq.decode), zq, atol=1e-6)
  # Each channel takes at most L_i distinct values.
  for i, lv in enumerate((8, 5, 5, 5)):
    assert len(np.unique(np.asarray(zq[..., i]))) <= lv
  assert aux["distances"].shape == (4, 9, 1000)
  # The nearest implicit code is the rounded one.
  np.testing.assert_array_equal(jnp.argmin(aux["distances"], -1), idx)


def test_fsq_straight_through_gradient_is_the_bound_derivative():
  fsq = qz.FSQ((8, 5, 5, 5))
  z = jax.random.normal(jax.random.key(0), (2, 3, 4))
  cot = jax.random.normal(jax.random.key(1), z.shape)
  grad = jax.grad(lambda z: jnp.sum(fsq.apply({}, z)[0] * cot))(z)
  half_width = jnp.asarray([4.0, 2.0, 2.0, 2.0])
  expected = jax.grad(lambda z: jnp.sum(fsq.apply({}, z, method=fsq.bound) / half_width * cot))(z)
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)
  assert float(jnp.abs(grad).min()) > 0  # rounding did not zero it


def test_code_usage_on_known_indices():
  usage = qz.code_usage(np.array([0, 0, 1, 1]), num_codes=4)
  np.testing.assert_allclose(usage["code_entropy"], np.log(2))
  np.testing.assert_allclose(usage["code_perplexity"], 2.0)
  assert usage["codes_used"] == 2 and usage["dead_code_fraction"] == 0.5


def test_entropy_loss_matches_its_formula_and_prefers_spread_codes():
  d = jax.random.uniform(jax.random.key(0), (2, 5, 6))
  t = 0.5
  p = jax.nn.softmax(-d.reshape(-1, 6) / t)
  per = -jnp.mean(jnp.sum(p * jnp.log(p), -1))
  avg = p.mean(0)
  expected = per + jnp.sum(avg * jnp.log(avg))
  np.testing.assert_allclose(qz.entropy_loss(d, t), expected, rtol=1e-5)
  # Confident and spread (each token its own code) < confident and collapsed (all code 0).
  spread = 100.0 * (1 - jnp.eye(6))[None]
  collapsed = jnp.tile(100.0 * (1 - jnp.eye(6)[:1]), (1, 6, 1))
  assert float(qz.entropy_loss(spread, 1.0)) < float(qz.entropy_loss(collapsed, 1.0))


def test_dead_codes_are_moved_to_batch_latents():
  codebook = jnp.zeros((4, 2))
  usage = jnp.array([1.0, 0.0, 1.0, 0.0])
  z = jnp.array([[5.0, 5.0]])
  out = qz.revive_dead_codes(jax.random.key(0), codebook, usage, z, threshold=0.5)
  np.testing.assert_array_equal(out[jnp.array([1, 3])], jnp.array([[5.0, 5.0], [5.0, 5.0]]))
  np.testing.assert_array_equal(out[jnp.array([0, 2])], 0.0)
