"""Victims: models trained from scratch on (protected) data, and their clean-test accuracy.

Two recipes, both on `shared.train_lib` (jitted sharded steps, resumable `train_loop`):
  supervised  cross-entropy, augmentation of x + delta (crop + flip), optional cutout, mixup and
              PGD adversarial training;
  simclr      SimCLR pre-training on x + delta, then a linear probe (logistic regression on the
              frozen encoder's features, fitted on the probe set) scored on the clean test set.
Test accuracy is measured every `eval_every` epochs; a victim reports the final and the peak one.
The compiled pieces are cached per (model, recipe, sizes), so seeds and protection methods that
share them compile once.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from shared import data as data_lib
from shared import stages, train_lib
from shared.errors import ConfigError
from unlearnable import augment, minmin, nets, simclr


def _adversarial(model, params, model_state, x, onehot, key, eps, steps, step_size):
  """PGD (Madry et al. 2018) with a random start: maximises CE within ||x' - x||_inf <= eps."""
  x0 = x
  x = jnp.clip(x + jax.random.uniform(key, x.shape, minval=-eps, maxval=eps), 0.0, 1.0)

  def ce(xa):
    logits, _ = nets.apply_train(model, params, model_state, xa)
    return optax.softmax_cross_entropy(logits, onehot).mean()

  def body(_, xa):
    xa = xa + step_size * jnp.sign(jax.grad(ce)(xa))
    return jnp.clip(jnp.clip(xa, x0 - eps, x0 + eps), 0.0, 1.0)

  return jax.lax.stop_gradient(jax.lax.fori_loop(0, steps, body, x))


class Program:
  """Model, optimizer, state initialiser, jitted train step and evaluator of one recipe."""

  def __init__(self, kind: str, spec: dict, num_classes: int, recipe, total_steps: int, shape):
    self.kind, self.recipe, self.num_classes = kind, recipe, num_classes
    if kind == "supervised":
      self.model = nets.build(spec, num_classes)
    else:
      self.model = simclr.SimCLR(
        nets.build(spec, None), proj_hidden=recipe.proj_hidden, proj_dim=recipe.proj_dim
      )
    self.mesh = train_lib.make_mesh(1)
    self.data_sharding = train_lib.batch_sharding(self.mesh)
    self.tx = train_lib.make_optimizer(recipe.optimizer, total_steps)
    sample = jnp.zeros((1, *shape), jnp.float32)

    def create(key):
      k_init, k_step = jax.random.split(key)
      params, model_state = nets.init(self.model, k_init, sample)
      return train_lib.TrainState.create(
        params=params, tx=self.tx, rng=k_step, model_state=model_state
      )

    abstract = jax.eval_shape(create, jax.random.PRNGKey(0))
    self.state_sharding = train_lib.state_shardings(abstract, self.mesh)
    # Eager, then placed: jit-compiling a ResNet's initialiser takes tens of seconds on CPU,
    # while eager initialisers reuse the per-op compilations across models and seeds.
    self.create = lambda key: jax.device_put(create(key), self.state_sharding)
    loss = self._supervised_loss if kind == "supervised" else self._simclr_loss
    self.step = train_lib.make_step(
      train_lib.loss_step(loss), self.state_sharding, self.data_sharding
    )
    self.predict = jax.jit(self._predict)

  def _supervised_loss(self, params, model_state, batch, rng):
    r = self.recipe
    x, y = batch["image"], batch["label"]
    k_aug, k_cut, k_mix, k_adv = jax.random.split(rng, 4)
    if r.augment == "crop_flip":
      x = augment.crop_flip(k_aug, x, pad=r.crop_pad or None)
    elif r.augment == "flip":
      x = augment.flip(k_aug, x)
    elif r.augment != "none":
      raise ConfigError(f"victim.augment={r.augment!r}; known: crop_flip, flip, none")
    if r.cutout:
      x = augment.cutout(k_cut, x, r.cutout)
    onehot = jax.nn.one_hot(y, self.num_classes)
    if r.mixup:
      x, onehot = augment.mixup(k_mix, x, onehot, r.mixup)
    if r.adv_eps:
      x = _adversarial(
        self.model, params, model_state, x, onehot, k_adv, r.adv_eps, r.adv_steps, r.adv_step_size
      )
    logits, new_state = nets.apply_train(self.model, params, model_state, x)
    loss = optax.softmax_cross_entropy(logits, onehot).mean()
    return loss, ({"accuracy": jnp.mean(logits.argmax(-1) == y)}, new_state)

  def _simclr_loss(self, params, model_state, batch, rng):
    r = self.recipe
    loss, new_state = minmin.simclr_loss(
      self.model, params, model_state, batch["image"], rng, r.aug, r.temperature
    )
    return loss, ({}, new_state)

  def _predict(self, params, model_state, x):
    if self.kind == "supervised":
      return nets.apply_eval(self.model, params, model_state, x).argmax(-1)
    return nets.apply_eval(self.model, params, model_state, x, features_only=True)


def program(kind: str, spec: dict, num_classes: int, recipe, total_steps: int, shape) -> Program:
  """The compiled pieces of a victim, shared by every victim with the same settings and sizes."""
  num_classes, total_steps = int(num_classes), int(total_steps)
  shape = tuple(int(s) for s in shape)

  def build():  # Copies: the cached program outlives the caller's spec and recipe.
    own_recipe = ml_collections.ConfigDict(copy.deepcopy(recipe.to_dict()))
    return Program(kind, copy.deepcopy(spec), num_classes, own_recipe, total_steps, shape)

  key = stages.stage_key("unlearnable.victims", kind, spec, num_classes, recipe, total_steps, shape)
  return stages.compiled(key, build)


def _outputs(prog, state, images, batch_size):
  """Predictions (supervised) or features (simclr) for all images, in order.

  Every batch is padded to `batch_size` rows, also when there are fewer images than that
  (`stages.batched_apply` would shrink the batch to the images there are: another shape, whose
  features differ in the last bits on some devices, which can move a linear probe).
  """
  out = []
  for b in data_lib.eval_batches({"image": images}, batch_size):
    x = jax.device_put(b["image"], prog.data_sharding)
    out.append(np.asarray(prog.predict(state.params, state.model_state, x))[b["mask"]])
  return np.concatenate(out)


@functools.partial(jax.jit, static_argnums=(3,))
def _knn_vote(q_QxF, train_NxF, onehot_NxC, k: int, temperature):
  """Class votes of the k most similar training features (arguments, not baked-in constants)."""
  top_QxK, idx_QxK = jax.lax.top_k(q_QxF @ train_NxF.T, k)
  weights_QxK = jnp.exp(top_QxK / temperature)
  return jnp.einsum("qk,qkc->qc", weights_QxK, onehot_NxC[idx_QxK]).argmax(-1)


def knn_accuracy(
  train_feats,
  train_labels,
  test_feats,
  test_labels,
  num_classes: int,
  k: int = 200,
  temperature: float = 0.1,
  chunk: int = 1024,
) -> float:
  """The weighted kNN monitor of self-supervised training (Wu et al. 2018), clean-test accuracy.

  Cosine similarity to every training feature; the k nearest vote for their class with weight
  exp(similarity / temperature). No fitting, so it is the cheap check between linear probes.
  """
  train_n = train_feats / np.maximum(np.linalg.norm(train_feats, axis=1, keepdims=True), 1e-8)
  test_n = test_feats / np.maximum(np.linalg.norm(test_feats, axis=1, keepdims=True), 1e-8)
  train_j = jnp.asarray(train_n, jnp.float32)
  onehot = jax.nn.one_hot(jnp.asarray(train_labels), num_classes)
  k = min(k, len(train_labels))
  preds = []
  for i in range(0, len(test_n), chunk):
    q = test_n[i : i + chunk]
    pad = chunk - len(q)  # one shape for every chunk: one compilation
    q_padded = jnp.asarray(np.pad(q, ((0, pad), (0, 0))), jnp.float32)
    out = np.asarray(_knn_vote(q_padded, train_j, onehot, k, temperature))
    preds.append(out[: len(q)])
  return float(np.mean(np.concatenate(preds) == np.asarray(test_labels)))


def linear_probe(train_feats, train_labels, test_feats, test_labels, c: float) -> float:
  """Multinomial logistic regression on standardised frozen features; clean-test accuracy."""
  scaler = StandardScaler().fit(train_feats)
  clf = LogisticRegression(C=c, max_iter=1000)
  clf.fit(scaler.transform(train_feats), train_labels)
  return float(np.mean(clf.predict(scaler.transform(test_feats)) == test_labels))


def train_victim(
  kind: str,
  spec: dict,
  recipe,
  train: dict,
  test: dict,
  num_classes: int,
  key: jax.Array,
  *,
  probe: dict | None = None,
  alt_probe: dict | None = None,
  workdir: str | None = None,
  stage: str = "victim",
  run_cfg=None,
) -> dict:
  """Trains one victim from scratch and reports clean-test accuracy.

  Args:
    kind: 'supervised' | 'simclr'.
    spec: the model spec (plain dict).
    recipe: the victim's ConfigDict (epochs, batch_size, optimizer, eval_every and the recipe's
      own fields).
    train: {'image': x + delta (after any pre-processing defence), 'label'}.
    test: {'image', 'label'}: the clean test set (same pre-processing as the defence applies).
    probe: simclr only: {'image', 'label'} the linear probe is fitted on.
    alt_probe: simclr only: a second probe set, scored alongside ('final_alt', 'peak_alt').
    workdir: checkpoints (when run_cfg.checkpoint_victims) and metrics.jsonl go here.

  Returns:
    {'final': accuracy at the end, 'peak': best accuracy over the evaluations, 'curve': [...]}.
  """
  t0 = time.time()
  n = len(train["label"])
  batch = min(int(recipe.batch_size), n)
  batch -= batch % jax.device_count() or 0
  steps_per_epoch = max(1, n // batch)
  total = int(recipe.epochs) * steps_per_epoch
  prog = program(kind, spec, num_classes, recipe, total, train["image"].shape[1:])
  state = prog.create(key)
  curve: list[tuple[int, float]] = []
  alt_curve: list[tuple[int, float]] = []
  knn_curve: list[tuple[int, float]] = []  # simclr: the kNN monitor beside each linear probe
  eval_batch = max(jax.device_count(), min(512, len(test["label"])))
  eval_batch -= eval_batch % jax.device_count()

  def evaluate(step, st):
    if kind == "supervised":
      acc = float(np.mean(_outputs(prog, st, test["image"], eval_batch) == test["label"]))
    else:
      feats = _outputs(prog, st, probe["image"], eval_batch)
      test_feats = _outputs(prog, st, test["image"], eval_batch)
      knn = knn_accuracy(feats, probe["label"], test_feats, test["label"], num_classes)
      knn_curve.append((int(step), knn))
      acc = linear_probe(feats, probe["label"], test_feats, test["label"], recipe.probe_c)
      if alt_probe is not None:
        alt_feats = _outputs(prog, st, alt_probe["image"], eval_batch)
        alt = linear_probe(alt_feats, alt_probe["label"], test_feats, test["label"], recipe.probe_c)
        alt_curve.append((int(step), alt))
    curve.append((int(step), acc))
    row = {"test_accuracy": acc}
    if alt_curve:
      row["test_accuracy_alt"] = alt_curve[-1][1]
    if knn_curve:
      row["knn_accuracy"] = knn_curve[-1][1]
    return row

  arrays = {"image": train["image"].astype(np.float32), "label": train["label"].astype(np.int32)}
  if kind == "simclr":
    arrays = {"image": arrays["image"]}
  seed = int(jax.random.randint(jax.random.fold_in(key, 7), (), 0, 2**31 - 1))
  previous = train_lib.read_metrics(workdir, stage) if workdir else []
  loop = dict(
    state=state,
    step_fn=prog.step,
    batches=lambda start: data_lib.batches(arrays, batch, seed=seed, start_step=start),
    num_steps=total,
    data_sharding=prog.data_sharding,
    log_every=run_cfg.log_every if run_cfg is not None else 50,
    progress=bool(run_cfg.progress) if run_cfg is not None else False,
    stage=stage,
    hooks=(evaluate,),
    hook_every=max(1, int(recipe.eval_every)) * steps_per_epoch,
  )
  # Checkpoints only where asked for: a cell of seconds keeps its metrics and is recomputed.
  checkpointed = bool(workdir) and run_cfg is not None and run_cfg.checkpoint_victims
  state = stages.run_stage(
    **loop,
    checkpoint_dir=os.path.join(workdir, "checkpoints") if checkpointed else None,
    log_dir=workdir or None,
    checkpoint_every=run_cfg.checkpoint_every if checkpointed else 0,
    tensorboard=False,
  )
  if not curve or curve[-1][0] != total:  # Resumed at the end: nothing trained, evaluate once.
    evaluate(total, state)
  earlier = [(r["step"], r["test_accuracy"]) for r in previous if "test_accuracy" in r]
  accs = [a for _, a in earlier + curve]
  out = {
    "final": curve[-1][1],
    "peak": max(accs),
    "curve": curve,
    "train_s": round(time.time() - t0, 2),
  }
  if knn_curve:
    out.update(knn_final=knn_curve[-1][1], knn_curve=knn_curve)
  if alt_curve:
    alt_earlier = [r["test_accuracy_alt"] for r in previous if "test_accuracy_alt" in r]
    out.update(final_alt=alt_curve[-1][1], peak_alt=max(alt_earlier + [a for _, a in alt_curve]))
  logging.info(
    "%s: final %.4f, peak %.4f (%.1fs)", stage, out["final"], out["peak"], out["train_s"]
  )
  return out
