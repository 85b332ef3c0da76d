"""The evaluation set-up of a run, in workdir/eval/: FD features, reference statistics, the fixed
initial noise, and the teacher's samples from it (the SSIM reference).

`Evaluator.evaluate(kit, params, name)` gives one row (FD, SSIM to the teacher, params, MACs,
latency) and a sample grid; the metrics themselves are `evaluate`'s.
"""

from __future__ import annotations

import logging
import os
import time

import jax
import numpy as np

from gradflow_prune import evaluate
from gradflow_prune.toolkit import Toolkit
from shared import fd, judge, stages
from shared.errors import ConfigError
from shared.metrics import FeatureStats
from shared.models import unet
from shared.workdir import read_json, save_npz, write_json


def _extractor(config, eval_dir: str, train: dict) -> fd.FeatureExtractor:
  """Inception when its weights are given, else the fixed judge when one is named (`eval.judge`,
  e.g. the shipped CIFAR-10 one), else the data's classifier (trained once, cached)."""
  ec = config.eval
  if ec.inception_weights:
    return fd.load_inception(ec.inception_weights)
  if ec.judge:
    return judge.load(ec.judge, batch_size=ec.batch_size)
  path = os.path.join(eval_dir, "features.npz")
  if os.path.isfile(path):
    return fd.FeatureExtractor.load(path)
  logging.info("eval: training the FD feature classifier (%d steps)", ec.feature_steps)
  extractor = fd.train_classifier_features(
    train["image"],
    train["label"],
    num_classes=int(train["label"].max()) + 1,
    steps=ec.feature_steps,
    seed=config.seed,
  )
  extractor.save(path)
  return extractor


class Evaluator:
  """FD features, reference statistics, the fixed noise and the teacher's samples (cached)."""

  def __init__(self, config, workdir: str, train: dict, test: dict):
    self.config = config
    self.dir = os.path.join(workdir, "eval")
    os.makedirs(self.dir, exist_ok=True)
    ec = config.eval
    for field in ("num_samples", "curve_samples"):
      if ec[field] % ec.batch_size:
        raise ConfigError(
          f"eval.{field} ({ec[field]}) must be a multiple of eval.batch_size ({ec.batch_size})"
        )
    if not 0 <= ec.curve_samples <= ec.num_samples:
      raise ConfigError(f"eval.curve_samples must be in [0, num_samples], got {ec.curve_samples}")
    if ec.reference not in ("train", "test"):
      raise ConfigError(f"eval.reference={ec.reference!r}; known: train, test")
    self.extractor = _extractor(config, self.dir, train)
    ref, other = (train, test) if ec.reference == "train" else (test, train)
    suffix = "" if ec.reference == "train" else "_test"
    stats_path = os.path.join(self.dir, f"ref_stats_{self.extractor.name}{suffix}.npz")
    if os.path.isfile(stats_path):
      self.ref = FeatureStats.load(stats_path)
    else:
      self.ref = fd.feature_stats(self.extractor, ref["image"])
      self.ref.save(stats_path)
    n = min(ec.num_samples, len(other["image"]))
    # FD of as many real images of the other split as we sample: what sampling error alone
    # costs. A random subset: built-in splits come in file order (mnist5k: sorted by label).
    held_out = np.random.default_rng(ec.seed).choice(len(other["image"]), n, replace=False)
    self.data_fd = self.fd(other["image"][np.sort(held_out)])
    self.shape = train["image"].shape[1:]
    self.noise = jax.random.normal(jax.random.PRNGKey(ec.seed), (ec.num_samples, *self.shape))
    self.teacher_samples = None

  def fd(self, samples01) -> float:
    return fd.feature_stats(self.extractor, samples01).frechet_distance(self.ref)

  def samples(self, kit: Toolkit, params, n: int | None = None) -> np.ndarray:
    """DDIM samples from the (first n of the) fixed noise, in [0, 1]."""
    sample = lambda x_T: kit.sample(params, None, x_T)
    return stages.batched_apply(sample, self.noise[:n], self.config.eval.batch_size)

  def latency(self, kit: Toolkit, params) -> float:
    ec = self.config.eval
    x_T = self.noise[: ec.latency_batch]
    return evaluate.measure_latency(kit.sample, params, None, x_T, repeats=ec.latency_repeats)

  def quality(self, kit: Toolkit, params) -> dict:
    """FD and SSIM to the teacher's samples (same noise): a convergence-curve point, from the
    first `eval.curve_samples` of the noise (0: all; FD's bias depends on the count, so points
    compare with each other, and with the final FD only when the counts agree)."""
    params = jax.device_put(jax.device_get(params))
    start = time.time()
    n = self.config.eval.curve_samples or self.config.eval.num_samples
    samples = self.samples(kit, params, n)
    return {
      "fd": self.fd(samples),
      "ssim": evaluate.ssim_to_teacher(samples, self.teacher_samples[:n]),
      "samples": n,
      "sample_s": round(time.time() - start, 2),
    }

  def evaluate(self, kit: Toolkit, params, name: str) -> dict:
    """FD, SSIM to the teacher's samples (same noise), params, MACs, latency; a sample grid."""
    params = jax.device_put(jax.device_get(params))
    start = time.time()
    samples = self.samples(kit, params)
    if self.teacher_samples is None:
      self.teacher_samples = samples
    row = {
      "fd": self.fd(samples),
      "ssim": evaluate.ssim_to_teacher(samples, self.teacher_samples),
      "params": unet.num_params(params),
      "macs": evaluate.unet_macs(kit.config_dict),
      "latency_s": self.latency(kit, params),
      "sample_s": round(time.time() - start, 2),
    }
    return self._judged(row, samples, name, title=name)

  def _judged(self, row: dict, samples, name: str, title: str) -> dict:
    """`row` with the judge's view of the samples (when `eval.judge`: does an independent
    classifier recognise them?); their grid saved as eval/samples_<name>.png."""
    if self.config.eval.judge:
      row.update(self.recognition(samples))
    grid = samples[: self.config.eval.grid]
    evaluate.save_grid(grid, os.path.join(self.dir, f"samples_{name}.png"), title=title)
    return row

  def evaluate_random_init(self, kit: Toolkit, seed: int) -> dict:
    """FD (and the judge's view) of a random-init U-Net of the teacher's architecture, sampled
    from the same noise: the teacher gate's yardstick (`gate.py`), cached in eval/ per seed."""
    path = os.path.join(self.dir, "random_init_eval.json")
    key = {"seed": int(seed), "unet": kit.config_dict, "num_samples": self.config.eval.num_samples}
    cached = read_json(path)
    if cached and cached.get("key") == key:
      return cached["row"]
    params = unet.init_params(kit.model, seed)
    samples = self.samples(kit, params)
    row = self._judged({"fd": self.fd(samples)}, samples, "random_init", title="random init")
    write_json(path, {"key": key, "row": row})
    return row

  def recognition(self, samples01) -> dict:
    """The judge's mean top-class probability over the samples and their class histogram."""
    probs = judge.probabilities(self.extractor, samples01)
    counts = np.bincount(probs.argmax(-1), minlength=probs.shape[1])
    return {"judge_confidence": float(probs.max(-1).mean()), "judge_histogram": counts.tolist()}

  def evaluate_teacher(self, kit: Toolkit, params, source: str) -> dict:
    """The teacher's row and samples (the SSIM reference), cached in eval/ per teacher source."""
    row_path = os.path.join(self.dir, "teacher_eval.json")
    samples_path = os.path.join(self.dir, "teacher_samples.npz")
    cached = read_json(row_path)
    if cached and cached.get("source") == source and os.path.isfile(samples_path):
      with np.load(samples_path) as f:
        self.teacher_samples = f["samples"]
      return cached["row"]
    row = self.evaluate(kit, params, "teacher")
    save_npz(samples_path, {"samples": self.teacher_samples})  # process 0, atomic
    write_json(row_path, {"source": source, "row": row})
    return row
