"""The mechanism check: how domain-separable the frozen pre-trained live features are.

MCAE's stated aim is that "live samples from different domains share features". So after
pre-training, before any fine-tuning, the frozen encoder embeds the live frames of every domain
of a protocol (sources' val and targets' test: held-out lives are what must merge), and two
numbers say how far the domains stay apart:

  live_domain_acc   cross-validated accuracy of a linear domain classifier (standardised
                    features, logistic regression, stratified folds); chance = 1 / domains
  live_mmd          mean over domain pairs of the squared MMD (Gaussian kernel, median-distance
                    bandwidth; biased V-statistic, Gretton et al. 2012)

Lower is more domain-invariant. MAE-only vs MCAE on the same protocol and seed is the check.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from mcae import evaluate
from mcae.pretrain_loss import MaskedEncoder, vit_kwargs
from shared import stages, train_lib
from shared.data.convert import to_float


def feature_fn(model_cfg, dtype):
  """A jitted `(encoder_params, _, images) -> pooled features_BxD` over all patches."""
  net = MaskedEncoder(vit_kwargs(model_cfg, dtype), mask_ratio=0.0)

  def features(encoder_params, model_state, images_BxHxWxC):
    del model_state
    x = to_float(images_BxHxWxC)
    return net.apply({"params": {"encoder": encoder_params}}, x, jax.random.PRNGKey(0))

  return stages.compiled(stages.stage_key("mcae/features", model_cfg, str(jnp.dtype(dtype))),
                         lambda: jax.jit(features))  # fmt: skip


def domain_classifier_accuracy(features: np.ndarray, domains: np.ndarray, folds: int, seed: int):
  """Stratified k-fold accuracy of a logistic-regression domain classifier (k <= the smallest
  domain's count), on standardised features."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.model_selection import StratifiedKFold, cross_val_score
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler

  k = int(min(folds, np.bincount(domains)[np.unique(domains)].min()))
  if k < 2:
    return float("nan")
  model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
  cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
  return float(cross_val_score(model, features, domains, cv=cv).mean())


def mmd2(x: np.ndarray, y: np.ndarray, sigma: float) -> float:
  """Biased squared MMD between samples x and y with a Gaussian kernel of width sigma."""

  def k(a, b):
    d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * sigma**2))

  return float(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())


def separability(features: np.ndarray, domains: np.ndarray, *, folds: int = 5, seed: int = 0):
  """{"live_domain_acc", "live_domain_chance", "live_mmd"} of features grouped by domain."""
  features = np.asarray(features, np.float64)
  present = np.unique(domains)
  mean, std = features.mean(0), features.std(0) + 1e-8
  z = (features - mean) / std
  d2 = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
  sigma = float(np.sqrt(np.median(d2[np.triu_indices(len(z), 1)]) / 2)) or 1.0
  pairs = list(itertools.combinations(present, 2))
  mmd = np.mean([mmd2(z[domains == a], z[domains == b], sigma) for a, b in pairs])
  return {
    "live_domain_acc": domain_classifier_accuracy(features, domains, folds, seed),
    "live_domain_chance": 1.0 / len(present),
    "live_mmd": float(mmd),
  }


def live_feature_check(ctx, mcfg, backbone_params, source_val, target_test, seed: int) -> dict:
  """`separability` of the frozen encoder's features of the protocol's live frames."""
  lives = {
    k: np.concatenate([a[k][a["label"] == 1] for a in (source_val, target_test)])
    for k in ("image", "domain")
  }
  cap = mcfg.mechanism.max_per_domain
  keep = np.concatenate(
    [np.flatnonzero(lives["domain"] == d)[:cap] for d in np.unique(lives["domain"])]
  )
  fn = feature_fn(mcfg.model, train_lib.compute_dtype(ctx.config.run.dtype))
  features = evaluate.predict(
    fn,
    backbone_params["encoder"],
    {},
    {"image": lives["image"][keep]},
    ctx.config.eval_batch_size,
    ctx.data_sharding,
  )
  return separability(features, lives["domain"][keep], folds=mcfg.mechanism.folds, seed=seed)
