"""The DDPM U-Net: the paper's parameter count, shapes, per-layer widths, masks, configs."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shared.errors import ConfigError
from shared.models import unet


def test_cifar10_config_has_the_papers_35_7m_params():
  model = unet.from_config_dict(unet.preset("cifar10"))
  params = unet.abstract_params(model)  # jax.eval_shape: nothing materialised
  assert unet.num_params(params) == 35_746_307  # google/ddpm-cifar10-32
  assert params["conv_in"]["kernel"].shape == (3, 3, 3, 128)
  assert params["up_0_res_0"]["conv1"]["kernel"].shape == (3, 3, 256 + 128, 128)
  assert params["down_1_attn_0"]["q"]["kernel"].shape == (256, 256)
  assert "down_1_attn_1" in params and "down_0_attn_0" not in params  # attention at 16x16 only


def test_small_presets_are_cpu_sized():
  n = unet.num_params(unet.abstract_params(unet.from_config_dict(unet.preset("small32"))))
  assert 1_000_000 < n < 2_000_000


@pytest.fixture(scope="module")
def tiny():
  """tiny8 with dropout 0.5, non-zero params, inputs, and one jitted apply shared by the tests."""
  model = unet.from_config_dict(unet.preset("tiny8", dropout=0.5))
  params = jax.tree.map(lambda p: p + 0.1, unet.init_params(model, 0))  # conv2 would hide dropout
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 8, 1))
  t = jnp.array([0, 10, 999])
  apply = jax.jit(model.apply, static_argnames="train")
  return model, params, x, t, apply


def test_forward_shape_and_dtype(tiny):
  model, params, x, t, apply = tiny
  chex.assert_trees_all_equal_dtypes(params, jax.tree.map(lambda p: p.astype(jnp.float32), params))
  y = apply({"params": params}, x, t)
  chex.assert_shape(y, (3, 8, 8, 1))
  assert y.dtype == jnp.float32 and np.all(np.isfinite(y))
  bf16 = unet.from_config_dict(unet.preset("tiny8", dropout=0.5), dtype=jnp.bfloat16)
  y16 = jax.jit(bf16.apply)({"params": params}, x, t)  # bf16 compute, f32 params and output
  assert y16.dtype == jnp.float32
  np.testing.assert_allclose(y16, y, atol=0.1 * float(jnp.abs(y).max()))


def test_dropout_is_used_when_training(tiny):
  _, params, x, t, apply = tiny
  run = lambda k: apply({"params": params}, x, t, train=True, rngs={"dropout": k})
  assert not np.allclose(run(jax.random.PRNGKey(1)), run(jax.random.PRNGKey(2)))
  once = apply({"params": params}, x, t)
  np.testing.assert_array_equal(once, apply({"params": params}, x, t))


def test_per_layer_widths_set_the_shapes_of_exactly_their_layers():
  base = unet.preset("tiny8")
  small = unet.from_config_dict({**base, "widths": {"down_0_res_0.inner": 4, "conv_in.out": 6}})
  p = unet.abstract_params(small)
  assert p["down_0_res_0"]["conv1"]["kernel"].shape == (3, 3, 6, 4)  # reads the 6-wide stream
  assert p["down_0_res_0"]["temb_proj"]["kernel"].shape == (32, 4)
  assert p["down_0_res_0"]["norm2"]["scale"].shape == (4,)
  assert p["down_0_res_0"]["conv2"]["kernel"].shape == (3, 3, 4, 6)
  assert p["conv_in"]["kernel"].shape == (3, 3, 1, 6)
  assert p["up_0_res_1"]["conv1"]["kernel"].shape == (3, 3, 8 + 6, 8)  # the skip from conv_in
  assert (
    p["down_0_res_0"].keys()
    == unet.abstract_params(unet.from_config_dict(base))["down_0_res_0"].keys()
  )


def test_config_dict_round_trips_through_json():
  model = unet.from_config_dict({**unet.preset("tiny8"), "widths": {"temb.hidden": 20}})
  again = unet.from_config_dict(json.loads(json.dumps(unet.config_dict(model))))
  assert again == model


def test_bad_widths_are_config_errors():
  with pytest.raises(ConfigError, match="no_such_group"):
    unet.from_config_dict({**unet.preset("tiny8"), "widths": {"no_such_group": 3}})
  with pytest.raises(ConfigError, match="positive"):
    unet.from_config_dict({**unet.preset("tiny8"), "widths": {"temb.out": 0}})
  with pytest.raises(ConfigError, match="preset"):
    unet.preset("huge")


def test_all_ones_masks_change_nothing(tiny):
  model, params, x, t, apply = tiny
  masks = {name: jnp.ones(w) for name, w in unet.layout(model).widths.items()}
  np.testing.assert_allclose(
    apply({"params": params}, x, t, masks=masks), apply({"params": params}, x, t), atol=1e-5
  )


def test_timestep_embedding_is_ddpms():
  t = jnp.array([0, 1, 999])
  emb = np.asarray(unet.timestep_embedding(t, 8))
  freqs = np.exp(-np.log(10000.0) * np.arange(4) / 3)
  want = np.concatenate(
    [np.sin(np.outer([0, 1, 999], freqs)), np.cos(np.outer([0, 1, 999], freqs))], 1
  )
  np.testing.assert_allclose(emb, want, atol=2e-4)


def test_mask_product_is_rounded_once_in_bfloat16():
  # x * m in float32, then one rounding to bfloat16: within half an ulp of the exact product
  # (rounding m to bfloat16 first, as before, gave up to twice that).
  from shared.models.unet import _mask

  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=4096), jnp.bfloat16)
  m = jnp.asarray(rng.uniform(0.9, 1.0, size=4096), jnp.float32)
  exact = np.asarray(x, np.float64) * np.asarray(m, np.float64)
  got = np.asarray(_mask(x, m), np.float64)
  assert _mask(x, m).dtype == jnp.bfloat16
  half_ulp = np.ldexp(1.0, np.frexp(exact)[1] - 9)  # bfloat16: 8 significant bits
  assert np.all(np.abs(got - exact) <= half_ulp)
  rounded_first = np.asarray(x * m.astype(jnp.bfloat16), np.float64)
  assert np.any(np.abs(rounded_first - exact) > half_ulp)
