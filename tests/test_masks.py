"""shared.masks: exact counts, permutation structure, schedule endpoints and monotonicity."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import masks
from shared.errors import ConfigError

_SETTINGS = settings(max_examples=10, deadline=None)
_random_masking = jax.jit(masks.random_masking, static_argnums=(1, 2, 3))


@_SETTINGS
@given(
  n_tokens=st.sampled_from([1, 2, 7, 16, 49]),
  mask_ratio=st.floats(0.0, 1.0),
  batch=st.sampled_from([1, 3]),
  seed=st.integers(0, 2**16),
)
def test_random_masking_structure(n_tokens, mask_ratio, batch, seed):
  ids_keep, mask, ids_restore = _random_masking(jax.random.key(seed), n_tokens, mask_ratio, batch)
  k = round(n_tokens * (1 - mask_ratio))
  chex.assert_shape(ids_keep, (batch, k))
  chex.assert_shape([mask, ids_restore], (batch, n_tokens))
  mask, ids_keep, ids_restore = np.asarray(mask), np.asarray(ids_keep), np.asarray(ids_restore)
  np.testing.assert_array_equal(mask.sum(axis=1), n_tokens - k)
  for b in range(batch):
    assert len(set(ids_keep[b].tolist())) == k
    assert np.all(mask[b, ids_keep[b]] == 0)
    # ids_restore is a permutation whose first K entries (in shuffled order) are the kept tokens.
    assert sorted(ids_restore[b].tolist()) == list(range(n_tokens))
    ids_shuffle = np.argsort(ids_restore[b])
    np.testing.assert_array_equal(ids_shuffle[:k], ids_keep[b])


def test_random_masking_unshuffle_round_trip_like_mae():
  batch, n, d, ratio = 3, 16, 2, 0.75
  x_BxNxD = jnp.arange(batch * n * d, dtype=jnp.float32).reshape(batch, n, d)
  ids_keep, mask, ids_restore = masks.random_masking(jax.random.key(0), n, ratio, batch)
  kept_BxKxD = jnp.take_along_axis(x_BxNxD, ids_keep[..., None], axis=1)
  filler_BxMxD = jnp.full((batch, n - ids_keep.shape[1], d), -1.0)
  full_BxNxD = jnp.concatenate([kept_BxKxD, filler_BxMxD], axis=1)
  restored_BxNxD = jnp.take_along_axis(full_BxNxD, ids_restore[..., None], axis=1)
  expected = jnp.where(mask[..., None] == 1, -1.0, x_BxNxD)
  np.testing.assert_array_equal(restored_BxNxD, expected)


def test_random_masking_is_per_sample_and_uniform():
  _, mask, _ = masks.random_masking(jax.random.key(1), 20, 0.75, 4000)
  assert not np.array_equal(mask[0], mask[1])
  freq = np.asarray(mask).mean(axis=0)
  np.testing.assert_allclose(freq, 0.75, atol=0.03)


def test_random_masking_rejects_bad_ratio():
  with pytest.raises(ConfigError):
    masks.random_masking(jax.random.key(0), 10, 1.5, 2)


def test_maskgit_schedule_endpoints_and_monotone():
  t = jnp.linspace(0, 1, 101)
  gamma = masks.maskgit_schedule(t)
  np.testing.assert_allclose(gamma[0], 1.0)
  np.testing.assert_allclose(gamma[-1], 0.0, atol=1e-7)
  assert np.all(np.diff(np.asarray(gamma)) <= 0)
  np.testing.assert_allclose(masks.maskgit_schedule(0.5), math.cos(math.pi / 4), rtol=1e-6)
  np.testing.assert_allclose(masks.maskgit_schedule(2.0), 0.0, atol=1e-7)


def _num_masked_reference(total_steps, n_tokens):
  """The recursion m_s = max(0, min(floor(N cos(pi/2 (s+1)/T)), m_{s-1} - 1)), m_{-1} = N."""
  out, prev = [], n_tokens
  for s in range(total_steps):
    target = (
      0
      if s == total_steps - 1
      else math.floor(n_tokens * math.cos(math.pi / 2 * (s + 1) / total_steps))
    )
    prev = max(0, min(target, prev - 1))
    out.append(prev)
  return out


@settings(max_examples=10, deadline=None)
@given(total_steps=st.integers(1, 24), n_tokens=st.integers(1, 300))
def test_num_masked_decodes_at_least_one_token_per_step(total_steps, n_tokens):
  counts = np.asarray(
    jax.jit(jax.vmap(masks.num_masked, in_axes=(0, None, None)), static_argnums=(1, 2))(
      jnp.arange(total_steps), total_steps, n_tokens
    )
  )
  np.testing.assert_array_equal(counts, _num_masked_reference(total_steps, n_tokens))
  assert counts[-1] == 0
  prev = np.concatenate([[n_tokens], counts[:-1]])
  revealed = prev - counts
  assert np.all(counts >= 0)
  assert np.all(revealed[prev > 0] >= 1)
  for s, c in enumerate(counts[:-1]):
    assert c <= math.floor(n_tokens * math.cos(math.pi / 2 * (s + 1) / total_steps))


def test_num_masked_works_with_traced_step_in_fori_loop():
  def body(step, acc):
    return acc + masks.num_masked(step, 8, 256)

  total = jax.jit(lambda: jax.lax.fori_loop(0, 8, body, jnp.int32(0)))()
  assert int(total) == sum(_num_masked_reference(8, 256))
  assert _num_masked_reference(8, 256)[0] == math.floor(256 * math.cos(math.pi / 16))


@_SETTINGS
@given(
  total=st.integers(1, 1000),
  final=st.floats(0.0, 1.0),
  power=st.sampled_from([1.0, 2.0, 3.0]),
)
def test_sparsity_schedule_monotone_and_hits_final(total, final, power):
  # A fixed number of steps (sorted, with 0, total and beyond) so eager ops are not recompiled.
  steps = np.sort(np.concatenate([np.linspace(-2, total + 5, 61).round(), [0, total, total + 1]]))
  s = np.asarray(masks.sparsity_schedule(jnp.asarray(steps, jnp.int32), total, final, power))
  assert np.all(np.diff(s) >= -1e-7)
  assert np.all((s >= 0) & (s <= final + 1e-6))
  np.testing.assert_allclose(s[steps <= 0], 0.0, atol=1e-7)
  np.testing.assert_allclose(s[steps >= total], final, rtol=1e-6, atol=1e-7)


def test_sparsity_schedule_is_cubic():
  np.testing.assert_allclose(masks.sparsity_schedule(50, 100, 0.9), 0.9 * (1 - 0.5**3), rtol=1e-6)
  np.testing.assert_allclose(masks.sparsity_schedule(25, 100, 0.8, power=1), 0.2, rtol=1e-6)
  with pytest.raises(ConfigError):
    masks.sparsity_schedule(0, 0, 0.5)
  with pytest.raises(ConfigError):
    masks.sparsity_schedule(0, 10, 1.5)
