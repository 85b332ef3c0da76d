"""shared.metrics against scikit-learn, scikit-image, scipy and closed forms."""

import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from sklearn.metrics import roc_auc_score, roc_curve, top_k_accuracy_score

from shared import metrics
from shared.errors import DataError

_SETTINGS = settings(max_examples=30, deadline=None)

# ---- FAS metrics ----


@st.composite
def _scored_labels(draw):
  n = draw(st.integers(2, 60))
  labels = np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
  labels[0], labels[-1] = 1, 0  # both classes present
  # Few distinct values, so ties between live and attack scores are common.
  levels = draw(st.integers(2, 8))
  seed = draw(st.integers(0, 2**16))
  rng = np.random.default_rng(seed)
  scores = rng.integers(0, levels, size=n) / levels + 0.1 * labels * rng.random(n)
  if draw(st.booleans()):
    scores = np.round(scores, 1)
  return scores, labels


def _sklearn_eer(fpr, tpr):
  fnr = 1 - tpr
  k = int(np.argmax(fpr >= fnr))
  # Root of fpr - fnr on the segment [k-1, k] of the ROC.
  g0, g1 = fpr[k - 1] - fnr[k - 1], fpr[k] - fnr[k]
  return fpr[k - 1] + (-g0 / (g1 - g0)) * (fpr[k] - fpr[k - 1])


@_SETTINGS
@given(data=_scored_labels())
def test_fas_metrics_match_sklearn(data):
  scores, labels = data
  out = metrics.fas_metrics(scores, labels)
  assert set(out) == {"hter", "eer", "auc", "tpr_at_fpr_1pct", "threshold"}
  fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=False)
  ours_fpr, ours_tpr, ours_thr = metrics.roc_points(scores, labels)
  np.testing.assert_allclose(ours_fpr, fpr)
  np.testing.assert_allclose(ours_tpr, tpr)
  np.testing.assert_allclose(ours_thr[1:], thr[1:])
  np.testing.assert_allclose(out["auc"], roc_auc_score(labels, scores), atol=1e-12)
  np.testing.assert_allclose(out["tpr_at_fpr_1pct"], tpr[fpr <= 0.01].max())
  np.testing.assert_allclose(out["eer"], _sklearn_eer(fpr, tpr), atol=1e-12)
  # The EER threshold is a data threshold where |FAR - FRR| is smallest over all thresholds.
  gaps = np.abs(fpr[1:] - (1 - tpr[1:]))
  far = np.mean(scores[labels == 0] >= out["threshold"])
  frr = np.mean(scores[labels == 1] < out["threshold"])
  np.testing.assert_allclose(abs(far - frr), gaps.min(), atol=1e-12)
  np.testing.assert_allclose(out["hter"], (far + frr) / 2, atol=1e-12)
  assert 0 <= out["eer"] <= 1 and 0 <= out["hter"] <= 1


def test_fas_metrics_given_threshold_is_honest_hter():
  scores = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1])
  labels = np.array([1, 1, 0, 1, 0, 1, 0, 0])
  out = metrics.fas_metrics(scores, labels, threshold=0.5)
  # Attacks accepted: 0.7 -> FAR 1/4. Lives rejected: 0.3 -> FRR 1/4.
  assert out["hter"] == pytest.approx(0.25)
  assert out["threshold"] == 0.5
  # Lives rejected: 0.6 and 0.3 -> FRR 2/4; attack 0.7 accepted -> FAR 1/4.
  assert metrics.fas_metrics(scores, labels, threshold=0.65)["hter"] == pytest.approx(0.375)
  strict = metrics.fas_metrics(scores, labels, threshold=0.95)  # rejects everything
  assert strict["hter"] == pytest.approx(0.5)
  assert strict["eer"] == out["eer"] and strict["auc"] == out["auc"]


def test_fas_metrics_perfect_and_inverted_scores():
  labels = np.array([0, 0, 0, 1, 1, 1])
  perfect = metrics.fas_metrics(np.arange(6.0), labels)
  assert perfect["eer"] == 0 and perfect["hter"] == 0 and perfect["auc"] == 1
  assert perfect["tpr_at_fpr_1pct"] == 1
  inverted = metrics.fas_metrics(-np.arange(6.0), labels)
  assert inverted["eer"] == 1 and inverted["auc"] == 0


def test_fas_metrics_single_class_and_bad_input_raise():
  with pytest.raises(DataError, match="both live"):
    metrics.fas_metrics(np.array([0.1, 0.2]), np.array([1, 1]))
  with pytest.raises(DataError):
    metrics.fas_metrics(np.array([0.1, np.nan]), np.array([0, 1]))
  with pytest.raises(DataError):
    metrics.fas_metrics(np.array([0.1, 0.2]), np.array([0, 2]))
  with pytest.raises(DataError):
    metrics.fas_metrics(np.array([0.1, 0.2, 0.3]), np.array([0, 1]))


# ---- SSIM / PSNR ----


def _random_pair(seed, shape, data_range):
  rng = np.random.default_rng(seed)
  a = rng.random(shape) * data_range
  b = np.clip(a + 0.2 * data_range * rng.standard_normal(shape), 0, data_range)
  return a.astype(np.float32), b.astype(np.float32)


@pytest.mark.parametrize(
  ("shape", "data_range"), [((3, 32, 24, 3), 1.0), ((2, 16, 40, 1), 255.0), ((28, 28, 1), 1.0)]
)
def test_ssim_matches_skimage(shape, data_range):
  a, b = _random_pair(0, shape, data_range)
  ours = np.atleast_1d(np.asarray(metrics.ssim(jnp.asarray(a), jnp.asarray(b), data_range)))
  batch_a, batch_b = (a, b) if a.ndim == 4 else (a[None], b[None])
  ref = [
    structural_similarity(
      x,
      y,
      gaussian_weights=True,
      sigma=1.5,
      use_sample_covariance=False,
      data_range=data_range,
      channel_axis=-1,
    )
    for x, y in zip(batch_a, batch_b, strict=True)
  ]
  np.testing.assert_allclose(ours, ref, atol=1e-4)
  np.testing.assert_allclose(
    metrics.ssim(jnp.asarray(a), jnp.asarray(a), data_range), 1.0, atol=1e-5
  )


def test_ssim_is_jittable_and_rejects_tiny_images():
  a, b = _random_pair(1, (2, 16, 16, 3), 1.0)
  np.testing.assert_allclose(jax.jit(metrics.ssim)(a, b), metrics.ssim(a, b), rtol=1e-6)
  with pytest.raises(DataError):
    metrics.ssim(jnp.zeros((8, 8, 1)), jnp.zeros((8, 8, 1)))


def test_psnr_matches_skimage():
  a, b = _random_pair(2, (3, 20, 20, 3), 255.0)
  ours = metrics.psnr(jnp.asarray(a), jnp.asarray(b), data_range=255.0)
  chex.assert_shape(ours, (3,))
  ref = [peak_signal_noise_ratio(x, y, data_range=255.0) for x, y in zip(a, b, strict=True)]
  np.testing.assert_allclose(ours, ref, rtol=1e-4)


# ---- accuracy ----


def test_accuracy_and_top_k_match_sklearn():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((200, 10)).astype(np.float32)
  labels = rng.integers(0, 10, 200)
  np.testing.assert_allclose(
    metrics.accuracy(jnp.asarray(logits), jnp.asarray(labels)), np.mean(logits.argmax(1) == labels)
  )
  np.testing.assert_allclose(
    metrics.accuracy(jnp.asarray(logits.argmax(1)), jnp.asarray(labels)),
    np.mean(logits.argmax(1) == labels),
  )
  for k in (1, 3, 5, 9):
    np.testing.assert_allclose(
      jax.jit(metrics.top_k_accuracy, static_argnums=2)(
        jnp.asarray(logits), jnp.asarray(labels), k
      ),
      top_k_accuracy_score(labels, logits, k=k, labels=np.arange(10)),
      rtol=1e-6,
    )
  with pytest.raises(DataError):
    metrics.accuracy(jnp.zeros((4, 3)), jnp.zeros((5,), jnp.int32))


# ---- Frechet distance ----


def _eigh_trace_sqrt(cov1, cov2):
  """tr((cov1 cov2)^(1/2)) = sum_i sqrt(eig_i(cov1^(1/2) cov2 cov1^(1/2))), a PSD matrix."""
  w, v = np.linalg.eigh(cov1)
  root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  m = root1 @ cov2 @ root1
  return np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()


def test_frechet_distance_closed_form_for_diagonal_covariances():
  rng = np.random.default_rng(0)
  mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
  var1, var2 = rng.random(6) + 0.1, rng.random(6) + 0.1
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
  got = metrics.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
  np.testing.assert_allclose(got, expected, rtol=1e-10)
  assert metrics.frechet_distance(mu1, np.diag(var1), mu1, np.diag(var1)) == pytest.approx(
    0, abs=1e-10
  )


@pytest.mark.parametrize(("n", "dim"), [(500, 16), (20, 64), (3, 128)])
def test_frechet_distance_matches_scipy_formula_even_when_singular(n, dim):
  rng = np.random.default_rng(n)
  x = rng.standard_normal((n, dim))
  y = 1.5 * rng.standard_normal((n, dim)) + 0.3
  mu1, cov1 = x.mean(0), np.cov(x, rowvar=False)
  mu2, cov2 = y.mean(0), np.cov(y, rowvar=False)
  expected = (
    np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * _eigh_trace_sqrt(cov1, cov2)
  )
  got = metrics.frechet_distance(mu1, cov1, mu2, cov2)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  root = scipy.linalg.sqrtm(cov1 @ cov2)
  scipy_formula = np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2) - 2 * np.trace(root).real
  np.testing.assert_allclose(got, scipy_formula, rtol=1e-9)


def test_frechet_distance_rejects_bad_input():
  with pytest.raises(DataError):
    metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
  with pytest.raises(DataError):
    metrics.frechet_distance(np.zeros(2), np.array([[np.nan, 0], [0, 1]]), np.zeros(2), np.eye(2))


def test_feature_stats_streaming_matches_numpy_and_merges(tmp_path):
  rng = np.random.default_rng(0)
  x = (rng.standard_normal((1000, 8)) * 3 + 1e4).astype(np.float32)  # large offset: stability
  stats = metrics.FeatureStats()
  for chunk in np.array_split(x, 7):
    stats.update(chunk)
  assert stats.count == 1000
  np.testing.assert_allclose(stats.mean, x.astype(np.float64).mean(0), rtol=1e-12)
  np.testing.assert_allclose(stats.cov, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-9)
  a = metrics.FeatureStats().update(x[:300])
  b = metrics.FeatureStats().update(x[300:])
  merged = a.merge(b)
  np.testing.assert_allclose(merged.cov, stats.cov, rtol=1e-9)
  stats.save(tmp_path / "stats.npz")
  loaded = metrics.FeatureStats.load(tmp_path / "stats.npz")
  assert loaded.count == 1000
  np.testing.assert_allclose(loaded.cov, stats.cov)
  assert stats.frechet_distance(loaded) == pytest.approx(0.0, abs=1e-6)
  with pytest.raises(DataError):
    metrics.FeatureStats().update(np.zeros((3, 4))).update(np.zeros((3, 5)))
  with pytest.raises(DataError):
    metrics.FeatureStats.load(tmp_path / "missing.npz")
  with pytest.raises(DataError):
    _ = metrics.FeatureStats().mean


# Text and retrieval.


def test_corpus_bleu_matches_nltk():
  bleu = pytest.importorskip("nltk.translate.bleu_score")
  rng = np.random.default_rng(0)
  words = list("abcd")
  for _ in range(50):
    # Hypotheses of >= 4 words: nltk counts an empty n-gram set as 0 / 1, not 0 / 0.
    hyps = [list(rng.choice(words, rng.integers(4, 12))) for _ in range(rng.integers(1, 6))]
    refs = [[list(rng.choice(words, rng.integers(1, 12))) for _ in range(3)] for _ in hyps]
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # nltk warns when an order has no match
      expected = bleu.corpus_bleu(refs, hyps)
    assert metrics.corpus_bleu(hyps, refs) == pytest.approx(expected, abs=1e-12)
  same = [["a", "man", "rides", "a", "horse"]]
  assert metrics.corpus_bleu(same, [same]) == pytest.approx(1.0)
  with pytest.raises(DataError):
    metrics.corpus_bleu(same, [])


def test_r_precision():
  eye = np.eye(70)
  assert metrics.r_precision(eye, group=32) == 1.0
  assert metrics.r_precision(-eye, group=32) == 0.0
  rng = np.random.default_rng(0)
  chance = metrics.r_precision(rng.normal(size=(3200, 3200)), group=32)
  assert abs(chance - 1 / 32) < 0.01
  with pytest.raises(DataError):
    metrics.r_precision(np.ones((3, 2)))
