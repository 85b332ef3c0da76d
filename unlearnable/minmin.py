"""Bi-level min-min perturbation search: EM (Huang et al. 2021), TUE (Ren et al. 2023) and the
distribution-level variant, sharing one loop.

    repeat (rounds):
      train the surrogate for `train_steps` batches on x + delta          (outer min over theta)
      sweep the whole set in batches: `pgd_steps` signed steps on delta   (inner min over delta)
          delta <- Proj(delta - step_size * sign(grad_delta L))
      EM only: stop once the surrogate's accuracy on x + delta >= stop_accuracy (and at least
      `min_rounds` rounds ran: on a few thousand images the criterion is met after 1-2 sweeps,
      before the noise is strong enough to dominate a victim trained from scratch)
    Proj: clip to [-eps, eps], then so that x + delta stays in [0, 1].

The perturbation objective L per kind:
  em:   CE(f(x + delta), y)                                                   (Huang et al., eq. 2)
  tue:  NT-Xent(g(T1(x + delta)), g(T2(x + delta))) + lambda * CSD(delta, y)   (Ren et al., eq. 5)
  dist: the TUE objective + mu * mean_s D_s, D_s the class separability of x + delta in the feature
        space of surrogate s: the SimCLR encoder being trained and networks of other architectures,
        freshly initialised every round (see docs/unlearnable.md for why).
The gradient of the TUE/dist objective flows through both augmented views, i.e. the PGD step uses
the average of the two views' gradients (the released code averages the two projected steps).
BatchNorm during the EM search (`em.bn`): "running" (Huang et al.'s released code: the surrogate
trains in train mode, then the PGD sweep and the stop criterion run it in eval mode, on running
statistics) or "batch" (batch statistics in the sweep and the stop criterion too; the behaviour
before 2026-12-03). TUE / dist always use batch statistics (their SimCLR surrogate's loss needs
the batch).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from shared import stages, train_lib
from shared.errors import ConfigError
from unlearnable import augment, csd, nets, simclr

KINDS = ("em", "tue", "dist")
BN_MODES = ("running", "batch")  # em.bn: BatchNorm statistics in the EM sweep and stop criterion


def _simclr_views(cfg_aug, key, x):
  k1, k2 = jax.random.split(key)
  kw = dict(
    crop_scale=tuple(cfg_aug.crop_scale),
    jitter_strength=cfg_aug.jitter_strength,
    jitter_prob=cfg_aug.jitter_prob,
    grayscale_prob=cfg_aug.grayscale_prob,
  )
  return augment.simclr_view(k1, x, **kw), augment.simclr_view(k2, x, **kw)


def simclr_loss(model, params, model_state, x, key, cfg_aug, temperature):
  """NT-Xent of two augmented views of x, both views in one batch (shared BatchNorm statistics)."""
  v1, v2 = _simclr_views(cfg_aug, key, x)
  z, new_state = nets.apply_train(model, params, model_state, jnp.concatenate([v1, v2], 0))
  b = x.shape[0]
  return simclr.nt_xent(z[:b], z[b:], temperature), new_state


def program(kind: str, settings: dict, num_classes: int, classwise: bool) -> Program:
  """The compiled pieces of a search, shared by every search with the same settings (seeds)."""
  num_classes, classwise = int(num_classes), bool(classwise)

  def build():  # A copy of the settings: the cached program outlives the caller's dict.
    return Program(kind, ml_collections.ConfigDict(copy.deepcopy(settings)), num_classes, classwise)

  key = stages.stage_key("unlearnable.minmin", kind, settings, num_classes, classwise)
  return stages.compiled(key, build)


class Program:
  """Model, optimizer and jitted steps of one kind of search; holds no data or state."""

  def __init__(self, kind: str, cfg, num_classes: int, classwise: bool):
    if kind not in KINDS:
      raise ValueError(kind)
    self.bn = cfg.get("bn", "batch") if kind == "em" else "batch"
    if self.bn not in BN_MODES:
      raise ConfigError(f"em.bn={self.bn!r}; known: {', '.join(BN_MODES)}")
    self.kind, self.cfg, self.classwise = kind, cfg, classwise
    self.num_classes = num_classes
    if kind == "em":
      self.model = nets.build(cfg.model, num_classes)
    else:
      self.model = simclr.SimCLR(
        nets.build(cfg.model, None), proj_hidden=cfg.proj_hidden, proj_dim=cfg.proj_dim
      )
    self.feat_modules = (
      tuple(nets.build(spec, None) for spec in cfg.dist.feature_nets) if kind == "dist" else ()
    )
    self.tx = train_lib.make_optimizer(cfg.optimizer, max(1, cfg.max_rounds * cfg.train_steps))
    self.train_step = jax.jit(self._train_step_fn, donate_argnums=(0,))
    self.sweep_batch = jax.jit(self._sweep_batch_fn, donate_argnums=(0,))
    self.predict = jax.jit(self._predict_fn)

  @staticmethod
  def project(x, delta, eps):
    delta = jnp.clip(delta, -eps, eps)
    return jnp.clip(x + delta, 0.0, 1.0) - x

  # -- pieces --------------------------------------------------------------------------------

  def _delta_of(self, delta, labels, idx):
    return delta[labels[idx]] if self.classwise else delta[idx]

  def _train_step_fn(self, state, images, labels, delta, idx):
    x = images[idx]
    xp = jnp.clip(x + self._delta_of(delta, labels, idx), 0.0, 1.0)
    key = state.step_rng()
    cfg = self.cfg

    def loss_fn(params):
      if self.kind == "em":
        inp = augment.crop_flip(key, xp) if cfg.augment else xp
        logits, new = nets.apply_train(self.model, params, state.model_state, inp)
        y = labels[idx]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, new
      return simclr_loss(self.model, params, state.model_state, xp, key, cfg.aug, cfg.temperature)

    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads, model_state=new_state), loss

  def _objective(self, params, model_state, x, y, delta_b, key, feat_vars):
    """The perturbation loss L(delta_b) for one batch (lower = more unlearnable)."""
    cfg = self.cfg
    xp = jnp.clip(x + delta_b, 0.0, 1.0)
    if self.kind == "em":
      logits = self._classify(params, model_state, xp)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss = 0.0
    if cfg.ssl_weight:  # 0 in the released SimCLR command (demo.sh): then only CSD moves delta.
      ssl, _ = simclr_loss(self.model, params, model_state, xp, key, cfg.aug, cfg.temperature)
      loss = cfg.ssl_weight * ssl
    if cfg.csd_weight:
      loss = loss + cfg.csd_weight * csd.csd(delta_b, y, self.num_classes)
    if self.kind == "dist":
      terms = []
      if cfg.dist.include_surrogate:
        h, _ = nets.apply_train(self.model, params, model_state, xp, features_only=True)
        terms.append(self._separability(h, y))
      for module, (p, s) in zip(self.feat_modules, feat_vars, strict=True):
        h, _ = nets.apply_train(module, p, s, xp)
        terms.append(self._separability(h, y))
      loss = loss + cfg.dist.weight * jnp.mean(jnp.stack(terms))
    return loss

  def _separability(self, h, y):
    if self.cfg.dist.kind == "csd":
      return csd.csd(h, y, self.num_classes)
    return -csd.class_mmd(h, y, self.num_classes)  # kind == "mmd": maximise between-class MMD.

  def _sweep_batch_fn(self, delta, images, labels, params, model_state, idx, key, feat_vars, eps):
    """pgd_steps signed-gradient steps on the batch's perturbations; returns the updated delta."""
    cfg = self.cfg
    x, y = images[idx], labels[idx]
    d0 = delta if self.classwise else delta[idx]

    def loss_of(d, k):
      return self._objective(params, model_state, x, y, d[y] if self.classwise else d, k, feat_vars)

    def step(i, d):
      k = jax.random.fold_in(key, i)
      # EOT: average the gradient over `eot` augmentation draws (1 in TUE's released commands).
      g = sum(jax.grad(loss_of)(d, jax.random.fold_in(k, j)) for j in range(cfg.eot)) / cfg.eot
      d = d - cfg.step_size * jnp.sign(g)
      d = jnp.clip(d, -eps, eps)
      return d if self.classwise else jnp.clip(x + d, 0.0, 1.0) - x

    d = jax.lax.fori_loop(0, cfg.pgd_steps, step, d0)
    return d if self.classwise else delta.at[idx].set(d)

  def _classify(self, params, model_state, xp):
    """The EM surrogate's logits in the sweep and the stop criterion (BatchNorm per `em.bn`)."""
    if self.bn == "running":
      return nets.apply_eval(self.model, params, model_state, xp)
    return nets.apply_train(self.model, params, model_state, xp)[0]

  def _predict_fn(self, params, model_state, images, labels, delta, idx):
    xp = jnp.clip(images[idx] + self._delta_of(delta, labels, idx), 0.0, 1.0)
    return self._classify(params, model_state, xp).argmax(-1)


class Search:
  """One min-min search over a data set; `run()` returns (delta, info). Resumable with a workdir."""

  def __init__(
    self,
    kind: str,
    settings: dict,
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    eps: float,
    key: jax.Array,
    *,
    classwise: bool = False,
    workdir: str | None = None,
  ):
    self.p = program(kind, settings, num_classes, classwise)
    self.kind, self.cfg, self.eps, self.classwise = kind, self.p.cfg, float(eps), classwise
    self.workdir = workdir
    self.images = jnp.asarray(images, jnp.float32)
    self.labels = jnp.asarray(labels, jnp.int32)
    self.n = int(images.shape[0])
    self.batch = min(int(self.cfg.batch_size), self.n)
    k_init, self.k_train, k_delta, self.k_pgd, self.k_feat = jax.random.split(key, 5)
    params, model_state = nets.init(self.p.model, k_init, self.images[:2])
    self.state = train_lib.TrainState.create(  # The train step donates the state: own rng.
      params=params, tx=self.p.tx, rng=jnp.copy(self.k_train), model_state=model_state
    )
    self.batch_seed = int(jax.random.randint(self.k_train, (), 0, 2**31 - 1))
    shape = (num_classes, *self.images.shape[1:]) if classwise else self.images.shape
    start = (
      jax.random.uniform(k_delta, shape, minval=-self.eps, maxval=self.eps)
      if self.cfg.random_start
      else jnp.zeros(shape)
    )
    self.delta = start if classwise else self.p.project(self.images, start, self.eps)

  def _chunks(self, order: np.ndarray) -> list[np.ndarray]:
    """Batches covering `order`; the last one is the final `batch` items (overlapping)."""
    out = [order[i : i + self.batch] for i in range(0, self.n - self.batch + 1, self.batch)]
    if self.n % self.batch:
      out.append(order[-self.batch :])
    return out

  def accuracy(self) -> float:
    """The surrogate's accuracy on x + delta (EM's stop criterion)."""
    preds = np.empty(self.n, np.int64)
    for idx in self._chunks(np.arange(self.n)):
      preds[idx] = np.asarray(
        self.p.predict(
          self.state.params, self.state.model_state, self.images, self.labels, self.delta, idx
        )
      )
    return float(np.mean(preds == np.asarray(self.labels)))

  def run(self) -> tuple[np.ndarray, dict[str, Any]]:
    cfg = self.cfg
    ckpt = None
    start_round, history = 0, []
    if self.workdir:
      ckpt = train_lib.Checkpointer(os.path.join(self.workdir, "search"), keep=1, every=1)
      target = {"state": self.state, "delta": self.delta, "acc": jnp.zeros(())}
      restored, step = ckpt.restore_or(target)
      if step is not None:
        self.state, self.delta = restored["state"], restored["delta"]
        start_round = step
        history.append(float(restored["acc"]))
        logging.info("%s search: resumed after round %d", self.kind, step)
    stopped = (
      bool(history)
      and self.kind == "em"
      and history[-1] >= cfg.stop_accuracy
      and start_round >= cfg.min_rounds
    )
    t0 = time.time()
    r, loss = start_round, jnp.nan
    try:
      while r < cfg.max_rounds and not stopped:
        rng = np.random.default_rng([self.batch_seed, r])
        for _ in range(cfg.train_steps):
          idx = rng.choice(self.n, self.batch, replace=False)
          self.state, loss = self.p.train_step(
            self.state, self.images, self.labels, self.delta, idx
          )
        feat_vars = ()
        if self.kind == "dist":
          feat_vars = tuple(
            nets.init(m, jax.random.fold_in(jax.random.fold_in(self.k_feat, r), i), self.images[:2])
            for i, m in enumerate(self.p.feat_modules)
          )
        for b, idx in enumerate(self._chunks(rng.permutation(self.n))):
          key = jax.random.fold_in(jax.random.fold_in(self.k_pgd, r), b)
          self.delta = self.p.sweep_batch(
            self.delta,
            self.images,
            self.labels,
            self.state.params,
            self.state.model_state,
            idx,
            key,
            feat_vars,
            jnp.float32(self.eps),
          )
        r += 1
        acc = self.accuracy() if self.kind == "em" else float("nan")
        history.append(acc)
        stopped = self.kind == "em" and acc >= cfg.stop_accuracy and r >= cfg.min_rounds
        logging.info(
          "%s search round %d/%d: surrogate loss %.4f, accuracy on x+delta %.4f (%.1fs)",
          self.kind, r, cfg.max_rounds, float(loss), acc, time.time() - t0,
        )  # fmt: skip
        if ckpt is not None:
          ckpt.save(r, {"state": self.state, "delta": self.delta, "acc": jnp.asarray(acc)})
    finally:  # closed also when a round fails (NaN, SIGTERM)
      if ckpt is not None:
        ckpt.close()
    delta = self.delta[self.labels] if self.classwise else self.delta
    delta = np.asarray(self.p.project(self.images, delta, self.eps))
    info = {"rounds": r, "stopped_early": bool(stopped), "search_s": round(time.time() - t0, 2)}
    if self.kind == "em":
      info["surrogate_accuracy"] = history[-1] if history else float("nan")
    return delta, info
