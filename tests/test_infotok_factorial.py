"""InfoTok's factorial of tokenizer objectives: the specs of each family, the selection rules on
validation, the rate-matched codebook; the paired statistics over seeds x items; the config
checks (one error line, exit 2); the information plane per style."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import infotok as config_file
from infotok import captions, checks, plane, stats, tokenizer_sweep
from infotok import judge as judge_lib
from shared import metrics, mi
from shared.errors import ConfigError, DataError


def test_tiny_and_compare_run_the_whole_factorial_and_the_default_a_subset():
  for variant in ("tiny", "compare", "paper"):
    assert config_file.get_config(variant).variants == tokenizer_sweep.FACTORIAL
  default = config_file.get_config().variants
  assert set(default) < set(tokenizer_sweep.FACTORIAL) and "baseline" in default


def test_each_variant_switches_on_only_its_own_terms():
  cfg = config_file.get_config("tiny")
  plain = tokenizer_sweep.family_specs(cfg, "plain")
  beta, w_nce = cfg.vib.betas[0], cfg.vib.consistency_weights[0]
  assert plain["baseline"] == {}
  assert plain[f"vib_kl_{beta:g}"] == {"noise": 1.0, "vib": beta}
  assert plain[f"vib_nce_{w_nce:g}"] == {"consistency": w_nce}
  assert plain[f"infotok_vib_{beta:g}"] == {
    "noise": 1.0,
    "vib": beta,
    "consistency": cfg.vib.consistency,
  }
  assert set(plain[f"infotok_hsic_{cfg.hsic.beta_x[0]:g}"]) == {"hsic_beta_x", "hsic_lambda_y"}
  assert plain[f"entropy_{cfg.entropy.weights[0]:g}"] == {"entropy": cfg.entropy.weights[0]}
  semantic = tokenizer_sweep.family_specs(cfg, "semantic")
  assert set(semantic) == {f"semantic_{n}" for n in plain}
  for name, weights in plain.items():  # the same objectives plus the alignment term
    assert semantic[f"semantic_{name}"] == {**weights, "align": cfg.semantic.align_weight}


def test_compressing_knobs_take_the_largest_within_tolerance_the_others_the_most_relevant():
  cfg = config_file.get_config("tiny")
  cfg.vib.betas, cfg.vib.consistency_weights = (1e-3, 1e-2, 1e-1), (1e-3, 1e-2)
  cfg.select.tolerance = 0.05
  rel = {"baseline": 0.80, "vib_kl_0.001": 0.82, "vib_kl_0.01": 0.76, "vib_kl_0.1": 0.50}
  rel.update({"infotok_vib_0.001": 0.70, "infotok_vib_0.01": 0.60, "infotok_vib_0.1": 0.40})
  rel.update({"vib_nce_0.001": 0.79, "vib_nce_0.01": 0.85, "entropy_0.001": 0.7})
  rel["infotok_hsic_0.1"] = 0.78
  results = {n: {"val": {"relevance": r}} for n, r in rel.items()}
  chosen, points = tokenizer_sweep.choose(cfg, "plain", results)
  assert chosen["vib_kl"] == "vib_kl_0.01"  # 0.76 >= 0.80 - 0.05; 0.1 is not
  assert chosen["infotok_vib"] == "infotok_vib_0.001"  # none qualifies: the most relevant
  assert chosen["vib_nce"] == "vib_nce_0.01"  # not a compressing knob: the most relevant
  assert [p["value"] for p in points["vib_kl"]] == [1e-3, 1e-2, 1e-1]


@pytest.mark.parametrize(
  ("perplexity", "levels"),
  [(37.2, (4, 3, 3)), (1000.0, (8, 5, 5, 5)), (5.0, (5,)), (1.0, (3,)), (230.0, (5, 5, 3, 3))],
)
def test_rate_matched_fsq_levels_are_nearest_in_log_with_documented_ties(perplexity, levels):
  tok = ml_collections.ConfigDict(dict(quantizer="fsq", fsq_levels=(8, 5, 5, 5)))
  # Worked by hand, levels in [3, 8]: 37.2 -> 36 (35 and 40 are farther; of 36's (6, 6) and
  # (4, 3, 3) the more channels); 230 -> 225 (224 and 240 are farther); a collapsed one -> 3.
  assert tokenizer_sweep.rate_matched_overrides(tok, perplexity)["fsq_levels"] == levels


def test_rate_matched_vq_codebook_is_the_rounded_perplexity():
  tok = ml_collections.ConfigDict(dict(quantizer="vq", codebook_size=512))
  assert tokenizer_sweep.rate_matched_overrides(tok, 37.6) == {"codebook_size": 38}
  assert tokenizer_sweep.rate_matched_overrides(tok, 1.2) == {"codebook_size": 2}


# ------------------------------------------------------------------------------------------------
# Paired statistics over seeds x items


def test_bootstrap_interval_matches_the_normal_theory_width_for_one_seed():
  rng = np.random.default_rng(0)
  d = rng.normal(0.05, 1.0, 4_000)
  ci = stats.paired_bootstrap([d])
  half = 1.96 * d.std(ddof=1) / np.sqrt(d.size)  # closed form for the mean of iid items
  assert ci["mean"] == pytest.approx(d.mean())
  assert (ci["hi"] - ci["lo"]) / 2 == pytest.approx(half, rel=0.1)
  assert ci["lo"] < d.mean() < ci["hi"] and (ci["n_seeds"], ci["n_items"]) == (1, 4_000)


def test_bootstrap_over_seeds_widens_the_interval_when_seeds_disagree():
  rng = np.random.default_rng(1)
  items = [rng.normal(0.0, 0.1, 500) for _ in range(4)]
  same = stats.paired_bootstrap(items)
  shifted = stats.paired_bootstrap([d + off for d, off in zip(items, (-1, 1, -1, 1), strict=True)])
  assert shifted["hi"] - shifted["lo"] > 5 * (same["hi"] - same["lo"])
  assert stats.verdict(shifted) == "no difference shown"
  assert stats.verdict(stats.paired_bootstrap([d + 1.0 for d in items])) == "yes"
  assert stats.verdict(stats.paired_bootstrap([d - 1.0 for d in items])) == "worse"
  with pytest.raises(ValueError):
    stats.paired_bootstrap([[]])


def test_per_item_scores_average_to_the_reported_metrics():
  """The per-item terms of the paired statistics are those of the table's metrics."""
  targets = {
    "cell_shape": np.array([[1, 0, 0, 0], [0, 2, 0, 0], [0, 0, 3, 0]]),
    "cell_colour": np.array([[4, 0, 0, 0], [0, 1, 0, 0], [0, 0, 2, 0]]),
    "cell_size": np.array([[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]]),
  }
  pred = {k: v.copy() for k, v in targets.items()}
  pred["cell_colour"][1, 1] = 3  # one attribute of four wrong in image 1
  pred["cell_shape"][2, 2] = 0  # image 2's object missed: shape, colour?, size?, detected wrong
  per_item = judge_lib.item_attribute_mean(pred, targets)
  np.testing.assert_allclose(per_item[:2], [1.0, 0.75])
  # One object per image: the object-weighted attribute mean equals the mean over images.
  assert per_item.mean() == pytest.approx(
    judge_lib.score_predictions(pred, targets)["attribute_mean"]
  )
  scores = np.random.default_rng(2).normal(size=(70, 70)) + 2 * np.eye(70)
  hits = captions.retrieval_hits(scores, 32)
  assert hits.shape == (70,) and hits.mean() == pytest.approx(metrics.r_precision(scores, 32))


# ------------------------------------------------------------------------------------------------
# Bad input: one ConfigError / DataError line (the entry point prints `error: ...`, exit 2)


@pytest.mark.parametrize(
  ("change", "message"),
  [
    ({"variants": ("baseline", "infotok_vibe")}, "unknown variant 'infotok_vibe'"),
    ({"variants": ("entropy", "infotok_vib")}, "lacks 'baseline'"),
    ({"variants": ("baseline", "vib_kl", "vib_kl")}, "twice"),
    ({"vib.betas": ()}, "config.vib.betas is empty"),
    ({"hsic.beta_x": ()}, "config.hsic.beta_x is empty"),
    ({"entropy.weights": ()}, "config.entropy.weights is empty"),
    ({"vib.consistency_weights": ()}, "config.vib.consistency_weights is empty"),
  ],
)
def test_bad_variants_and_empty_sweeps_are_config_errors(change, message):
  cfg = config_file.get_config("tiny")
  cfg.update_from_flattened_dict(change)
  with pytest.raises(ConfigError, match=message):
    checks.check_config(cfg)


def test_rate_matched_alone_still_needs_the_vib_sweep():
  cfg = config_file.get_config("tiny")
  cfg.variants, cfg.vib.betas = ("baseline", "rate_matched"), ()
  with pytest.raises(ConfigError, match="rate_matched is matched to the chosen InfoTok-VIB"):
    checks.check_config(cfg)
  cfg.vib.betas = (1e-3,)
  checks.check_config(cfg)  # an unused empty list (vib_nce's here) is no error
  cfg.vib.consistency_weights = ()
  checks.check_config(cfg)


def test_a_tfds_set_without_the_caption_feature_is_a_data_error(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  cfg = config_file.get_config("tiny,captions=true").data
  cfg.name, cfg.data_dir = "tfds:mnist", str(tmp_path)
  cfg.tfds_splits = dict(train="train", val="test", test="test")
  with tfds.testing.mock_data(num_examples=8), pytest.raises(DataError) as err:
    captions.load_data(cfg)
  assert "'captions/text'" in str(err.value) and "config.data.caption_feature" in str(err.value)


# ------------------------------------------------------------------------------------------------
# The information plane per style


def test_judge_critic_is_the_log_likelihood_of_each_scene_and_bounds_nce_by_log_n():
  arrays = {
    "shape": np.array([[0, -1], [1, 2], [2, -1], [3, 0]]),
    "colour": np.array([[1, -1], [2, 3], [4, -1], [5, 0]]),
    "size": np.array([[0, -1], [1, 0], [1, -1], [0, 1]]),
    "pos": np.array([[0, -1], [3, 8], [4, -1], [8, 1]]),
  }
  judge = judge_lib.Judge(params=None, grid=3, widths=(4,), hidden=8)
  t = judge_lib.cell_targets(arrays, 9)
  rng = np.random.default_rng(0)
  logits = tuple(rng.normal(size=(4, 9, k)) for k in (5, 6, 2))
  judge._batched = lambda fn, images: logits  # the network's per-cell logits, fixed here
  s = judge.critic_scores(np.zeros((4, 48, 48, 3)), arrays)
  eps = judge_lib.CRITIC_SMOOTHING
  softmax = lambda lg: np.exp(lg) / np.exp(lg).sum(-1, keepdims=True)
  logp = [np.log((1 - eps) * softmax(lg) + eps / lg.shape[-1]) for lg in logits]
  i, j = 1, 3  # image 1 scored against scene 3, cell by cell
  want = sum(logp[0][i, c, t["cell_shape"][j, c]] for c in range(9))
  want += sum(
    logp[1][i, c, t["cell_colour"][j, c]] + logp[2][i, c, t["cell_size"][j, c]]
    for c in range(9)
    if t["cell_shape"][j, c] > 0
  )
  assert s[i, j] == pytest.approx(want)
  confident = tuple(30.0 * np.eye(k)[t[key]] for k, key in zip((5, 6, 2), t, strict=True))
  judge._batched = lambda fn, images: confident
  nce = float(mi.infonce(jnp.asarray(judge.critic_scores(np.zeros((4, 48, 48, 3)), arrays))))
  assert np.log(4) - 0.05 < nce <= np.log(4)  # a confident right judge nears the log N cap


def test_style_plane_pools_the_chosen_tokenizer_of_each_style_over_seeds(tmp_path):
  def seed_info(shift):
    tok = lambda r: {"test": {"rate_nats": r + shift, "kl_nats": 1.0, "relevance_nce_nats": 2 * r}}
    return {
      "chosen": {"ar": {"baseline": "b", "infotok_vib": "v"}, "semantic": {"baseline": "sb"}},
      "tokenizers": {"b": tok(4.0), "v": tok(3.0), "sb": tok(5.0)},
    }

  points = plane.style_points({"0": seed_info(0.0), "1": seed_info(1.0)})
  assert points["ar"]["infotok_vib"]["rate_nats"] == [3.0, 4.0]
  assert "| ar | infotok_vib | 2 | 3.500 ± 0.707 | 1.000 ± 0.000 | 6.000 ± 0.000 |" in plane.table(
    points
  )
  png = plane.figure(points, str(tmp_path / "plane.png"))
  assert os.path.getsize(png) > 1000


# ------------------------------------------------------------------------------------------------
# bfloat16 compute (params float32)


def test_bfloat16_compute_runs_and_matches_float32_loosely():
  from infotok import tokenizer, unified, unified_trainer
  from shared import train_lib
  from tests.test_infotok import (
    batch_and_model,
    layout,
    raw_batch,
    small_tokenizer_cfg,
    unified_cfg,
  )
  from tests.test_infotok import weights as loss_weights

  model32, params, batch = batch_and_model()
  cfg16 = small_tokenizer_cfg()
  cfg16.compute_dtype = "bfloat16"
  model16 = tokenizer.make_tokenizer(cfg16, 10, 6)
  init16 = model16.init(jax.random.key(0), batch["image"], batch["caption"], jax.random.key(1), 0.0)
  assert {p.dtype for p in jax.tree.leaves(init16)} == {jnp.dtype("float32")}
  w = loss_weights(noise=1.0, vib=0.1, consistency=0.3)
  key = jax.random.key(2)
  loss32, (m32, _, _) = tokenizer.objective(
    model32, params, batch, key, w, entropy_temperature=0.01
  )
  loss16, (m16, _, _) = tokenizer.objective(
    model16, params, batch, key, w, entropy_temperature=0.01
  )
  assert np.isfinite(loss16) and loss16.dtype == jnp.float32
  np.testing.assert_allclose(loss16, loss32, rtol=0.05)
  np.testing.assert_allclose(m16["mse"], m32["mse"], rtol=0.05)

  lay = layout()
  mesh = train_lib.make_mesh()
  t32 = unified_trainer.UnifiedTrainer(unified_cfg(), "ar", lay, mesh)
  t16 = unified_trainer.UnifiedTrainer(unified_cfg(compute_dtype="bfloat16"), "ar", lay, mesh)
  p = t32.model.init(jax.random.key(0), jnp.zeros((1, lay.seq_len), jnp.int32))["params"]
  b = {
    k: jnp.asarray(v) for k, v in unified.mixed_batch(lay, raw_batch(), (0.5, 0.25, 0.25)).items()
  }
  l32, _ = unified.loss_fn(t32.model, "ar", lay, p, b, jax.random.key(1))
  l16, _ = unified.loss_fn(t16.model, "ar", lay, p, b, jax.random.key(1))
  np.testing.assert_allclose(l16, l32, rtol=0.02)
  codes = t16.generate_images(p, raw_batch(4)["caption"], jax.random.key(3))
  assert codes.shape == (4, lay.num_image_tokens) and codes.max() < lay.num_codes
