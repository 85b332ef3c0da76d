"""Surgery: the physically pruned U-Net computes what the masked big one does, for valid masks."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradflow_prune import evaluate, surgery
from shared import train_lib
from shared.models import unet

CONFIGS = {
  # tiny: 2 levels, attention at 4x4, 2 GroupNorm groups
  "tiny8": unet.preset("tiny8"),
  # attention at two resolutions, width multipliers giving non-power-of-2 widths and concats
  # whose GroupNorm groups straddle two streams (24*3 + 24*2 = 120 channels in 4 groups of 30)
  "attn2": unet.preset(
    "small32", ch=8, ch_mult=(1, 2, 3), num_res_blocks=1, attn_resolutions=(16, 8),
    resolution=16, num_groups=4, in_channels=3, out_channels=3,
  ),
  # the mid block's attention only, 2 res blocks per level, 3 GroupNorm groups
  "deep": unet.preset(
    "tiny8", ch=12, ch_mult=(1, 2), num_res_blocks=2, attn_resolutions=(), num_groups=3,
  ),
}  # fmt: skip


def perturbed_params(model, seed):
  """Random params with the zero-initialised layers made non-zero (else they hide errors)."""
  params = unet.init_params(model, seed)
  leaves, treedef = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(
    treedef, [p + 0.1 * rng.standard_normal(p.shape).astype(np.float32) for p in leaves]
  )


def random_masks(groups, rng):
  """Any masks surgery accepts: per GroupNorm component a random keep count, random channels."""
  keep = {}
  masks = {}
  for g in groups:
    q = keep.setdefault(g.component, int(rng.integers(1, g.unit + 1)))
    if g.unit == g.size:  # read by no GroupNorm: its own random count
      q = int(rng.integers(1, g.size + 1))
    m = np.zeros((g.size // g.unit, g.unit), np.float32)
    for row in m:
      row[rng.choice(g.unit, q, replace=False)] = 1
    masks[g.name] = m.reshape(-1)
  return masks


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_pruned_model_equals_masked_model_for_random_masks(name):
  cfg = CONFIGS[name]
  big = unet.from_config_dict(cfg)
  params = perturbed_params(big, seed=1)
  groups = surgery.channel_groups(cfg)
  rng = np.random.default_rng(0)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, big.resolution, big.resolution, big.in_channels))
  t = jnp.array([3, 801])
  apply_big = jax.jit(lambda p, m: big.apply({"params": p}, x, t, masks=m))
  dense = apply_big(params, groups.ones())
  masks = random_masks(groups, rng)
  small_cfg, small_params = surgery.apply_masks(cfg, params, masks)
  small = unet.from_config_dict(small_cfg)
  want = apply_big(params, masks)
  got = jax.jit(lambda p: small.apply({"params": p}, x, t))(small_params)
  scale = float(jnp.abs(want).max())
  np.testing.assert_allclose(got, want, atol=2e-5 * max(scale, 1))
  assert float(jnp.abs(want - dense).max()) > 1e-3  # the masks did change the function
  assert unet.num_params(small_params) < unet.num_params(params)
  assert evaluate.unet_macs(small_cfg) < evaluate.unet_macs(cfg)


def test_groupnorm_constraint_is_kept():
  cfg = CONFIGS["attn2"]
  groups = surgery.channel_groups(cfg)
  rng = np.random.default_rng(3)
  masks = surgery.masks_from_scores(
    groups, {g.name: rng.normal(size=g.size) for g in groups}, keep_ratio=0.55
  )
  lay = unet.layout(unet.from_config_dict(cfg))
  straddling = 0
  for nr in unet.norm_reads(lay):
    m = np.concatenate([masks[g] for g in nr.groups])
    per_group = m.reshape(cfg["num_groups"], -1).sum(1)
    assert per_group.min() == per_group.max() >= 1, (nr.path, per_group)
    size = len(m) // cfg["num_groups"]
    bounds = np.cumsum([lay.width(g) for g in nr.groups])[:-1]
    straddling += int(np.any(bounds % size))
  assert straddling > 0  # the config does exercise GroupNorm groups spanning two streams
  small_cfg, _ = surgery.apply_masks(cfg, perturbed_params(unet.from_config_dict(cfg), 0), masks)
  small_lay = unet.layout(unet.from_config_dict(small_cfg))
  for nr in unet.norm_reads(small_lay):
    assert sum(small_lay.width(g) for g in nr.groups) % cfg["num_groups"] == 0


def test_masks_from_scores_keeps_the_top_scores_in_every_unit():
  groups = surgery.channel_groups(CONFIGS["tiny8"])
  scores = {g.name: np.arange(g.size, dtype=float)[::-1].copy() for g in groups}
  masks = surgery.masks_from_scores(groups, scores, keep_ratio=0.5)
  for g in groups:
    m = masks[g.name].reshape(-1, g.unit)
    q = groups.keep_per_unit(g.name, 0.5)
    np.testing.assert_array_equal(m[:, :q], 1)  # descending scores: the first q of each unit
    np.testing.assert_array_equal(m[:, q:], 0)


def test_bad_masks_are_refused():
  cfg = CONFIGS["tiny8"]
  groups = surgery.channel_groups(cfg)
  params = perturbed_params(unet.from_config_dict(cfg), 0)
  soft = {**groups.ones(), "conv_in.out": np.full(groups["conv_in.out"].size, 0.5, np.float32)}
  with pytest.raises(ValueError, match="not binary"):
    surgery.apply_masks(cfg, params, soft)
  uneven = groups.ones()
  uneven["conv_in.out"][0] = 0  # one unit loses a channel, the other does not
  with pytest.raises(ValueError, match="per unit"):
    surgery.apply_masks(cfg, params, uneven)


def test_diff_pruning_ratio_on_the_cifar10_unet():
  """Ratio 0.3 removes 1 of every 4 channels per GroupNorm group: 128 -> 96, 256 -> 192."""
  cfg = unet.preset("cifar10")
  groups = surgery.channel_groups(cfg)
  # GroupNorm groups of 4 (128 channels) and 8 (256), and 4 where a 384-wide skip concat couples
  # two streams; the two streams that only feed an upsampling conv are free (one unit of 256).
  assert {g.unit for g in groups if g.kind == "stream"} == {4, 8, 256}
  masks = surgery.masks_from_scores(groups, {g.name: np.zeros(g.size) for g in groups}, 0.7)
  small = {g.name: int(masks[g.name].sum()) for g in groups}
  assert small["conv_in.out"] == 96 and small["down_1_res_0.out"] == 192
  assert small["down_1_res_0.inner"] == 192 and small["up_3_res_2.out"] == round(0.7 * 256)
  widths = {k: v for k, v in small.items() if v != groups[k].size}
  small_cfg = {**cfg, "widths": widths}
  n_small = unet.num_params(unet.abstract_params(unet.from_config_dict(small_cfg)))
  assert 19.0e6 < n_small < 21.0e6  # Diff-Pruning: 35.7M -> 19.8M
  macs, small_macs = evaluate.unet_macs(cfg), evaluate.unet_macs(small_cfg)
  assert 6.0e9 < macs < 6.3e9 and 0.5 < small_macs / macs < 0.6  # Diff-Pruning: 6.1G -> 3.4G


def test_macs_agree_with_xla_cost_analysis():
  cfg = CONFIGS["tiny8"]
  ratio = evaluate.xla_flops(cfg) / (2 * evaluate.unet_macs(cfg))
  assert 0.8 < ratio < 1.5, ratio


def test_pruned_checkpoint_reloads_with_its_own_config(tmp_path):
  cfg = CONFIGS["tiny8"]
  big = unet.from_config_dict(cfg)
  groups = surgery.channel_groups(cfg)
  masks = surgery.masks_from_scores(groups, random_masks(groups, np.random.default_rng(1)), 0.5)
  small_cfg, small_params = surgery.apply_masks(cfg, perturbed_params(big, 2), masks)
  (tmp_path / "unet_config.json").write_text(json.dumps(small_cfg))
  ckpt = train_lib.Checkpointer(str(tmp_path / "ckpt"))
  ckpt.save(7, {"params": small_params})
  ckpt.close()
  # A fresh process would do exactly this: the config from JSON, a target of its shapes, restore.
  model = unet.from_config_dict(json.loads((tmp_path / "unet_config.json").read_text()))
  target = {"params": unet.init_params(model, 0)}
  restored = train_lib.Checkpointer(str(tmp_path / "ckpt")).restore(7, target)["params"]
  jax.tree.map(np.testing.assert_array_equal, restored, jax.device_get(small_params))
  with pytest.raises(Exception, match="cannot be restored"):  # the big shapes do not fit
    train_lib.Checkpointer(str(tmp_path / "ckpt")).restore(7, {"params": unet.init_params(big, 0)})


def test_count_macs_counts_convs_dots_and_scan_repeats():
  x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
  k = jax.ShapeDtypeStruct((3, 3, 3, 5), jnp.float32)
  conv = lambda x, k: jax.lax.conv_general_dilated(
    x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  assert evaluate.count_macs(conv, x, k) == 2 * 8 * 8 * 5 * (3 * 3 * 3)
  loop = lambda a: jax.lax.scan(lambda c, _: (c @ c, None), a, None, length=3)[0]
  assert evaluate.count_macs(loop, jnp.ones((4, 4))) == 3 * 4 * 4 * 4
