"""Unlearnable examples: budgets, CSD, the npz, bad inputs, and the tiny run end to end."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import unlearnable
from configs.unlearnable import get_config
from shared.errors import ConfigError, DataError
from tests import background
from unlearnable import baselines, countermeasures, csd, transfer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-6  # float32 rounding of clip(x + d, 0, 1) - x


def numpy_csd(x, y, k, e=1e-5):
  """CSD written out with loops, as Ren et al. define it (eq. 4), over the classes present."""
  x = x.reshape(len(x), -1).astype(np.float64)
  present = [c for c in range(k) if np.any(y == c)]
  centre = {c: x[y == c].mean(0) for c in present}
  sigma = {c: np.mean(np.linalg.norm(x[y == c] - centre[c], axis=1)) for c in present}
  terms = [
    (sigma[i] + sigma[j] + e) / (np.linalg.norm(centre[i] - centre[j]) + e)
    for i in present
    for j in present
    if i != j
  ]
  return np.mean(terms)


def test_csd_matches_the_direct_formula():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 7)).astype(np.float32)
  y = rng.choice([0, 1, 2, 4], size=40)  # class 3 absent: masked, not a NaN
  got = float(csd.csd(jnp.asarray(x), jnp.asarray(y), 5))
  np.testing.assert_allclose(got, numpy_csd(x, y, 5), rtol=1e-5)
  # Images are flattened; one class only -> 0; separated classes score lower.
  img = rng.normal(size=(12, 4, 4, 3))
  yi = np.repeat([0, 1, 2], 4)
  np.testing.assert_allclose(float(csd.csd(img, yi, 3)), numpy_csd(img, yi, 3), rtol=1e-5)
  assert float(csd.csd(img, np.zeros(12, int), 3)) == 0.0
  shifted = img + 5.0 * yi[:, None, None, None]
  assert float(csd.csd(shifted, yi, 3)) < float(csd.csd(img, yi, 3))


def test_csd_gradient_matches_finite_differences_including_the_spread():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(9, 4))
  y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
  with jax.enable_x64(True):
    f = lambda z: csd.csd(z, jnp.asarray(y), 3)
    grad = np.asarray(jax.grad(f)(jnp.asarray(x)))
    detached = np.asarray(jax.grad(lambda z: csd.csd(z, jnp.asarray(y), 3, detach_spread=True))(x))
    h = 1e-6
    fd = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
      up, down = x.copy(), x.copy()
      up[idx] += h
      down[idx] -= h
      fd[idx] = (float(f(jnp.asarray(up))) - float(f(jnp.asarray(down)))) / (2 * h)
  np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-7)
  # The released code's detached sigma gives a different (incomplete) gradient.
  assert np.abs(detached - fd).max() > 1e-2


def test_class_mmd_grows_as_classes_separate():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(30, 5)).astype(np.float32)
  y = np.repeat([0, 1, 2], 10)
  base = float(csd.class_mmd(x, y, 3))
  apart = float(csd.class_mmd(x + 3.0 * y[:, None], y, 3))
  assert 0.0 <= base < apart


def _config(**overrides):
  cfg = get_config("tiny")
  with cfg.unlocked():
    for key, value in overrides.items():
      node = cfg
      *path, leaf = key.split(".")
      for p in path:
        node = node[p]
      node[leaf] = value
  return cfg


@st.composite
def image_sets(draw, max_side=9):
  n = draw(st.integers(2, 10))
  h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
  grey = draw(st.booleans())
  seed = draw(st.integers(0, 2**31 - 1))
  rng = np.random.default_rng(seed)
  shape = (n, h, w) if grey else (n, h, w, draw(st.sampled_from([1, 3])))
  images = rng.uniform(0, 1, shape).astype(np.float32)
  images[rng.uniform(size=shape) < 0.2] = 0.0  # saturated pixels: the budget must still hold
  images[rng.uniform(size=shape) < 0.2] = 1.0
  labels = rng.integers(0, draw(st.integers(1, 4)), n)
  return images, labels, seed


def _check_budget(method, images, labels, delta, eps):
  assert delta.shape == images.shape and delta.dtype == np.float32
  protected = images + delta
  assert protected.min() >= -TOL and protected.max() <= 1 + TOL
  if method in unlearnable.perturb.L0_METHODS:
    changed = (np.abs(delta) > 0).reshape(
      len(delta),
      -1 if images.ndim == 3 else images.shape[1] * images.shape[2],
      *(() if images.ndim == 3 else (-1,)),
    )
    per_image = changed.any(-1).sum(1) if images.ndim == 4 else changed.sum(1)
    assert per_image.max() <= 1
  else:
    assert np.abs(delta).max() <= eps + TOL


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
  data=image_sets(),
  method=st.sampled_from(["clean", "random", "lsp", "ar", "ops"]),
  eps=st.floats(1 / 255, 32 / 255),
)
def test_budget_holds_for_direct_generators(data, method, eps):
  images, labels, seed = data
  cfg = _config(eps=eps)
  delta = unlearnable.generate(cfg, images, labels, jax.random.PRNGKey(seed), method=method)
  _check_budget(method, images, labels, delta, eps)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
  method=st.sampled_from(["em", "em_class", "tue", "dist"]),
  eps=st.floats(1 / 255, 16 / 255),
  seed=st.integers(0, 2**31 - 1),
)
def test_budget_holds_for_surrogate_generators(method, eps, seed):
  # One image shape (compiles once per method); eps, content and labels vary.
  rng = np.random.default_rng(seed)
  images = rng.uniform(0, 1, (16, 8, 8, 3)).astype(np.float32)
  images[rng.uniform(size=images.shape) < 0.2] = 1.0
  labels = rng.integers(0, 3, 16)
  cfg = _config(eps=eps)
  delta = unlearnable.generate(
    cfg, images, labels, jax.random.PRNGKey(seed), method=method, num_classes=3
  )
  _check_budget(method, images, labels, delta, eps)
  assert np.abs(delta).max() > 0.5 * eps  # the search moved the perturbations
  if method == "em_class":  # one perturbation per class, up to the [0, 1] clipping
    free = (images > eps) & (images < 1 - eps)
    for c in range(3):
      rows = np.flatnonzero(labels == c)
      if len(rows) > 1:
        ref = np.where(free[rows[0]], delta[rows[0]], np.nan)
        for r in rows[1:]:
          both = free[rows[0]] & free[r]
          np.testing.assert_allclose(delta[r][both], ref[both], atol=TOL)


def test_grey_images_of_any_size_keep_their_shape():
  rng = np.random.default_rng(3)
  images = rng.uniform(0, 1, (12, 7, 5)).astype(np.float32)
  labels = np.arange(12) % 2
  cfg = _config()
  delta = unlearnable.generate(cfg, images, labels, jax.random.PRNGKey(0), method="em")
  _check_budget("em", images, labels, delta, cfg.eps)


def test_npz_round_trips(tmp_path):
  rng = np.random.default_rng(4)
  delta = rng.uniform(-0.03, 0.03, (5, 4, 4, 3)).astype(np.float32)
  path = str(tmp_path / "perturbations.npz")
  unlearnable.save(path, delta, np.arange(10, 15), 8 / 255)
  back = unlearnable.load(path)
  assert set(back) == {"delta", "indices", "eps"}
  np.testing.assert_array_equal(back["delta"], delta)
  np.testing.assert_array_equal(back["indices"], np.arange(10, 15))
  assert back["eps"] == np.float32(8 / 255)
  np.savez(tmp_path / "bad.npz", delta=delta)
  with pytest.raises(DataError, match="indices"):
    unlearnable.load(str(tmp_path / "bad.npz"))


@pytest.mark.parametrize(
  "images, labels, eps, kwargs, error, words",
  [
    (np.full((4, 4, 4, 3), 0.5), [0, 1, 0, 1], 0.0, {}, ConfigError, "eps"),
    (np.full((4, 4, 4, 3), 0.5), [0, 1, 0, 1], -8 / 255, {}, ConfigError, "eps"),
    (np.full((4, 4, 4, 3), 255.0), [0, 1, 0, 1], 8 / 255, {}, DataError, "[0, 1]"),
    (np.full((4, 4, 4, 3), -0.1), [0, 1, 0, 1], 8 / 255, {}, DataError, "[0, 1]"),
    (np.full((4, 4, 4, 3), 0.5), [0, 1, 0, 7], 8 / 255, {"num_classes": 2}, DataError, "classes"),
    (np.full((4, 4, 4, 3), 0.5), [0, 1, 0, -1], 8 / 255, {}, DataError, "labels"),
    (np.full((4, 4, 4, 3), 0.5), [0, 1, 0], 8 / 255, {}, DataError, "labels"),
    (np.full((4, 4, 4, 3), 128, np.uint8), [0, 1, 0, 1], 8 / 255, {}, DataError, "float"),
    (np.full((4, 4, 4, 3), 0.5), [0, 1, 0, 1], 8 / 255, {"method": "nope"}, ConfigError, "nope"),
  ],
)
def test_bad_inputs_are_clear_errors(images, labels, eps, kwargs, error, words):
  with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
    unlearnable.generate(
      _config(eps=eps), images, np.asarray(labels), jax.random.PRNGKey(0), **kwargs
    )


def test_ar_noise_follows_its_class_process():
  rng = np.random.default_rng(5)
  coef = baselines.ar_coefficients(2, 1, rng)
  start = rng.standard_normal((3, 12, 12))
  run = baselines._ar_run(np.repeat(coef[:1, 0], 3, 0), start, 3)
  # Every generated pixel satisfies the recurrence: sum(coef * its 3x3 causal window) = 0.
  for i in range(2, 12):
    for j in range(2, 12):
      window = run[:, i - 2 : i + 1, j - 2 : j + 1]
      np.testing.assert_allclose(
        (window * coef[0, 0]).sum((1, 2)), 0.0, atol=1e-6 * np.abs(run).max()
      )


def test_one_pixel_shortcut_is_one_position_per_class():
  rng = np.random.default_rng(6)
  images = rng.uniform(0.2, 0.8, (20, 6, 6, 3)).astype(np.float32)
  labels = np.arange(20) % 4
  delta = baselines.one_pixel_shortcut(images, labels, 4, 8 / 255, rng)
  for c in range(4):
    where = {tuple(np.argwhere(np.abs(d).max(-1) > 0)[0]) for d in delta[labels == c]}
    assert len(where) == 1
    pos = where.pop()
    values = (images + delta)[labels == c][:, pos[0], pos[1]]
    assert np.all(np.isin(values, [0.0, 1.0])) and np.all(values == values[0])


@pytest.mark.parametrize("rule", transfer.RULES)
def test_datawise_transfer_keeps_the_budget_and_the_classes(rule):
  rng = np.random.default_rng(7)
  src = rng.uniform(0.1, 0.9, (30, 8, 8, 3)).astype(np.float32)
  labels = np.arange(30) % 3
  signs = np.array([-1.0, 1.0, 0.5])[labels]
  delta = np.broadcast_to(signs[:, None, None, None] * 8 / 255, src.shape).astype(np.float32)
  tgt = rng.uniform(0.1, 0.9, (12, 16, 16, 3)).astype(np.float32)  # other size: resized
  tgt_labels = np.arange(12) % 3
  moved = transfer.transfer(delta, src, labels, tgt, tgt_labels, 8 / 255, rule, rng)
  assert moved.shape == tgt.shape and np.abs(moved).max() <= 8 / 255 + TOL
  # Class k's target images get class k's perturbation (class_mean rescales it to eps).
  expected = np.sign(signs) if rule == "class_mean" else signs
  np.testing.assert_allclose(moved.mean((1, 2, 3)), expected[:12] * 8 / 255, atol=1e-6)
  with pytest.raises(DataError, match="no source"):
    transfer.transfer(delta, src, labels, tgt, tgt_labels + 3, 8 / 255, rule, rng)


def test_jpeg_10_and_grayscale():
  rng = np.random.default_rng(8)
  images = rng.uniform(0, 1, (3, 16, 16, 3)).astype(np.float32)
  out = countermeasures.jpeg(images, 10)
  assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
  assert 0.02 < np.abs(out - images).mean() < 0.5  # lossy, not destroyed
  grey = countermeasures.jpeg(images[..., :1], 10)
  assert grey.shape == (3, 16, 16, 1)
  g = countermeasures.grayscale(images)
  assert g.shape == images.shape and np.allclose(g[..., 0], g[..., 2])
  with pytest.raises(ConfigError):
    countermeasures.jpeg(images, 0)


def _cli(*args, workdir, env=None):
  env = env or {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  return subprocess.run(
    [sys.executable, "-m", "unlearnable", *args, "--workdir", str(workdir)],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )


TINY = ("--config", "configs/unlearnable.py:tiny")
E2E_TEST = "test_tiny_end_to_end_and_resume"
E2E_ENV = background.cli_env(devices=2)  # what the end-to-end test's resume call runs with

fewer_compiler_optimisations = pytest.fixture(scope="module", autouse=True)(
  background.fewer_compiler_optimisations
)


@pytest.fixture(scope="module", autouse=True)
def tiny_run(request, tmp_path_factory):
  """The `tiny` CLI run, started before this module's first test (see tests/background.py);
  `test_tiny_end_to_end_and_resume` (last) waits for it."""
  yield from background.cli_run(
    request, tmp_path_factory, E2E_TEST, "unlearnable_tiny", ["unlearnable", *TINY], devices=2
  )


def test_cli_bad_eps_is_one_line_exit_2(tmp_path):
  proc = _cli("--config", "configs/unlearnable.py:tiny", "--config.eps=0.0", workdir=tmp_path)
  assert proc.returncode == 2, proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "eps" in last and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
  "arg", ["tiny", None, "compare", "paper", "paper,dataset=cifar100", "paper,dataset=svhn"]
)
def test_every_variant_is_a_valid_run_config(arg):
  from unlearnable import evaluate, perturb
  from unlearnable.train import _check

  cfg = get_config(arg)
  _check(cfg)
  for name in (cfg.surrogate, cfg.other_arch, *cfg.dist.feature_nets):
    evaluate.model_spec(cfg, name)
  for method in cfg.methods:
    if perturb.METHODS[method][0] == "surrogate":
      perturb.minmin_settings(cfg, method)
  assert len(cfg.seeds) == (1 if arg == "tiny" else 3)
  assert cfg.eps == pytest.approx(8 / 255)
  assert {"clean", "random", "em", "tue", "dist"} <= set(cfg.methods)


def test_em_bn_picks_the_batchnorm_statistics_of_the_sweep_and_the_stop():
  # em.bn="running" (Huang et al.'s code: eval mode in the PGD sweep and the stop criterion) vs
  # "batch" (batch statistics); the surrogate's training steps use batch statistics either way.
  from unlearnable import minmin, nets, perturb

  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(0, 1, (8, 8, 8, 3)), jnp.float32)
  out = {}
  for bn in minmin.BN_MODES:
    cfg = _config(surrogate="resnet18", **{"em.bn": bn})
    kind, settings = perturb.minmin_settings(cfg, "em")
    prog = minmin.program(kind, settings, 3, False)
    params, state = nets.init(prog.model, jax.random.PRNGKey(1), x[:2])
    state = jax.tree.map(lambda a: a + 0.5, state)  # running statistics away from the batch's
    out[bn] = np.asarray(prog._classify(params, state, x))
    want = (nets.apply_eval if bn == "running" else lambda *a: nets.apply_train(*a)[0])(
      prog.model, params, state, x
    )
    np.testing.assert_allclose(out[bn], np.asarray(want), rtol=1e-6, atol=1e-6)
  assert np.abs(out["running"] - out["batch"]).max() > 1e-3
  with pytest.raises(ConfigError, match="em.bn"):
    minmin.program("em", {**settings, "bn": "eval"}, 3, False)


def test_cli_bad_em_bn_is_one_line_exit_2(tmp_path):
  proc = _cli("--config", "configs/unlearnable.py:tiny", "--config.em.bn=eval", workdir=tmp_path)
  assert proc.returncode == 2, proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "em.bn" in last and "Traceback" not in proc.stderr


def test_programs_are_built_once_per_settings_and_keep_their_own_copy():
  from unlearnable import evaluate, minmin, perturb, victims

  cfg = _config()
  kind, settings = perturb.minmin_settings(cfg, "em")
  search = minmin.program(kind, settings, 3, False)
  assert minmin.program(kind, json.loads(json.dumps(settings)), 3, False) is search
  assert minmin.program(kind, settings, 4, False) is not search
  assert minmin.program(kind, settings, 3, True) is not search
  settings["pgd_steps"] = 99  # the caller's dict changes; the built program does not
  assert search.cfg.pgd_steps == cfg.em.pgd_steps
  spec = evaluate.model_spec(cfg, cfg.surrogate)
  recipe = evaluate.supervised_recipe(cfg, "supervised")
  victim = victims.program("supervised", spec, 3, recipe, 10, (8, 8, 3))
  assert victims.program("supervised", dict(spec), 3, recipe.copy_and_resolve_references(), 10,
                         [8, 8, 3]) is victim  # fmt: skip
  assert victims.program("supervised", spec, 3, recipe, 11, (8, 8, 3)) is not victim
  with recipe.unlocked():
    recipe.batch_size = 7
  assert victim.recipe.batch_size == cfg.victim.batch_size


def test_a_checkpointed_victim_resumes_to_the_same_cell(tmp_path):
  from unlearnable import evaluate, victims

  rng = np.random.default_rng(5)
  train = {"image": rng.uniform(0, 1, (64, 8, 8, 3)).astype(np.float32),
           "label": rng.integers(0, 3, 64).astype(np.int32)}  # fmt: skip
  test = {"image": rng.uniform(0, 1, (40, 8, 8, 3)).astype(np.float32),
          "label": rng.integers(0, 3, 40).astype(np.int32)}  # fmt: skip
  cfg = _config(**{"run.checkpoint_victims": True, "run.checkpoint_every": 2})
  recipe = evaluate.supervised_recipe(cfg, "supervised")
  spec = evaluate.model_spec(cfg, cfg.surrogate)
  run = dict(workdir=str(tmp_path), stage="clean/supervised", run_cfg=cfg.run)
  key = jax.random.PRNGKey(0)
  cell = victims.train_victim("supervised", spec, recipe, train, test, 3, key, **run)
  assert (tmp_path / "checkpoints").is_dir() and (tmp_path / "metrics.jsonl").is_file()
  assert len(cell["curve"]) == recipe.epochs and 0.0 <= cell["final"] <= cell["peak"] <= 1.0
  again = victims.train_victim("supervised", spec, recipe, train, test, 3, key, **run)
  assert (again["final"], again["peak"]) == (cell["final"], cell["peak"])
  assert again["curve"] == [cell["curve"][-1]]  # resumed at the end: evaluated once, not trained


def test_victim_outputs_do_not_depend_on_the_eval_batch():
  from unlearnable import evaluate, victims

  cfg = _config()
  spec = evaluate.model_spec(cfg, cfg.other_arch)
  images = np.random.default_rng(6).uniform(0, 1, (20, 8, 8, 3)).astype(np.float32)
  for kind, recipe in (("supervised", cfg.victim), ("simclr", cfg.simclr_victim)):
    prog = victims.program(kind, spec, 3, recipe, 4, images.shape[1:])
    state = prog.create(jax.random.PRNGKey(1))
    whole = victims._outputs(prog, state, images, 24)  # one padded batch
    assert len(whole) == len(images)
    # Same rows in the same order; other batch shapes may round differently in the last bits.
    np.testing.assert_allclose(
      victims._outputs(prog, state, images, 8), whole, rtol=1e-5, atol=1e-6
    )


def test_knn_monitor_and_gates():
  import ml_collections

  from unlearnable import train as ue_train
  from unlearnable import victims as ue_victims

  rng = np.random.default_rng(0)
  centres = rng.normal(size=(3, 8)) * 5
  labels = np.repeat(np.arange(3), 40)
  feats = centres[labels] + rng.normal(size=(120, 8))
  assert ue_victims.knn_accuracy(feats, labels, feats[::3], labels[::3], 3, k=10) > 0.95
  shuffled = rng.permutation(labels)
  assert ue_victims.knn_accuracy(feats, shuffled, feats, labels, 3, k=10) < 0.7
  cfg = ml_collections.ConfigDict({"gates": {"supervised": 0.93, "simclr": 0.8}})
  per_seed = {0: {"clean": {"supervised": {"final": 0.95}, "simclr": {"final": 0.7}}}}
  g = ue_train.gate_check(cfg, per_seed)
  assert g["gates"]["supervised"]["status"] == "met"
  assert g["gates"]["simclr"]["status"] == "missed" and not g["verdict"]
  assert "no protection verdict" in "\n".join(ue_train.gate_lines(g))
  # With the run's columns, only those that need the missed gate lose their verdicts.
  text = ue_train.gate_lines(g, ["supervised", "simclr", "simclr_clean_probe", "grayscale"])[-1]
  assert text == (
    "Gate simclr not met: no protection verdict for simclr, simclr_clean_probe; "
    "the columns supervised, grayscale keep theirs."
  )
  g = ue_train.gate_check(cfg, {0: {"random": {}}})
  assert g["gates"]["supervised"]["status"] == "not measured" and not g["verdict"]
  # A run's own gates: only those its columns need (a supervised-only run: not simclr's).
  g = ue_train.gate_check(cfg, per_seed, ["supervised", "grayscale"])
  assert list(g["gates"]) == ["supervised"] and g["verdict"]


@pytest.mark.slow
def test_tiny_end_to_end_and_resume(tiny_run):
  tmp_path, args = tiny_run["workdir"], TINY
  returncode, stderr = tiny_run["wait"]()
  assert returncode == 0, stderr[-3000:]
  results = json.loads((tmp_path / "results.json").read_text())
  cfg = get_config("tiny")
  metrics = results["metrics"]
  assert metrics["num_classes"] == 5 and results["devices"]["count"] == 2
  assert metrics["data_check"]["pixels_within_eps_of_0_or_1"] == 0.0
  for m in cfg.methods:
    for v in cfg.victims:
      mean, std, n = metrics["final"][m][v]
      assert 0.0 <= mean <= 1.0 and n == 1
      assert metrics["peak"][m][v][0] >= mean - 1e-9
    saved = unlearnable.load(str(tmp_path / "seed_0" / m / "perturbations.npz"))
    assert saved["delta"].shape == (256, 16, 16, 3)
    if m not in unlearnable.perturb.L0_METHODS:
      assert np.abs(saved["delta"]).max() <= cfg.eps + TOL
  assert "| em |" in (tmp_path / "table.md").read_text()
  # Same command again: every perturbation and cell is reused, the numbers are identical.
  again = _cli(*args, workdir=tmp_path, env=E2E_ENV)
  assert again.returncode == 0, again.stderr[-3000:]
  assert json.loads((tmp_path / "results.json").read_text())["metrics"]["final"] == metrics["final"]


def test_victims_train_on_another_runs_release(tmp_path):
  # protected_from: a second run (another victim, a separate process) trains on the uint8 release
  # of the first, without generating again; same seed and victim -> the very same cell.
  from unlearnable import train

  def cfg(**kw):
    return _config(methods=("random",), victims=("supervised",), **kw)

  first = train.train_and_evaluate(cfg(), str(tmp_path / "a"))
  second = train.train_and_evaluate(cfg(protected_from=str(tmp_path / "a")), str(tmp_path / "b"))
  assert second["final"] == first["final"]
  mdir = tmp_path / "b" / "seed_0" / "random"
  assert not (mdir / "perturbations.npz").exists() and not (mdir / "protected.npz").exists()
  source = json.loads((mdir / "protected_from.json").read_text())["source"]
  assert source.endswith("a/seed_0/random")
  with pytest.raises(DataError, match="protected set not found"):
    train.train_and_evaluate(cfg(protected_from=str(tmp_path / "b")), str(tmp_path / "c"))
  with pytest.raises(ConfigError, match="protected_from"):
    train.train_and_evaluate(cfg(protected_from=str(tmp_path / "none")), str(tmp_path / "d"))
