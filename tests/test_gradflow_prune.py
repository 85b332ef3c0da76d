"""Gradient-flow pruning: HVP, criteria, soft-mask flow, schedule, weights import, `tiny`."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradflow_prune import (
  criteria,
  diffusion,
  evaluate,
  plan,
  procedures,
  report,
  surgery,
  toolkit,
  torch_import,
  unet_io,
)
from shared import train_lib
from shared.errors import CheckpointError, DataError
from shared.models import unet
from tests import background

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


E2E_TEST = "test_tiny_end_to_end_via_the_cli"
E2E_ENV = background.cli_env(devices=1)  # what the end-to-end test's resume call runs with

fewer_compiler_optimisations = pytest.fixture(scope="module", autouse=True)(
  background.fewer_compiler_optimisations
)


@pytest.fixture(scope="module", autouse=True)
def tiny_run(request, tmp_path_factory):
  """The `tiny` CLI run, started before this module's first test (see tests/background.py);
  `test_tiny_end_to_end_via_the_cli` (last) waits for it."""
  args = ["gradflow_prune", "--config", "configs/gradflow_prune.py:tiny"]
  yield from background.cli_run(
    request, tmp_path_factory, E2E_TEST, "gradflow_tiny", args, devices=1
  )


@pytest.fixture(scope="module")
def setup():
  """A tiny U-Net with non-trivial params, its groups, a scorer and a fixed scoring batch."""
  cfg = unet.preset("tiny8")
  model = unet.from_config_dict(cfg)
  rng = np.random.default_rng(0)
  params = jax.tree.map(
    lambda p: p + 0.05 * rng.standard_normal(p.shape).astype(np.float32),
    jax.device_get(unet.init_params(model, 0)),
  )
  sched = diffusion.linear_schedule()
  x0 = jnp.asarray(rng.uniform(-1, 1, (8, 8, 8, 1)), jnp.float32)
  t_B = jnp.asarray(rng.integers(0, 1000, 8), jnp.int32)
  noise = jnp.asarray(rng.standard_normal((8, 8, 8, 1)), jnp.float32)
  groups = surgery.channel_groups(cfg)
  return dict(
    cfg=cfg, model=model, params=params, groups=groups, scorer=criteria.Scorer(model, sched),
    batch=(x0, t_B, noise), sched=sched,
  )  # fmt: skip


def _dot(a, b):
  return sum(
    float(np.vdot(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


def test_grasp_hvp_equals_finite_differences(setup):
  """-theta * (H g) from jax.jvp(jax.grad(L)) matches a central difference of the gradient."""
  s = setup
  ones = s["groups"].ones()
  _, g, _ = s["scorer"].grads(s["params"], ones, *s["batch"])
  grasp = criteria._host(s["scorer"]._grasp(s["params"], ones, *s["batch"]))
  hg_jvp = jax.tree.map(lambda sc, p: -sc / np.where(p == 0, 1, p), grasp, s["params"])
  eps = 1e-2 / np.sqrt(_dot(g, g))  # a step of norm 1e-2 along g
  shift = lambda sign: jax.tree.map(lambda p, v: p + sign * eps * v, s["params"], g)
  _, g_plus, _ = s["scorer"].grads(shift(1), ones, *s["batch"])
  _, g_minus, _ = s["scorer"].grads(shift(-1), ones, *s["batch"])
  hg_fd = jax.tree.map(lambda a, b: (a - b) / (2 * eps), g_plus, g_minus)
  cos = _dot(hg_jvp, hg_fd) / np.sqrt(_dot(hg_jvp, hg_jvp) * _dot(hg_fd, hg_fd))
  rel = np.sqrt(_dot(*[jax.tree.map(np.subtract, hg_jvp, hg_fd)] * 2) / _dot(hg_fd, hg_fd))
  assert cos > 0.999 and rel < 0.05, (cos, rel)
  # g^T H g > 0 here: the loss curves upward along its gradient at this point.
  assert _dot(g, hg_jvp) > 0


def test_hvp_of_a_quadratic_is_exact():
  a = jnp.array([[3.0, 1.0], [1.0, 2.0]])
  loss = lambda p: 0.5 * p["w"] @ a @ p["w"] + jnp.sum(p["w"] ** 3)
  p, v = {"w": jnp.array([0.5, -1.0])}, {"w": jnp.array([1.0, 2.0])}
  want = (a + jnp.diag(6 * p["w"])) @ v["w"]
  np.testing.assert_allclose(criteria.hvp(loss, p, v)["w"], want, rtol=1e-6)


def test_every_criterion_scores_every_channel(setup):
  s = setup
  batches = [s["batch"]]
  out = {}
  for name in criteria.CRITERIA:
    x0, _, noise = s["batch"]
    scores, _ = criteria.importance(
      name, s["groups"], s["params"], scorer=s["scorer"], taylor_batch=(x0, noise),
      taylor_timesteps=range(0, 1000, 250), taylor_thr=0.0, grasp_batches=batches, seed=3,
    )  # fmt: skip
    assert list(scores) == s["groups"].names
    for g in s["groups"]:
      assert scores[g.name].shape == (g.size,) and np.all(np.isfinite(scores[g.name]))
    out[name] = scores
  assert np.all(out["taylor"]["conv_in.out"] >= 0) and np.all(out["magnitude"]["temb.out"] > 0)
  # magnitude of a temb.hidden channel: its column of dense0 (kernel, bias) and row of dense1
  p, c = s["params"], 5
  want = np.sqrt(
    np.sum(p["temb_dense0"]["kernel"][:, c] ** 2)
    + p["temb_dense0"]["bias"][c] ** 2
    + np.sum(p["temb_dense1"]["kernel"][c] ** 2)
  )
  np.testing.assert_allclose(out["magnitude"]["temb.hidden"][c], want, rtol=1e-5)
  again, _ = criteria.importance("random", s["groups"], s["params"], seed=3)
  np.testing.assert_array_equal(again["conv_in.out"], out["random"]["conv_in.out"])
  assert not np.allclose(out["grasp"]["conv_in.out"], out["taylor"]["conv_in.out"])


def test_grasp_sweep_scores_the_loss_taylor_scores(setup):
  """grasp_protocol="sweep": the same timesteps and stop as taylor; on one timestep it equals the
  one-batch GraSP term -theta * (H g) at that t (the old protocol's program)."""
  s = setup
  groups, ones = s["groups"], s["groups"].ones()
  x0, _, noise = s["batch"]
  ts = [0, 400, 800]
  _, t_info = s["scorer"].taylor(groups, s["params"], ones, x0, noise, ts, 1.0)
  _, g_info = s["scorer"].grasp_sweep_removal(groups, s["params"], ones, x0, noise, ts, 1.0)
  assert g_info == t_info
  one, _ = s["scorer"].grasp_sweep_removal(groups, s["params"], ones, x0, noise, [400], 0.0)
  t_B = jnp.full((x0.shape[0],), 400, jnp.int32)
  want = s["scorer"].grasp_removal(groups, s["params"], ones, [(x0, t_B, noise)])
  for name in groups.names:
    np.testing.assert_allclose(one[name], want[name], rtol=2e-3, atol=1e-7)


def test_taylor_stops_at_the_loss_threshold(setup):
  s = setup
  x0, _, noise = s["batch"]
  ts = [0, 200, 400, 600, 800]
  _, full = s["scorer"].taylor(s["groups"], s["params"], s["groups"].ones(), x0, noise, ts, 0.0)
  assert full["timesteps_used"] == 5
  # A threshold of 1 stops at the first t whose loss is below the running maximum.
  _, info = s["scorer"].taylor(s["groups"], s["params"], s["groups"].ones(), x0, noise, ts, 1.0)
  assert info["timesteps_used"] < 5 and info["loss_last"] < info["loss_max"]


def test_soft_mask_flow_descends_the_energy(setup):
  s = setup
  groups, ones = s["groups"], s["groups"].ones()
  removal = {g.name: np.random.default_rng(1).normal(size=g.size) for g in groups}
  _, dm = s["scorer"].mask_grads(s["params"], ones, *s["batch"])
  scale = float(np.mean(np.abs(np.concatenate([v for v in dm.values()]))))
  s_hat = procedures.normalized_removal(removal, groups, scale)
  flat = np.concatenate([s_hat[g] for g in groups.names])
  assert abs(flat.mean()) < 1e-9 and np.isclose(np.abs(flat).mean(), scale)
  masks, energies = procedures.flow(
    ones, s["scorer"].mask_grads, s["params"], s["batch"], s_hat, groups, lam=1.0, eta=0.02,
    n_flow=4,
  )  # fmt: skip
  assert len(energies) == 5 and all(b <= a for a, b in zip(energies, energies[1:], strict=False))
  assert energies[-1] < energies[0]
  # A step far too large is rejected (eta halved) rather than let the energy rise.
  _, big = procedures.flow(
    ones, s["scorer"].mask_grads, s["params"], s["batch"], s_hat, groups, lam=1.0, eta=1.0,
    n_flow=3,
  )  # fmt: skip
  assert all(b <= a for a, b in zip(big, big[1:], strict=False))
  for g in groups:
    assert np.all((masks[g.name] >= 0) & (masks[g.name] <= 1))
  # A strong criterion term drives the masks of the highest-S channels down first.
  strong, _ = procedures.flow(
    ones, s["scorer"].mask_grads, s["params"], s["batch"], s_hat, groups, lam=100.0, eta=0.05,
    n_flow=2,
  )  # fmt: skip
  m = np.concatenate([strong[g] for g in groups.names])
  assert np.all(m[flat < 0] > 0.999)  # pushed up, held at 1 by the projection
  assert np.corrcoef(m[flat > 0], flat[flat > 0])[0, 1] < -0.95  # pushed down in proportion


@pytest.mark.parametrize("rank_within", ["group", "unit"])
def test_iterative_follows_the_sparsity_schedule(setup, rank_within):
  """Keep counts per iteration follow the cubic schedule, rounded per whole group (the default
  since issue 16) or per GroupNorm unit (the earlier behaviour); hardening is per unit."""
  s = setup
  groups, keep_ratio = s["groups"], 0.5
  cfg = procedures.FlowConfig(
    iterations=4, n_flow=1, eta=0.05, lam=1.0, gamma=0.5, n_train=1, rank_within=rank_within
  )
  sparsities = [procedures.budget_sparsity(k, 4, 1 - keep_ratio, 3.0) for k in range(0, 5)]
  assert sparsities[0] == 0 and np.isclose(sparsities[-1], 1 - keep_ratio)
  assert all(b > a for a, b in zip(sparsities, sparsities[1:], strict=False))
  kept_counts, trained = [], []

  def train_stub(state, masks, k):
    trained.append(k)
    # kept masks moved at most eta per flow step; decayed ones are at most gamma
    kept_counts.append(sum(int(np.sum(masks[g.name] > 0.6)) for g in groups))
    return state

  hard, state, history = procedures.iterative(
    groups=groups, criterion="magnitude", state=s["params"], params_of=lambda p: p,
    score=lambda c, p, m, k: criteria.importance(c, groups, p),
    removal=procedures.removal_from_importance, grad_fn=s["scorer"].mask_grads,
    flow_batch=lambda k: s["batch"], train=train_stub, keep_ratio=keep_ratio, cfg=cfg,
  )  # fmt: skip
  assert trained == [1, 2, 3, 4] and [h["sparsity"] for h in history] == sparsities[1:]
  if rank_within == "unit":
    per_group = lambda g, keep: groups.keep_per_unit(g.name, keep) * g.size // g.unit
  else:
    per_group = lambda g, keep: int(min(g.size, max(1, np.floor(keep * g.size + 0.5))))
  budget = [sum(per_group(g, 1 - sp) for g in groups) for sp in sparsities[1:]]
  assert kept_counts == budget and all(b <= a for a, b in zip(budget, budget[1:], strict=False))
  # The soft decay leaves the non-kept at gamma^j > 0 until hardening.
  assert all(h["mean_mask"] < 1 for h in history)
  surgery.check_masks(groups, hard)
  want = sum(groups.keep_per_unit(g.name, keep_ratio) * g.size // g.unit for g in groups)
  assert sum(int(v.sum()) for v in hard.values()) == want


def test_diffusers_state_dict_loads_into_our_unet():
  """A state dict with google/ddpm-cifar10-32's key names and torch shapes, built here."""
  ch, mult, levels = 128, (1, 2, 2, 2), 4
  rng = np.random.default_rng(0)
  sd = {}

  def conv(name, o, i, k=3):
    sd[f"{name}.weight"] = rng.standard_normal((o, i, k, k)).astype(np.float32)
    sd[f"{name}.bias"] = rng.standard_normal(o).astype(np.float32)

  def linear(name, o, i):
    sd[f"{name}.weight"] = rng.standard_normal((o, i)).astype(np.float32)
    sd[f"{name}.bias"] = rng.standard_normal(o).astype(np.float32)

  def norm(name, c):
    sd[f"{name}.weight"] = rng.standard_normal(c).astype(np.float32)
    sd[f"{name}.bias"] = rng.standard_normal(c).astype(np.float32)

  def resnet(name, i, o):
    norm(f"{name}.norm1", i)
    conv(f"{name}.conv1", o, i)
    linear(f"{name}.time_emb_proj", o, 4 * ch)
    norm(f"{name}.norm2", o)
    conv(f"{name}.conv2", o, o)
    if i != o:
      conv(f"{name}.conv_shortcut", o, i, k=1)

  def attention(name, c, old_names):
    norm(f"{name}.group_norm", c)
    for new, old in (
      ("to_q", "query"),
      ("to_k", "key"),
      ("to_v", "value"),
      ("to_out.0", "proj_attn"),
    ):
      linear(f"{name}.{old if old_names else new}", c, c)

  linear("time_embedding.linear_1", 4 * ch, ch)
  linear("time_embedding.linear_2", 4 * ch, 4 * ch)
  conv("conv_in", ch, 3)
  skips, c = [ch], ch
  for i in range(levels):
    for j in range(2):
      resnet(f"down_blocks.{i}.resnets.{j}", c, ch * mult[i])
      c = ch * mult[i]
      if i == 1:  # AttnDownBlock2D at 16x16
        attention(f"down_blocks.{i}.attentions.{j}", c, old_names=True)
      skips.append(c)
    if i < levels - 1:
      conv(f"down_blocks.{i}.downsamplers.0.conv", c, c)
      skips.append(c)
  resnet("mid_block.resnets.0", c, c)
  attention("mid_block.attentions.0", c, old_names=False)
  resnet("mid_block.resnets.1", c, c)
  for k in range(levels):  # diffusers' up blocks count from the bottom
    i = levels - 1 - k
    for j in range(3):
      resnet(f"up_blocks.{k}.resnets.{j}", c + skips.pop(), ch * mult[i])
      c = ch * mult[i]
      if i == 1:
        attention(f"up_blocks.{k}.attentions.{j}", c, old_names=False)
    if i > 0:
      conv(f"up_blocks.{k}.upsamplers.0.conv", c, c)
  norm("conv_norm_out", ch)
  conv("conv_out", 3, ch)
  assert sum(v.size for v in sd.values()) == 35_746_307

  cfg = unet.preset("cifar10")
  params = torch_import.params_from_state_dict(sd, cfg)
  want = jax.tree.map(lambda a: a.shape, unet.abstract_params(unet.from_config_dict(cfg)))
  assert jax.tree.map(lambda a: a.shape, params) == want
  np.testing.assert_array_equal(
    params["up_0_res_0"]["conv1"]["kernel"],
    sd["up_blocks.3.resnets.0.conv1.weight"].transpose(2, 3, 1, 0),
  )
  np.testing.assert_array_equal(
    params["down_1_attn_1"]["q"]["kernel"], sd["down_blocks.1.attentions.1.query.weight"].T
  )
  np.testing.assert_array_equal(
    params["mid_attn"]["proj"]["bias"], sd["mid_block.attentions.0.to_out.0.bias"]
  )
  np.testing.assert_array_equal(params["norm_out"]["scale"], sd["conv_norm_out.weight"])
  back = torch_import.state_dict_from_params(params, cfg)
  np.testing.assert_array_equal(
    back["up_blocks.2.resnets.1.conv_shortcut.weight"],
    sd["up_blocks.2.resnets.1.conv_shortcut.weight"],
  )
  # Errors name the key: a wrong shape, a missing key, an extra key.
  bad = {**sd, "conv_in.weight": sd["conv_in.weight"][:64]}
  with pytest.raises(CheckpointError, match="conv_in.weight"):
    torch_import.params_from_state_dict(bad, cfg)
  with pytest.raises(CheckpointError, match="conv_out.bias"):
    torch_import.params_from_state_dict({k: v for k, v in sd.items() if k != "conv_out.bias"}, cfg)
  with pytest.raises(CheckpointError, match="fit no parameter"):
    torch_import.params_from_state_dict({**sd, "extra.weight": np.zeros(3)}, cfg)


def test_reading_pth_without_torch_is_a_clear_error(tmp_path, monkeypatch):
  path = tmp_path / "unet.pth"
  path.write_bytes(b"not really a checkpoint")
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
  with pytest.raises(DataError, match="needs PyTorch"):
    torch_import.read_state_dict(str(path))
  np.savez(tmp_path / "unet.npz", a=np.ones(2))
  assert torch_import.read_state_dict(str(tmp_path / "unet.npz"))["a"].shape == (2,)
  with pytest.raises(DataError, match="not found"):
    torch_import.read_state_dict(str(tmp_path / "missing.pth"))


def test_saved_unet_reloads_and_rejects_a_mismatch(tmp_path, setup):
  s = setup
  unet_io.save_unet(str(tmp_path / "t"), s["cfg"], s["params"], {"summary": "x"})
  cfg, params, meta = unet_io.load_unet(str(tmp_path / "t"))
  assert cfg == json.loads(json.dumps(s["cfg"])) and meta["summary"] == "x"
  jax.tree.map(np.testing.assert_array_equal, params, s["params"])
  (tmp_path / "t" / "unet_config.json").write_text(json.dumps({**s["cfg"], "ch": 16}))
  with pytest.raises(CheckpointError, match="does not match"):
    unet_io.load_unet(str(tmp_path / "t"))


@pytest.mark.slow
def test_make_state_copies_the_teachers_params(setup):
  """The jitted step donates its state; a state sharing the teacher's buffers would delete them on
  a GPU (every later run starts from the teacher)."""
  from configs import gradflow_prune as config_file

  config = config_file.get_config("tiny")
  kit = toolkit.Toolkit(setup["cfg"], setup["sched"], config, train_lib.make_mesh(1))
  teacher = jax.device_put(setup["params"])
  state, _ = kit.make_state(teacher, config.prune.optimizer, 10, jax.random.PRNGKey(0))
  for ours, theirs in zip(jax.tree.leaves(state.params), jax.tree.leaves(teacher), strict=True):
    pointer = lambda a: a.addressable_shards[0].data.unsafe_buffer_pointer()
    assert pointer(ours) != pointer(theirs)


def test_report_pools_runs_of_distinct_seeds(tmp_path):
  from gradflow_prune import report

  def run(seed, fds, lr=2e-4, gate_met=True, name=None):
    rows = [
      dict(keep_ratio=0.7, procedure=p, criterion=c, seed=seed, fd=fd, ssim=0.5, params=1, macs=2,
           latency_s=0.1)
      for (p, c), fd in zip([("oneshot", "taylor"), ("iterative", "grasp")], fds, strict=True)
    ]  # fmt: skip
    teacher = dict(fd=0.4, latency_s=0.2)
    gate = dict(met=gate_met, checks={})
    m = dict(rows=rows, teacher_fd=0.4, data_fd=0.1, teacher=teacher, teacher_gate=gate)
    # Pooled runs may differ in seeds and arms, not in their recipe.
    config = dict(seeds=[seed], prune=dict(criteria=["taylor"], optimizer=dict(lr=lr)))
    d = tmp_path / (name or f"s{seed}")
    d.mkdir()
    (d / "results.json").write_text(json.dumps(dict(variant="compare", metrics=m, config=config)))
    return str(d)

  dirs = [run(0, (2.0, 1.0)), run(1, (4.0, 2.0))]
  text = report.render(*dirs)
  assert "| 0.7 | oneshot | taylor | 2 | 3.0 ± 1.4 |" in text  # sample std
  assert "iterative grasp FD 1.5 vs one-shot Taylor 3 (lower FD: True)" in text
  assert report.NO_VERDICT not in text and "no verdict" not in text
  with pytest.raises(DataError, match="repeat"):
    report.render(dirs[0], dirs[0])
  other = run(2, (4.0, 2.0), lr=1e-3)
  with pytest.raises(DataError, match="'prune.optimizer.lr' differs"):
    report.render(dirs[0], other)
  missed = run(3, (4.0, 2.0), gate_met=False)
  text = report.render(dirs[0], missed)
  assert "Not every run's teacher passed its gate: no verdict from these runs." in text
  assert f"({report.NO_VERDICT})" in text


@pytest.mark.parametrize("variant", [None, "tiny", "compare", "paper", "cifar"])
def test_configs_are_consistent(variant):
  from configs import gradflow_prune as cfg_file

  config = cfg_file.get_config(variant)
  runs = plan.runs(config)
  assert {c for c, _ in runs} >= set(config.prune.criteria) and runs
  for _, procedure in runs:
    if procedure != "oneshot":
      fc = plan.flow_config(config, procedure)  # raises when the budget is exceeded
      assert fc.iterations * fc.n_train <= config.prune.total_steps
  assert config.eval.num_samples % config.eval.batch_size == 0
  shape = {"tiny": (8, 8, 1), "paper": (32, 32, 3), "cifar": (32, 32, 3)}.get(variant, (32, 32, 1))
  model_config = toolkit.unet_config(config, shape)
  if variant == "paper":  # its MACs are checked in test_surgery (Diff-Pruning's 6.1G -> 3.4G)
    assert unet.num_params(unet.abstract_params(unet.from_config_dict(model_config))) == 35_746_307
    return
  groups = surgery.channel_groups(model_config)
  macs = evaluate.unet_macs(model_config)
  for keep in config.prune.keep_ratios:
    masks = surgery.masks_from_scores(groups, {g.name: np.zeros(g.size) for g in groups}, keep)
    small = {**model_config, "widths": {k: int(v.sum()) for k, v in masks.items()}}
    ratio = evaluate.unet_macs(small) / macs
    if keep == 0.7:
      assert 0.45 < ratio < 0.6, ratio  # "~50% MACs" (Diff-Pruning's ratio 0.3: 3.4G / 6.1G)


def test_toolkit_is_built_once_per_unet_config_and_settings(setup):
  from configs import gradflow_prune as config_file

  config = config_file.get_config("tiny")
  mesh = train_lib.make_mesh(1)
  kit = toolkit.toolkit(setup["cfg"], config, mesh)
  assert toolkit.toolkit(dict(setup["cfg"]), config, mesh) is kit
  other = config_file.get_config("tiny")
  other.eval.ddim_steps += 1
  assert toolkit.toolkit(setup["cfg"], other, mesh) is not kit
  opt = config.prune.optimizer
  assert kit.trainer(opt, 30, True) is kit.trainer(opt, 30, True)


def test_unet_meta_update_keeps_the_other_fields(tmp_path, setup):
  d = str(tmp_path / "t")
  unet_io.save_unet(d, setup["cfg"], setup["params"], {"summary": "x", "seed": 0})
  unet_io.update_meta(d, summary="y", eval={"fd": 1.5})
  assert unet_io.load_unet(d)[2] == {"summary": "y", "seed": 0, "eval": {"fd": 1.5}}


def test_gradflow_prune_imports_only_shared():
  """Only __main__ may import shared.app; no module imports benchmarks or another method."""
  import ast

  others = {"benchmarks", "infotok", "unlearnable", "mcae"}
  package = os.path.join(ROOT, "gradflow_prune")
  for name in sorted(os.listdir(package)):
    if not name.endswith(".py"):
      continue
    with open(os.path.join(package, name)) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module:
        mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
      elif isinstance(node, ast.Import):
        mods = [a.name for a in node.names]
      else:
        continue
      for mod in mods:
        assert mod.split(".")[0] not in others, (name, mod)
        if name != "__main__.py":
          assert mod != "shared.app", name


def test_tiny_end_to_end_via_the_cli(tiny_run):
  tmp_path, cmd = tiny_run["workdir"], tiny_run["cmd"]
  returncode, stderr = tiny_run["wait"]()
  assert returncode == 0, stderr[-3000:]
  assert "PRE-TRAINING the teacher" in stderr  # no shipped tiny teacher: a clear log line
  results = json.loads((tmp_path / "results.json").read_text())
  m = results["metrics"]
  rows = m["rows"]
  procs = {"oneshot", "iterative", "iterative_lam0", "iterative_gamma0", "iterative_k1"}
  assert {r["procedure"] for r in rows} == procs and len(rows) == 11
  teacher = m["teacher"]
  for r in rows:
    assert np.isfinite(r["fd"]) and 0 < r["ssim"] < 1 and r["latency_s"] > 0
    assert r["params"] < teacher["params"] and 0.4 < r["macs"] / teacher["macs"] < 0.7
    assert r["interleaved_steps"] + r["finetune_steps"] == 30  # the same budget for every run
  assert len({(r["params"], r["macs"]) for r in rows}) == 1  # equal MACs across runs
  claim = m["claim"]["keep0.7"]
  assert claim["fd_iterative_grasp"] == m["summary"]["keep0.7/iterative/grasp"]["fd"]
  assert claim["lower_fd"] == (claim["fd_iterative_grasp"] < claim["fd_oneshot_taylor"])
  # The teacher gate: measured against a random-init U-Net of the same architecture and noise.
  t_gate = m["teacher_gate"]
  fraction = t_gate["checks"]["max_fd_fraction"]
  assert fraction["value"] == pytest.approx(teacher["fd"] / t_gate["random_init_fd"])
  assert claim["teacher_gate_met"] == t_gate["met"] == (fraction["value"] <= 0.1)
  verdict = claim["paired_iterative_grasp_minus_oneshot_taylor"]["fd"]["verdict"]
  assert (verdict == report.NO_VERDICT) == (not t_gate["met"])
  assert "Teacher gate: teacher FD / random-init FD" in (tmp_path / "summary.md").read_text()
  assert (tmp_path / "eval/samples_random_init.png").exists()
  for name in ("fd_vs_macs.png", "summary.md", "eval/samples_teacher.png", "teacher/params.npz"):
    assert (tmp_path / name).exists(), name
  pruned_cfg = json.loads(
    (tmp_path / "runs/keep0.7/iterative/grasp/seed0/pruned_config.json").read_text()
  )
  assert pruned_cfg["widths"] and unet.from_config_dict(pruned_cfg)
  # Convergence curves (fine-tune step -> FD, SSIM): tiny's steps 0 and 10, and each run's last.
  curves = m["convergence"]
  assert set(curves) == {r["label"] for r in rows}
  for r in rows:
    steps = sorted(int(s) for s in curves[r["label"]])
    assert steps == sorted({0, 10, r["finetune_steps"]}), (r["label"], steps)
    last = curves[r["label"]][str(r["finetune_steps"])]
    assert (last["fd"], last["ssim"]) == (r["fd"], r["ssim"])
    assert last["train_steps"] == r["interleaved_steps"] + r["finetune_steps"]
  assert "convergence" in m["summary"]["keep0.7/iterative/grasp"]
  paired = claim["paired_iterative_grasp_minus_oneshot_taylor"]
  assert paired["fd"]["seeds"] == [0] and set(paired["convergence"]) >= {"0", "10"}
  assert (tmp_path / "convergence.png").exists()
  # The exported pruned, fine-tuned model reloads with the evaluated widths.
  from gradflow_prune import export

  model = export.load(str(tmp_path / rows[0]["model_dir"]))
  assert unet.num_params(model.params) == rows[0]["params"]
  # Re-running resumes: every stage is cached, the metrics are the same.
  again = subprocess.run(cmd, cwd=ROOT, env=E2E_ENV, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert json.loads((tmp_path / "results.json").read_text())["metrics"]["rows"] == rows
