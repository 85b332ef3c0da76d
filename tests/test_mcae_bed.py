"""MCAE's bed and its read-out (issue 18): the ResNet baseline named by its width, video-level
scores, both HTER conventions, training to convergence on source val, protocols (leave-one-out,
limited-source, in-domain), the in-domain ceiling gate, the mechanism check, the tables."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from configs.mcae import get_config
from mcae import classifiers, evaluate, mechanism, train
from mcae.protocols import parse_protocols
from shared.errors import ConfigError, DataError

KEY = jax.random.PRNGKey(0)


def test_fas_report_both_conventions():
  rng = np.random.default_rng(0)
  val_labels = np.r_[np.ones(200), np.zeros(200)].astype(int)
  val_scores = np.r_[rng.normal(2, 1, 200), rng.normal(-2, 1, 200)]
  test_labels = np.r_[np.ones(300), np.zeros(300)].astype(int)
  # A domain shift: every target score is 3 lower, so the source threshold rejects most lives.
  test_scores = np.r_[rng.normal(2, 1, 300), rng.normal(-2, 1, 300)] - 3.0
  r = evaluate.fas_report(val_scores, val_labels, test_scores, test_labels)
  t = r["threshold_val"]
  far = np.mean(test_scores[test_labels == 0] >= t)
  frr = np.mean(test_scores[test_labels == 1] < t)
  np.testing.assert_allclose(r["hter_val"], (far + frr) / 2)
  assert r["hter_val"] > r["hter_eer"] + 0.2  # the test-EER convention hides the shift
  np.testing.assert_allclose(r["auc"], roc_auc_score(test_labels, test_scores), atol=1e-9)
  assert abs(r["hter_eer"] - r["eer"]) < 0.01


def test_video_level_scores_pool_frames_per_video():
  """A video's score is the mean of its frames'; video ids are per domain; a video with both
  live and spoof frames is a DataError."""
  rng = np.random.default_rng(0)
  n_videos, frames = 60, 5
  video_label = np.arange(n_videos) % 2
  video = np.repeat(np.arange(n_videos), frames)
  labels = video_label[video]

  # Frame scores: a small per-video signal under large per-frame noise.
  def split_scores(offset=0.0):
    return 0.8 * (2 * labels - 1) + rng.normal(0, 2, len(labels)) + offset

  val = {"label": labels, "video": video % 30, "domain": video // 30}  # ids repeat per domain
  keys = evaluate.video_keys(val)
  assert len(np.unique(keys)) == n_videos
  val_scores, test_scores = split_scores(), split_scores(-1.0)
  means, vlabels = evaluate.video_scores(test_scores, labels, keys)
  np.testing.assert_allclose(means[0], test_scores[:frames].mean())
  np.testing.assert_array_equal(vlabels, video_label)
  r = evaluate.fas_report(val_scores, labels, test_scores, labels, keys, keys)
  assert r["num_test_videos"] == n_videos
  np.testing.assert_allclose(r["video_auc"], roc_auc_score(video_label, means), atol=1e-9)
  assert r["video_auc"] > r["auc"] + 0.05  # averaging frames removes the per-frame noise
  t = r["video_threshold_val"]  # fixed on the val videos, applied to the test videos
  hter = (np.mean(means[video_label == 0] >= t) + np.mean(means[video_label == 1] < t)) / 2
  np.testing.assert_allclose(r["video_hter_val"], hter)
  frame_only = evaluate.fas_report(val_scores, labels, test_scores, labels)
  assert frame_only["video_auc"] == frame_only["auc"]  # no video ids: each frame its own video
  mixed = labels.copy()
  mixed[1] = 1 - mixed[1]
  with pytest.raises(DataError, match="both live and spoof"):
    evaluate.video_scores(test_scores, mixed, keys)


def test_convergence_keeps_the_best_val_auc_and_stops_on_a_plateau(tmp_path, monkeypatch):
  """Source-val AUC per evaluation 0.6, 0.8 (best), 0.7, 0.8 (a tie is no better): with
  patience 2 and an evaluation every 10 steps training stops at step 40, the step-20 params
  are the ones restored, and a resumed run keeps the best and the patience."""
  from types import SimpleNamespace

  from mcae import selection

  labels = np.r_[np.ones(50), np.zeros(50)].astype(int)

  def scores_with_auc(auc):  # live scores above spoof ones for a share `auc` of the pairs
    cut = int(round(auc * 100))
    return np.r_[np.arange(50) + cut, np.arange(50) + 50].astype(float)

  aucs = {10: 0.6, 20: 0.8, 30: 0.7, 40: 0.8, 50: 0.9}
  fake = lambda score, params, *a: scores_with_auc(aucs[int(params["step"])])
  monkeypatch.setattr(selection.evaluate, "predict", fake)
  stage = SimpleNamespace(score=None, sharding=SimpleNamespace(params=None, model_state=None))
  val = {"image": np.zeros((100, 1)), "label": labels}
  state = lambda step: SimpleNamespace(params={"step": np.asarray(step)}, model_state={})
  hook = selection.BestValSelection(stage, str(tmp_path), val, 32, None, every=10, patience=2)
  seen = [hook(step, state(step))["select_val_auc"] for step in (10, 20, 30)]
  assert seen[1] == max(seen) and hook.best["step"] == 20
  resumed = selection.BestValSelection(stage, str(tmp_path), val, 32, None, every=10, patience=2)
  assert resumed.best["step"] == 20
  with pytest.raises(selection.EarlyStop) as stop:
    resumed(40, state(40))
  assert stop.value.step == 40
  params, _ = resumed.restore()
  assert int(params["step"]) == 20
  # patience 0: never stops early, still keeps the best.
  forever = selection.BestValSelection(stage, str(tmp_path / "p0"), val, 32, None, every=10,
                                       patience=0)  # fmt: skip
  for step in (10, 20, 30, 40):
    forever(step, state(step))
  assert forever.best["step"] == 20


def test_protocol_specs():
  """Leave-one-out targets, explicit (limited-source) protocols and the in-domain ceiling; a
  protocol naming an unknown domain is a ConfigError naming it."""
  domains = ["d0", "d1", "d2", "d3"]
  loo, limited, ceiling = parse_protocols(domains, ["d0", "d1&d2->d0", "in_domain"])
  assert (loo.sources, loo.targets, loo.name) == ((1, 2, 3), (0,), "d1&d2&d3->d0")
  assert (limited.sources, limited.targets, limited.slug) == ((1, 2), (0,), "d1_d2-to-d0")
  assert ceiling.in_domain and not loo.in_domain and ceiling.targets == (0, 1, 2, 3)
  assert [p.targets for p in parse_protocols(domains, ())] == [(0,), (1,), (2,), (3,)]
  for bad, words in [("d9", "'d9'"), ("d1&oulu->d0", "'oulu'"), ("d1->d1", "both a source")]:
    with pytest.raises(ConfigError, match=words):
      parse_protocols(domains, [bad])


def test_mechanism_check_separates_shifted_domains_only():
  """Live features whose domains differ by a mean shift: the domain classifier beats chance by
  far and the MMD is large; features from one distribution: accuracy near chance, MMD ~ 0."""
  rng = np.random.default_rng(0)
  domains = np.repeat(np.arange(3), 60)
  same = rng.normal(size=(180, 8))
  shifted = same + 3.0 * np.eye(8)[domains]
  far, near = (mechanism.separability(f, domains, folds=5) for f in (shifted, same))
  assert far["live_domain_chance"] == pytest.approx(1 / 3)
  assert far["live_domain_acc"] > 0.9 and near["live_domain_acc"] < 0.5
  assert far["live_mmd"] > 10 * abs(near["live_mmd"])
  x, y = rng.normal(size=(5, 2)), rng.normal(size=(4, 2))
  k = lambda a, b: np.exp(-np.sum((a - b) ** 2) / 2)
  direct = (
    np.mean([k(a, b) for a in x for b in x])
    + np.mean([k(a, b) for a in y for b in y])
    - 2 * np.mean([k(a, b) for a in x for b in y])
  )
  np.testing.assert_allclose(mechanism.mmd2(x, y, 1.0), direct)


def test_ceiling_gate():
  cfg = get_config("ceiling")
  protocols = parse_protocols(["d0", "d1", "d2", "d3"], cfg.protocols)
  runs = [{"method": "resnet18_w64", "protocol": "in-domain", "val_auc": v} for v in (0.99, 0.975)]
  (gate,) = train.ceiling_gates(cfg, runs, protocols)
  assert gate["passed"] and gate["value"] == pytest.approx(0.9825) and gate["threshold"] == 0.97
  runs[0]["val_auc"] = 0.9
  assert not train.ceiling_gates(cfg, runs, protocols)[0]["passed"]
  # The ceiling: a real ResNet-18 in-domain on the compare bed; compare: 6 protocols, 3 seeds,
  # ViT-S/8 pre-trained for at least 100 epochs of its sources.
  cmp = get_config("compare")
  assert cfg.methods == ("resnet18_w64",) and cfg.data.options == cmp.data.options
  assert len(cmp.protocols) == 6 and cmp.seeds == (0, 1, 2) and cmp.model.size == "S"
  sources = 3 * cmp.data.options.num_train
  assert cmp.pretrain.num_steps * cmp.pretrain.batch_size / sources >= 100


def test_summarise_mean_row_averages_protocols_within_seed():
  runs = []
  for seed, offset in ((0, 0.0), (1, 0.1)):
    for protocol, v in (("a", 0.1), ("b", 0.3)):
      m = {k: v + offset for k in evaluate.METRICS}
      info = dict(params=1234, pretrain_steps=10, pretrain_batch_size=8, steps=20 + seed)
      info.update(batch_size=4, examples_seen=160 + 4 * (20 + seed), wall_time_s=60.0 + 60 * seed)
      runs.append({"method": "m", "protocol": protocol, "seed": seed, **info, **m})
  rows = evaluate.summarise(runs, ["m"], ["a", "b"])
  mean = next(r for r in rows if r["protocol"] == "mean")
  np.testing.assert_allclose(mean["hter_eer_seeds"], [0.2, 0.3])
  np.testing.assert_allclose(mean["hter_eer_std"], np.std([0.2, 0.3], ddof=1))
  table = evaluate.markdown_tables(rows, ["a", "b"])
  assert "| m | 15.0 ± 7.1 | 35.0 ± 7.1 | 25.0 ± 7.1 |" in table
  # The parameter count, the compute (mean steps run x batch) and wall minutes beside the HTERs.
  assert "| m | 1.2K | 10x8 + 20x4 | 242 | 1.5 | 25.0 ± 7.1 |" in table


@pytest.mark.parametrize("variant, width", [(None, 4), ("compare", 64), ("paper", 64)])
def test_resnet_baseline_is_named_by_its_width(variant, width):
  """`resnet18_w4` (the CPU default's, ~44K parameters) is not called a ResNet-18 without its
  width; `compare` and `paper` run the real one (width 64, ~11M)."""
  cfg = get_config(variant)
  resnets = [m for m in cfg.methods if cfg.method_table[m].classifier == "resnet18"]
  assert resnets == [f"resnet18_w{width}"] and cfg.method_table[resnets[0]].width == width
  model = classifiers.resnet18(width, jnp.float32)
  params, _ = jax.eval_shape(classifiers.init_params(model, (32, 32, 3)), KEY)
  count = classifiers.num_params(params)
  assert (30_000 < count < 60_000) if width == 4 else (10_000_000 < count < 12_000_000)
