"""MCAE: SupCon against numpy, masking and the masked-patch loss in the pre-training path, method
overrides, frozen layers, the sharded step, and `tiny` end to end (the bed's read-out:
test_mcae_bed.py; the paper path and bad input: test_mcae_paper.py)."""

import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.mcae import get_config
from mcae import classifiers, methods, pretrain_loss
from mcae.supcon import positive_groups, supcon_loss
from shared import config_utils, train_lib
from shared.data import fas_proxy
from shared.errors import ConfigError
from shared.masks import random_masking
from shared.models.vit import mae_loss, patchify, unpatchify

KEY = jax.random.PRNGKey(0)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**pretrain_overrides):
  cfg = get_config("tiny")
  cfg.unlock()
  cfg.pretrain.update(pretrain_overrides)
  return cfg


def images(batch=4, side=16, seed=0):
  return jax.random.uniform(jax.random.PRNGKey(seed), (batch, side, side, 3))


# ----------------------------------------------------------------------------------------------
# SupCon.


def supcon_numpy(features, groups, temperature):
  """Khosla et al. eq. 2 (L_out^sup), one anchor and one positive at a time."""
  z = features / np.linalg.norm(features, axis=1, keepdims=True)
  n = len(z)
  losses = []
  for i in range(n):
    positives = [p for p in range(n) if p != i and groups[p] == groups[i]]
    if not positives:
      continue
    denominator = sum(np.exp(z[i] @ z[a] / temperature) for a in range(n) if a != i)
    terms = [np.log(np.exp(z[i] @ z[p] / temperature) / denominator) for p in positives]
    losses.append(-np.mean(terms))
  return np.mean(losses)


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_supcon_matches_direct_numpy(temperature):
  rng = np.random.default_rng(0)
  features = rng.normal(size=(12, 5))
  groups = np.array([0, 0, 1, 1, 1, 2, 3, 3, 0, 2, 4, 5])  # 4 and 5 have no positive
  loss_and_grad = jax.jit(jax.value_and_grad(supcon_loss), static_argnums=2)
  got, grads = loss_and_grad(jnp.asarray(features, jnp.float32), jnp.asarray(groups), temperature)
  np.testing.assert_allclose(float(got), supcon_numpy(features, groups, temperature), rtol=1e-5)
  assert np.isfinite(np.asarray(grads)).all()


def test_supcon_two_views_as_supcontrast_stacks_them():
  """[bsz, n_views, d] features with labels, stacked view-major as SupContrast does."""
  rng = np.random.default_rng(1)
  feats_BxVxD = rng.normal(size=(6, 2, 8))
  labels = np.array([0, 1, 0, 2, 1, 1])
  stacked = np.concatenate([feats_BxVxD[:, 0], feats_BxVxD[:, 1]])
  got = supcon_loss(jnp.asarray(stacked), jnp.tile(jnp.asarray(labels), 2), 0.1)
  np.testing.assert_allclose(float(got), supcon_numpy(stacked, np.tile(labels, 2), 0.1), rtol=1e-5)
  # With each sample its own group, SupCon is SimCLR's NT-Xent (the other view is the positive).
  own = np.tile(np.arange(6), 2)
  simclr = supcon_loss(jnp.asarray(stacked), jnp.asarray(own), 0.1)
  np.testing.assert_allclose(float(simclr), supcon_numpy(stacked, own, 0.1), rtol=1e-5)


def test_positive_groups_rules():
  label = np.array([1, 1, 1, 0, 0, 0, 0])
  domain = np.array([0, 1, 2, 0, 0, 1, 1])
  attack = np.array([0, 0, 0, 1, 2, 1, 1])
  g = np.asarray(positive_groups(label, domain, attack, spoof="domain_attack", num_domains=3))
  assert g[0] == g[1] == g[2]  # live: one group across all domains
  assert len({g[3], g[4], g[5]}) == 3 and g[5] == g[6]  # spoof: per (domain, attack)
  assert not set(g[:3]) & set(g[3:])
  g = np.asarray(positive_groups(label, domain, attack, spoof="class", num_domains=3))
  assert len(set(g[3:])) == 1 and g[3] != g[0]
  g = np.asarray(positive_groups(label, domain, attack, live="domain", num_domains=3))
  assert len(set(g[:3])) == 3
  with pytest.raises(ConfigError, match="spoof positives"):
    positive_groups(label, domain, attack, spoof="nope")


# ----------------------------------------------------------------------------------------------
# Masking and the MAE term, through the pre-training backbones.


def run_backbone(mae_weight):
  """The pre-training backbone on a batch, on the batch with its masked patches replaced, and on
  the batch with its kept patches replaced (same key, so the same mask)."""
  cfg = tiny_config(mae_weight=mae_weight, mask_ratio=0.75)
  net = pretrain_loss.backbone(cfg.model, cfg.pretrain, jnp.float32)
  x = images()  # 16 patches of 4x4; K = 4 kept
  key = jax.random.PRNGKey(3)
  params = jax.jit(net.init)(jax.random.PRNGKey(0), x, key)["params"]
  apply = jax.jit(
    lambda imgs: net.apply({"params": params}, imgs, key, capture_intermediates=True, mutable=True)
  )
  _, mask, _ = random_masking(key, 16, 0.75, 4)
  noise = patchify(images(seed=9), 4)
  replace = lambda where: unpatchify(jnp.where(where[..., None], noise, patchify(x, 4)), 4)
  return x, mask, [apply(imgs) for imgs in (x, replace(mask == 1), replace(mask == 0))]


@pytest.fixture(scope="module")
def mae_backbone():
  return run_backbone(1.0)


@pytest.mark.parametrize("mae_weight", [1.0, 0.0])
def test_backbone_encodes_exactly_the_kept_tokens(mae_weight, mae_backbone):
  _, mask, outputs = mae_backbone if mae_weight else run_backbone(0.0)
  pooled = [out[-1] if mae_weight else out for out, _ in outputs]
  encoder_out = outputs[0][1]["intermediates"]["encoder"]["__call__"][0]
  chex.assert_shape(encoder_out, (4, 1 + 4, 32))  # cls + the 4 kept tokens
  if mae_weight:
    np.testing.assert_array_equal(outputs[0][0][1], mask)
  # Masked patches never reach the encoder: replacing their pixels leaves the features alone
  # (so SupCon sees the visible tokens only); replacing the kept patches does not.
  np.testing.assert_allclose(pooled[1], pooled[0], atol=1e-6)
  assert np.abs(np.asarray(pooled[2]) - np.asarray(pooled[0])).max() > 1e-3


def test_reconstruction_loss_reaches_only_masked_patches(mae_backbone):
  x, mask, outputs = mae_backbone
  pred = outputs[0][0][0]
  grad = jax.jit(jax.grad(lambda p: mae_loss(p, patchify(x, 4), mask)))(pred)
  touched = np.abs(np.asarray(grad)).sum(-1) > 0
  np.testing.assert_array_equal(touched, np.asarray(mask) == 1)
  assert np.asarray(mask).sum(1).tolist() == [12] * 4


def test_pretrain_loss_weights_select_the_terms():
  """Which terms and parameters each pre-training method has (shapes only: nothing compiles)."""
  batch = {
    "image": images(batch=8),
    "label": jnp.array([1, 0] * 4),
    "domain": jnp.array([0, 0, 1, 1, 2, 2, 0, 1]),
    "attack": jnp.array([0, 1, 0, 2, 0, 1, 0, 2]),
  }
  expected = {(1.0, 0.5): {"mae_loss", "supcon_loss"}, (1.0, 0.0): {"mae_loss"}}
  expected[(0.0, 1.0)] = {"supcon_loss"}
  for (mae_weight, supcon_weight), terms in expected.items():
    cfg = tiny_config(mae_weight=mae_weight, supcon_weight=supcon_weight)
    init = pretrain_loss.init_params(cfg.model, cfg.pretrain, jnp.float32, (16, 16, 3))
    params, _ = jax.eval_shape(init, jax.random.PRNGKey(0))
    assert ("projection" in params) == (supcon_weight > 0)
    assert ("decoder" in params["backbone"]) == (mae_weight > 0)
    loss_fn = pretrain_loss.make_loss(
      cfg.model, cfg.pretrain, jnp.float32, num_domains=4, num_attacks=3
    )
    loss, (metrics, _) = jax.eval_shape(loss_fn, params, {}, batch, jax.random.PRNGKey(1))
    assert set(metrics) == terms and loss.shape == ()


# ----------------------------------------------------------------------------------------------
# Fine-tuning and methods.


def test_frozen_layers_get_no_update():
  cfg = tiny_config()
  cfg.model.depth = 2
  model = classifiers.vit_classifier(cfg.model, jnp.float32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images(2), train=False))
  params = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), shapes["params"])
  base = train_lib.make_optimizer(cfg.finetune.optimizer, 10)
  tx = classifiers.optimizer(base, cfg.model, train_blocks=1)
  grads = jax.tree.map(jnp.ones_like, params)
  opt_state = jax.jit(tx.update)(grads, tx.init(params), params)[1]  # warm-up's first lr is 0
  updates, _ = jax.jit(tx.update)(grads, opt_state, params)
  moved = jax.tree.map(lambda u: bool(jnp.any(u != 0)), updates)
  enc = moved["encoder"]
  assert moved["head"]["kernel"] and enc["block_1"]["mlp"]["fc1"]["kernel"] and enc["norm"]["scale"]
  assert not any(jax.tree.leaves(enc["block_0"])) and not enc["patch_embed"]["kernel"]
  assert not enc["cls_token"]
  with pytest.raises(ConfigError, match="train_blocks"):
    classifiers.trainable_labels(params, 3, depth=2)


def test_method_specs_and_overrides():
  cfg = get_config(None)
  base, overrides = methods.parse_method("mcae:pretrain.mask_ratio=0.9;finetune.train_blocks=0")
  assert base == "mcae" and overrides == [
    ("pretrain.mask_ratio", "0.9"),
    ("finetune.train_blocks", "0"),
  ]
  mcfg = methods.method_config(cfg, "mcae:pretrain.mask_ratio=0.9;finetune.train_blocks=0")
  assert mcfg.pretrain.mask_ratio == 0.9 and mcfg.finetune.train_blocks == 0
  assert cfg.pretrain.mask_ratio == 0.75  # the run's config is untouched
  assert methods.pretrain_config(mcfg, "mae_ft").supcon_weight == 0.0
  supcon = methods.pretrain_config(cfg, "supcon_ft")
  assert supcon.mae_weight == 0.0 and supcon.mask_ratio == cfg.baselines.supcon_mask_ratio
  for bad, words in [
    ("nope", "unknown method"),
    ("mcae:pretrain.no_field=1", "no config field"),
    ("mcae:pretrain.mask_ratio=high", "not a float"),
    ("mcae:pretrain", "not 'field=value'"),
  ]:
    with pytest.raises(ConfigError, match=words):
      methods.method_config(cfg, bad)


# ----------------------------------------------------------------------------------------------
# Sharding and the command line.


def test_sharded_pretrain_step_equals_single_device_step():
  assert jax.device_count() == 8, "tests/conftest.py sets 8 virtual CPU devices"
  cfg = tiny_config(supcon_weight=0.5)
  init = pretrain_loss.init_params(cfg.model, cfg.pretrain, jnp.float32, (16, 16, 3))
  loss_fn = pretrain_loss.make_loss(
    cfg.model, cfg.pretrain, jnp.float32, num_domains=4, num_attacks=3
  )
  # Plain SGD: the update is the gradient itself, so the comparison is not blurred by Adam's
  # normalisation of near-zero gradients (reduction order differs between the two meshes).
  sgd = config_utils.optimizer_config(name="sgd", lr=0.5, momentum=0.0, schedule="constant")
  tx = train_lib.make_optimizer(sgd, 10)
  rng = np.random.default_rng(0)
  batch = {
    "image": rng.uniform(size=(16, 16, 16, 3)).astype(np.float32),
    "label": rng.integers(0, 2, 16).astype(np.int32),
    "domain": rng.integers(0, 3, 16).astype(np.int32),
    "attack": rng.integers(1, 3, 16).astype(np.int32),
  }
  batch["attack"] = np.where(batch["label"] == 1, 0, batch["attack"]).astype(np.int32)
  params = jax.device_get(jax.jit(init)(jax.random.PRNGKey(0))[0])  # host copy: steps donate
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = train_lib.make_mesh(devices=devices)
    sharding = train_lib.batch_sharding(mesh)
    state = train_lib.TrainState.create(
      params=jax.device_put(params, train_lib.replicated(mesh)),
      tx=tx,
      rng=jax.device_put(jax.random.PRNGKey(1), train_lib.replicated(mesh)),
    )
    state_sharding = train_lib.state_shardings(state, mesh)
    step = train_lib.make_step(train_lib.loss_step(loss_fn), state_sharding, sharding)
    state, metrics = step(state, train_lib.global_batch(batch, sharding))
    results.append(jax.device_get((state.params, metrics)))
  (p1, m1), (p8, m8) = results
  assert m1["mae_loss"] > 0 and m1["supcon_loss"] > 0 and m1["grad_norm"] > 0
  np.testing.assert_allclose(m1["loss"], m1["mae_loss"] + 0.5 * m1["supcon_loss"], rtol=1e-6)
  chex.assert_trees_all_close(m8, m1, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(p8, p1, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_tiny_end_to_end_and_resume(tmp_path):
  cmd = [
    sys.executable,
    "-m",
    "mcae",
    "--config",
    "configs/mcae.py:tiny",
    "--workdir",
    str(tmp_path),
  ]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "mcae: done" in proc.stdout
  results = json.loads((tmp_path / "results.json").read_text())
  metrics = results["metrics"]
  methods = get_config("tiny").methods
  runs = json.loads((tmp_path / metrics["runs_file"]).read_text())["runs"]
  assert len(runs) == len(methods) and {r["method"] for r in runs} == set(methods)
  for m in methods:
    assert 0.0 <= metrics[f"{m}/mean_hter_eer"] <= 1.0
    assert 0.0 <= metrics[f"{m}/mean_auc"] <= 1.0
    assert (tmp_path / "seed_0" / "d1_d2_d3-to-d0" / m / "subrun.json").exists()
  rows = {(r["method"], r["held_out"]) for r in metrics["table"]}
  assert rows == {(m, p) for m in methods for p in ("d1&d2&d3->d0", "mean")}
  assert all(r["name"] == f"{r['method']} | {r['held_out']}" for r in metrics["table"])
  assert metrics["lowest_mean_hter_eer"] in methods
  assert (tmp_path / "roc_d1_d2_d3-to-d0.png").stat().st_size > 1000
  table = (tmp_path / "table.md").read_text()
  assert "Frame HTER % at the threshold fixed on source val data (honest)" in table
  assert "Video HTER % at the test videos' own EER threshold (field's; oracle)" in table
  videos = len(np.unique(fas_proxy.video_ids(30, 3)))  # 30 test frames, 3 per video: 12 videos
  assert all(r["num_test_videos"] == videos for r in runs)
  for r in runs:  # compute: pre-training steps x batch + classifier steps run x batch
    assert 0 < r["steps"] <= r["max_steps"] and r["selected_step"] <= r["steps"]
    pre = r["pretrain_steps"] * r["pretrain_batch_size"]
    assert r["examples_seen"] == pre + r["steps"] * r["batch_size"]
  assert "compute (steps x batch)" in table
  for r in runs:  # the mechanism check on the frozen pre-trained encoders only
    pretrained = get_config("tiny").method_table[r["method"]].pretrain is not None
    assert ("live_mmd" in r) == pretrained
    if pretrained:
      assert 0 <= r["live_domain_acc"] <= 1 and r["live_domain_chance"] == 0.25
  assert "Mechanism check" in table
  pretrain_dirs = [d for d in os.listdir(tmp_path / "seed_0" / "d1_d2_d3-to-d0") if "pretrain" in d]
  assert len(pretrain_dirs) == 3  # MAE, SupCon and MCAE pre-training
  # Re-running the same command finds every sub-run done and reports the same numbers.
  again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert json.loads((tmp_path / "results.json").read_text())["metrics"]["table"] == metrics["table"]
  # A bad method spec is one line and exit code 2 before anything trains.
  bad = subprocess.run(
    [*cmd[:-1], str(tmp_path / "bad"), "--config.methods=('mcae:pretrain.nope=1',)"],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: ")
  assert "nope" in bad.stderr


@pytest.mark.parametrize("variant", [None, "ablations", "compare", "ceiling", "paper"])
def test_every_variant_builds_its_stages(variant):
  """Each variant's models, losses and optimizers fit together (shapes only, nothing compiles)."""
  cfg = get_config(variant)
  side = cfg.data.options.get("resolution", cfg.data.options.get("image_size"))
  shape = (side, side, 3)
  assert side % cfg.model.patch_size == 0
  dtype = train_lib.compute_dtype(cfg.run.dtype)
  batch = {
    "image": jax.ShapeDtypeStruct((8, *shape), jnp.float32),
    **{k: jax.ShapeDtypeStruct((8,), jnp.int32) for k in ("label", "domain", "attack")},
  }
  seen = set()  # trace each distinct stage once (tracing ViT-B is slow)
  for spec in cfg.methods:
    base, _ = methods.parse_method(spec)
    mcfg = methods.method_config(cfg, spec)
    if variant == "ablations" and spec != "mcae":
      continue  # the ablations only change values; their specs were parsed above
    if cfg.method_table[base].pretrain is not None:
      pcfg = methods.pretrain_config(mcfg, base)
      params, _ = jax.eval_shape(pretrain_loss.init_params(mcfg.model, pcfg, dtype, shape), KEY)
      loss_fn = pretrain_loss.make_loss(mcfg.model, pcfg, dtype, num_domains=4, num_attacks=3)
      loss, _ = jax.eval_shape(loss_fn, params, {}, batch, KEY)
      assert loss.shape == ()
      jax.eval_shape(train_lib.make_optimizer(pcfg.optimizer, pcfg.num_steps).init, params)
    is_resnet = cfg.method_table[base].classifier == "resnet18"
    if is_resnet in seen:
      continue
    seen.add(is_resnet)
    if is_resnet:
      model = classifiers.resnet18(cfg.method_table[base].width, dtype)
    else:
      model = classifiers.vit_classifier(mcfg.model, dtype)
    params, state = jax.eval_shape(classifiers.init_params(model, shape), KEY)
    blocks = -1 if is_resnet else mcfg.finetune.train_blocks
    opt_cfg = mcfg.resnet.optimizer if is_resnet else mcfg.finetune.optimizer
    base_tx = train_lib.make_optimizer(opt_cfg, mcfg.baselines.supervised_steps)
    tx = classifiers.optimizer(base_tx, mcfg.model, blocks)
    jax.eval_shape(tx.init, params)
    loss, _ = jax.eval_shape(classifiers.make_loss(model, mcfg.finetune), params, state, batch, KEY)
    assert loss.shape == ()
  if variant == "paper":
    assert (cfg.model.size, cfg.model.patch_size, side) == ("B", 16, 224)
    opt = cfg.pretrain.optimizer
    assert (opt.b1, opt.b2, opt.weight_decay) == (0.9, 0.95, 0.05)
    assert opt.lr == pytest.approx(1.5e-4 * cfg.pretrain.batch_size / 256)
    assert cfg.data.name == "fas_json"


def test_method_table_is_config_data_and_seeds_argument():
  """The README's `configs/mcae.py:compare,seeds=5`; spec values parse as `--config.x=v` does;
  supcon_ft's mask ratio follows `baselines.supcon_mask_ratio`, also when a spec changes it."""
  cfg = get_config("compare,seeds=5")
  assert cfg.variant == "compare" and cfg.seeds == (0, 1, 2, 3, 4)
  assert get_config("tiny").seeds == (0,) and get_config(None).seeds == (0, 1, 2)
  assert set(cfg.methods) <= set(cfg.method_table)
  mcfg = methods.method_config(cfg, "supcon_ft:baselines.supcon_mask_ratio=0.5;pretrain.flip=false")
  assert methods.pretrain_config(mcfg, "supcon_ft").mask_ratio == 0.5
  assert mcfg.pretrain.flip is False and cfg.pretrain.flip is True
  assert methods.pretrain_config(cfg, "supcon_ft").mask_ratio == 0.0
  assert methods.folder_name("mcae:pretrain.num_steps=100;finetune.num_steps=200") == (
    "mcae__pretrain.num_steps_100_finetune.num_steps_200"
  )
  with pytest.raises(ConfigError, match="no pre-training"):
    methods.pretrain_config(cfg, "vit_scratch")
  with pytest.raises(ConfigError, match="not a int"):
    methods.method_config(cfg, "mcae:finetune.train_blocks=0.5")
