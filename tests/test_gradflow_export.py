"""The reusable pruned model (export / load / sample CLI), bad input, the report's errors, paired
bootstrap intervals."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow_prune
from gradflow_prune import export, report, stats, surgery, teacher, torch_import, unet_io
from shared import cli
from shared.errors import CheckpointError, ConfigError, UserError
from shared.models import unet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEDULE = dict(num_timesteps=1000, beta_start=1e-4, beta_end=0.02)
SAMPLER = dict(ddim_steps=2, skip="uniform", eta=0.0, clip_x0=True)


@pytest.fixture(scope="module")
def pruned():
  """A physically pruned tiny U-Net (non-trivial params) and its config."""
  cfg = unet.preset("tiny8")
  rng = np.random.default_rng(0)
  params = jax.tree.map(
    lambda p: p + 0.05 * rng.standard_normal(p.shape).astype(np.float32),
    jax.device_get(unet.init_params(unet.from_config_dict(cfg), 0)),
  )
  groups = surgery.channel_groups(cfg)
  scores = {g.name: rng.uniform(size=g.size) for g in groups}
  masks = surgery.masks_from_scores(groups, scores, 0.5)
  small_cfg, small_params = surgery.apply_masks(cfg, params, masks)
  return dict(cfg=cfg, params=params, small_cfg=small_cfg, small_params=small_params)


def test_exported_model_reloads_with_identical_outputs(tmp_path, pruned):
  d = str(tmp_path / "model")
  export.save(d, pruned["small_cfg"], pruned["small_params"], schedule=SCHEDULE, sampler=SAMPLER,
              extra={"keep_ratio": 0.5})  # fmt: skip
  meta = json.loads((tmp_path / "model" / "unet.json").read_text())
  assert meta["channels"]["conv_in.out"] == pruned["small_cfg"]["widths"]["conv_in.out"]
  model = gradflow_prune.load(d)
  assert isinstance(model, gradflow_prune.PrunedUNet) and model.image_shape == (8, 8, 1)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1))
  t = jnp.array([0, 10, 500, 999], jnp.int32)
  net = unet.from_config_dict(pruned["small_cfg"])
  want = jax.jit(lambda p, x, t: net.apply({"params": p}, x, t))(pruned["small_params"], x, t)
  np.testing.assert_array_equal(np.asarray(model.eps(x, t)), np.asarray(want))
  images = np.asarray(model.sample(x))
  assert images.shape == (4, 8, 8, 1) and np.all((images >= 0) & (images <= 1))
  # Same noise, same images: a reloaded copy samples exactly what this one does.
  np.testing.assert_array_equal(np.asarray(gradflow_prune.load(d).sample(x)), images)


def test_exported_model_whose_json_and_tensors_disagree_is_a_typed_error(tmp_path, pruned):
  d = tmp_path / "model"
  export.save(str(d), pruned["small_cfg"], pruned["small_params"], schedule=SCHEDULE,
              sampler=SAMPLER)  # fmt: skip
  meta = json.loads((d / "unet.json").read_text())
  # The channel counts edited: they no longer match the config.
  bad = {**meta, "channels": {**meta["channels"], "conv_in.out": 2}}
  (d / "unet.json").write_text(json.dumps(bad))
  with pytest.raises(export.ExportError, match="channel counts disagree .*conv_in.out"):
    export.load(str(d))
  # Config and counts edited consistently, the tensors are the old ones.
  widths = {**meta["unet"].get("widths", {}), "conv_in.out": 2}
  cfg = {**meta["unet"], "widths": widths}
  chans = {g.name: g.size for g in surgery.channel_groups(cfg)}
  (d / "unet.json").write_text(json.dumps({**meta, "unet": cfg, "channels": chans}))
  with pytest.raises(export.ExportError, match="disagrees with unet.json"):
    export.load(str(d))
  assert issubclass(export.ExportError, CheckpointError) and issubclass(
    export.ExportError, UserError
  )
  with pytest.raises(export.ExportError, match="holds no exported U-Net"):
    export.load(str(tmp_path / "nowhere"))
  (d / "unet.json").write_text("{not json")
  with pytest.raises(export.ExportError, match="corrupt"):
    export.load(str(d))
  # At the command line: one line, exit 2.
  (d / "unet.json").write_text(json.dumps(bad))
  cmd = [sys.executable, "-m", "gradflow_prune.sample", str(d), str(tmp_path / "g.png")]
  done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 2, done.stderr[-2000:]
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and "conv_in.out" in lines[0]


def test_teacher_of_the_wrong_architecture_is_a_user_error(tmp_path, pruned):
  from configs import gradflow_prune as config_file

  config = config_file.get_config("tiny")
  other = unet.preset("tiny8", ch=16)
  other_params = unet.init_params(unet.from_config_dict(other), 0)
  # A diffusers-layout weights file of another width.
  path = str(tmp_path / "wrong.npz")
  np.savez(path, **torch_import.state_dict_from_params(other_params, other))
  config.teacher.weights = path
  with pytest.raises(CheckpointError):
    teacher.get_teacher(config, str(tmp_path / "w"), pruned["cfg"], None, None)
  # A saved teacher folder of another architecture.
  unet_io.save_unet(str(tmp_path / "t"), other, other_params)
  config.teacher.weights, config.teacher.dir = "", str(tmp_path / "t")
  with pytest.raises(ConfigError, match="different U-Net"):
    teacher.get_teacher(config, str(tmp_path / "w"), pruned["cfg"], None, None)


def test_bad_keep_ratio_at_the_command_line_is_one_line_exit_2(tmp_path):
  cmd = [
    sys.executable, "-m", "gradflow_prune", "--config", "configs/gradflow_prune.py:tiny",
    "--workdir", str(tmp_path), "--config.prune.keep_ratios=(1.5,)",
  ]  # fmt: skip
  done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 2, done.stderr[-2000:]
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "keep_ratios" in last and "(0, 1]" in last


def _results(d, rows, method="gradflow_prune"):
  d.mkdir(parents=True, exist_ok=True)
  m = dict(rows=rows, teacher_fd=0.4, data_fd=0.1, teacher=dict(fd=0.4, latency_s=0.2))
  (d / "results.json").write_text(json.dumps(dict(method=method, variant="x", metrics=m)))
  return str(d)


def _row(procedure, criterion, seed, fd, ssim, curve=()):
  row = dict(keep_ratio=0.7, procedure=procedure, criterion=criterion, seed=seed, fd=fd,
             ssim=ssim, params=1, macs=2, latency_s=0.1)  # fmt: skip
  if curve:
    row["convergence"] = [
      dict(finetune_step=s, fd=f, ssim=ssim, train_steps=s) for s, f in curve
    ]  # fmt: skip
  return row


def test_report_errors_are_one_line_exit_2(tmp_path, capsys):
  cases = {
    "missing": str(tmp_path / "nothing"),
    "unfinished": str(tmp_path),
    "foreign": _results(tmp_path / "mcae", [], method="mcae"),
  }
  corrupt = tmp_path / "corrupt"
  corrupt.mkdir()
  (corrupt / "results.json").write_text('{"metrics": {"rows": [')
  cases["corrupt"] = str(corrupt)
  cases["rows"] = _results(tmp_path / "rows", [{"fd": 1.0}])
  for name, d in cases.items():
    with pytest.raises(SystemExit) as exit_info:
      cli.guarded(report.main, [d])
    assert exit_info.value.code == 2, name
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and d in err[0], (name, err)
  done = subprocess.run(
    [sys.executable, "-m", "gradflow_prune.report", str(tmp_path / "nothing")],
    cwd=ROOT, capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert done.returncode == 2 and done.stderr.strip().startswith("error: "), done.stderr[-2000:]
  assert len(done.stderr.strip().splitlines()) == 1


def test_report_states_paired_differences_with_bootstrap_intervals(tmp_path):
  rows = []
  for seed, (base, ours) in enumerate([(5.0, 4.0), (6.0, 4.5), (5.5, 4.6)]):
    rows.append(_row("oneshot", "taylor", seed, base, 0.80, [(0, base + 3), (10, base + 1)]))
    rows.append(_row("iterative", "grasp", seed, ours, 0.85, [(0, ours + 2), (10, ours + 1)]))
  text = report.render(_results(tmp_path / "a", rows))
  assert "iterative grasp - oneshot taylor, paired over seeds [0, 1, 2]" in text
  claims = report.claim(report.summarize(rows, dict(latency_s=0.2)), [0.7], rows)
  d = claims["keep0.7"]["paired_iterative_grasp_minus_oneshot_taylor"]
  assert np.isclose(d["fd"]["mean"], -1.1333333) and d["fd"]["hi"] < 0
  assert d["fd"]["verdict"] == "better" and d["ssim"]["verdict"] == "better"
  assert set(d["convergence"]) == {"0", "10"}
  np.testing.assert_allclose(d["convergence"]["0"]["fd"]["mean"], -1.1333333 - 1)


def test_paired_bootstrap_matches_scipy_and_closed_forms():
  scipy_stats = pytest.importorskip("scipy.stats")
  rng = np.random.default_rng(0)
  a, b = rng.normal(1.0, 1.0, 40), rng.normal(0.0, 1.0, 40)
  ours = stats.paired_bootstrap(a, b, n_boot=20_000)
  theirs = scipy_stats.bootstrap(
    (a - b,), np.mean, n_resamples=20_000, method="percentile", random_state=1
  ).confidence_interval
  assert np.isclose(ours["mean"], np.mean(a - b))
  assert abs(ours["lo"] - theirs.low) < 0.05 and abs(ours["hi"] - theirs.high) < 0.05
  # A constant difference has a zero-width interval; one pair gives a point and no verdict.
  const = stats.paired_bootstrap([3.0, 4.0, 5.0], [1.0, 2.0, 3.0])
  assert const["lo"] == const["hi"] == const["mean"] == 2.0
  one = stats.paired_bootstrap([1.0], [2.0])
  assert stats.verdict(one, "lower") == "one seed: no interval"
  assert stats.verdict(const, "lower") == "worse" and stats.verdict(const, "higher") == "better"
  assert stats.verdict(stats.paired_bootstrap([1, -1, 2], [0, 0, 0]), "lower") == (
    "no difference shown"
  )


def test_ship_stores_float16_and_loads_float32(tmp_path, capsys):
  cfg = unet.config_dict(
    unet.UNet(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), num_groups=2,
              in_channels=1, out_channels=1, resolution=8)
  )  # fmt: skip
  params = unet.init_params(unet.from_config_dict(cfg), 0)
  unet_io.save_unet(str(tmp_path / "t"), cfg, params, {"summary": "teacher"})
  assert cli.guarded(unet_io.main, [str(tmp_path / "t"), str(tmp_path / "s")]) == 0
  assert "float16" in capsys.readouterr().out
  with np.load(tmp_path / "s" / "params.npz") as f:
    assert {f[k].dtype for k in f.files} == {np.dtype(np.float16)}
  _, shipped, meta = unet_io.load_unet(str(tmp_path / "s"))
  assert meta["summary"] == "teacher" and meta["stored_dtype"] == "float16"
  for a, b in zip(jax.tree.leaves(shipped), jax.tree.leaves(params), strict=True):
    assert a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)  # float16 rounding only
  with pytest.raises(SystemExit) as e:
    cli.guarded(unet_io.main, [str(tmp_path / "t"), str(tmp_path / "x"), "--dtype", "int8"])
  assert e.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
  with pytest.raises(SystemExit) as e:
    cli.guarded(unet_io.main, [str(tmp_path / "missing"), str(tmp_path / "y")])
  assert e.value.code == 2 and "holds no saved U-Net" in capsys.readouterr().err
