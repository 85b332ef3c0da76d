"""MCAE and its baselines over leave-one-domain-out protocols and seeds: `train_and_evaluate`.

Every (seed, protocol, method) is a sub-run in its own folder of the workdir,

  <workdir>/seed_<s>/<protocol>/<method>/      fine-tune checkpoints, metrics.jsonl, subrun.json
  <workdir>/seed_<s>/<protocol>/pretrain-<h>/  a pre-training stage, shared by the methods (and
                                               ablations) whose pre-training config hashes to <h>

so a re-run skips finished sub-runs and resumes an interrupted one from its last checkpoint.
A method is a name from `METHODS`, optionally with config overrides (the ablations):
"mcae:pretrain.mask_ratio=0.9;finetune.train_blocks=0".

The held-out domain is used for its test split only: the model is selected (when
`finetune.select_every` > 0) and the honest threshold fixed on the sources' val splits.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable

import flax
import jax
import ml_collections
import numpy as np

from mcae import evaluate, finetune, pretrain
from mcae.protocols import Protocol, leave_one_out, select
from shared import app, train_lib
from shared import data as data_lib
from shared.errors import ConfigError
from shared.metrics import fas_metrics
from shared.models.vit import init_classifier_from_mae


@dataclasses.dataclass(frozen=True)
class Method:
  """How a method is trained: its pre-training (None = none) and its classifier."""

  description: str
  classifier: str  # 'vit' | 'resnet18'
  pretrain: Callable[[ml_collections.ConfigDict], dict] | None = None  # config -> overrides


METHODS: dict[str, Method] = {
  "vit_scratch": Method("ViT trained from scratch (supervised only)", "vit"),
  "resnet18_erm": Method("ResNet-18 ERM", "resnet18"),
  "mae_ft": Method("MAE pre-train -> fine-tune", "vit", lambda c: {"supcon_weight": 0.0}),
  "supcon_ft": Method(
    "SupCon pre-train -> fine-tune",
    "vit",
    lambda c: {
      "mae_weight": 0.0,
      "supcon_weight": 1.0,
      "mask_ratio": c.baselines.supcon_mask_ratio,
    },
  ),
  "mcae": Method("MCAE: MAE + lambda * SupCon pre-train -> fine-tune", "vit", lambda c: {}),
}


# ----------------------------------------------------------------------------------------------
# Methods and their config overrides.


def parse_method(spec: str) -> tuple[str, list[tuple[str, str]]]:
  """'base:a.b=v;c=w' -> ('base', [('a.b', 'v'), ('c', 'w')])."""
  base, _, rest = spec.partition(":")
  if base not in METHODS:
    raise ConfigError(f"unknown method {base!r} in {spec!r}; known: {', '.join(METHODS)}")
  overrides = []
  for item in filter(None, (s.strip() for s in rest.split(";"))):
    key, eq, value = item.partition("=")
    if not eq:
      raise ConfigError(f"method {spec!r}: override {item!r} is not 'field=value'")
    overrides.append((key.strip(), value.strip()))
  return base, overrides


def _coerce(spec: str, key: str, value: str, old):
  try:
    if isinstance(old, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(value)
      return value.lower() in ("true", "1")
    if isinstance(old, int | float | str):
      return type(old)(value)
  except ValueError:
    raise ConfigError(f"method {spec!r}: {key}={value!r} is not a {type(old).__name__}") from None
  raise ConfigError(f"method {spec!r}: {key} is not a number, bool or string field")


def method_config(config: ml_collections.ConfigDict, spec: str) -> ml_collections.ConfigDict:
  """A copy of `config` with the method's overrides applied (unknown fields are errors)."""
  _, overrides = parse_method(spec)
  cfg = ml_collections.ConfigDict(copy.deepcopy(config.to_dict()))
  for key, value in overrides:
    parent, _, leaf = key.rpartition(".")
    node = cfg
    for part in filter(None, parent.split(".")):
      if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
        raise ConfigError(f"method {spec!r}: no config field {key!r}")
      node = node[part]
    if leaf not in node or isinstance(node[leaf], ml_collections.ConfigDict):
      raise ConfigError(f"method {spec!r}: no config field {key!r}")
    node[leaf] = _coerce(spec, key, value, node[leaf])
  return cfg


def pretrain_config(cfg: ml_collections.ConfigDict, base: str) -> ml_collections.ConfigDict:
  pcfg = ml_collections.ConfigDict(copy.deepcopy(cfg.pretrain.to_dict()))
  pcfg.update(METHODS[base].pretrain(cfg))
  return pcfg


def slug(spec: str) -> str:
  return "".join(c if c.isalnum() or c in "._-" else "_" for c in spec.replace(":", "__"))


def _digest(*parts) -> str:
  text = json.dumps(parts, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:10]


# ----------------------------------------------------------------------------------------------
# Compiled stages, shared by every sub-run with the same shapes and hyper-parameters.


_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@dataclasses.dataclass
class Stage:
  create: Callable  # rng -> TrainState, jitted into its shardings
  step: Callable  # jitted (state, batch) -> (state, metrics)
  sharding: object
  score: Callable | None = None  # jitted (params, model_state, images) -> scores


def _stage(cache, key, init_fn, loss_fn, tx, mesh, data_sharding, run_cfg, score_fn=None) -> Stage:
  """`train_lib.init_state` split in two so that the jitted pieces are reused across sub-runs.

  init_state jits a fresh closure per call, which recompiles for every seed and protocol; here
  one `create` per stage config takes the key as an argument, and `tx` (static in TrainState)
  is the same object, so the step compiles once.
  """
  if key in cache:
    return cache[key]

  def create(rng):
    init_rng, step_rng = jax.random.split(rng)
    params, model_state = init_fn(init_rng)
    return train_lib.TrainState.create(params=params, tx=tx, rng=step_rng, model_state=model_state)

  abstract = jax.eval_shape(create, jax.random.PRNGKey(0))
  sharding = train_lib.state_shardings(abstract, mesh, fsdp=run_cfg.fsdp)
  stage = Stage(
    # Runs once per sub-run: compile it fast (halves the compile time on CPU), not well.
    create=jax.jit(create, out_shardings=sharding, compiler_options=_FAST_COMPILE),
    step=train_lib.make_step(train_lib.loss_step(loss_fn), sharding, data_sharding),
    sharding=sharding,
    score=jax.jit(score_fn) if score_fn else None,
  )
  cache[key] = stage
  return stage


# ----------------------------------------------------------------------------------------------
# One sub-run.


@dataclasses.dataclass
class Context:
  config: ml_collections.ConfigDict
  workdir: str
  mesh: object
  data_sharding: object
  image_shape: tuple
  num_domains: int
  num_attacks: int
  cache: dict


def _batches(arrays, batch_size, seed, fields):
  arrays = {k: arrays[k] for k in fields}
  return lambda start: data_lib.batches(arrays, batch_size, seed=seed, start_step=start)


def _train(
  ctx, stage, state, arrays, fields, num_steps, batch_size, seed, folder, name, hooks=(), every=0
):
  cfg = ctx.config
  with (
    train_lib.Checkpointer(
      os.path.join(folder, "checkpoints"), keep=1, every=cfg.run.checkpoint_every
    ) as ckpt,
    train_lib.MetricWriter(folder, tensorboard=cfg.run.tensorboard, stage=name) as writer,
  ):
    return train_lib.train_loop(
      state=state,
      step_fn=stage.step,
      batches=_batches(arrays, batch_size, seed, fields),
      num_steps=num_steps,
      data_sharding=ctx.data_sharding,
      checkpointer=ckpt,
      writer=writer,
      log_every=cfg.run.log_every,
      progress=cfg.run.progress,
      stage=name,
      hooks=tuple(hooks),
      hook_every=every,
    )


def _pretrain(ctx, mcfg, base, proto, seed, key, source_train):
  """Runs (or resumes, or reuses) the pre-training stage; returns its params."""
  pcfg = pretrain_config(mcfg, base)
  dtype = train_lib.compute_dtype(ctx.config.run.dtype)
  model_dict = mcfg.model.to_dict()
  folder = os.path.join(
    ctx.workdir,
    f"seed_{seed}",
    proto.slug,
    f"pretrain-{_digest(model_dict, pcfg.to_dict(), ctx.image_shape)}",
  )
  tx = train_lib.make_optimizer(pcfg.optimizer, pcfg.num_steps)
  stage = _stage(
    ctx.cache,
    ("pretrain", _digest(model_dict, pcfg.to_dict(), ctx.image_shape)),
    pretrain.init_params(mcfg.model, pcfg, dtype, ctx.image_shape),
    pretrain.make_loss(
      mcfg.model, pcfg, dtype, num_domains=ctx.num_domains, num_attacks=ctx.num_attacks
    ),
    tx,
    ctx.mesh,
    ctx.data_sharding,
    ctx.config.run,
  )
  state = stage.create(jax.random.fold_in(key, 1))
  state = _train(
    ctx,
    stage,
    state,
    source_train,
    ("image", "label", "domain", "attack"),
    pcfg.num_steps,
    pcfg.batch_size,
    seed * 1000 + 1,
    folder,
    f"pretrain[{proto.name}, seed {seed}]",
  )
  return state.params


def _classifier_stage(ctx, mcfg, method: Method, pretrained: bool):
  dtype = train_lib.compute_dtype(ctx.config.run.dtype)
  if method.classifier == "resnet18":
    model = finetune.resnet18(mcfg.resnet, dtype)
    opt_cfg, steps, train_blocks = mcfg.resnet.optimizer, mcfg.baselines.supervised_steps, -1
    ft_cfg, identity = mcfg.resnet, mcfg.resnet.to_dict()
  else:
    model = finetune.vit_classifier(mcfg.model, dtype)
    if pretrained:
      opt_cfg, steps = mcfg.finetune.optimizer, mcfg.finetune.num_steps
      train_blocks = mcfg.finetune.train_blocks
    else:
      opt_cfg, steps, train_blocks = (
        mcfg.baselines.scratch_optimizer,
        mcfg.baselines.supervised_steps,
        -1,
      )
    ft_cfg, identity = mcfg.finetune, mcfg.model.to_dict()
  tx = finetune.optimizer(train_lib.make_optimizer(opt_cfg, steps), mcfg.model, train_blocks)
  key = (
    "classifier",
    _digest(
      method.classifier,
      identity,
      opt_cfg.to_dict(),
      ft_cfg.to_dict(),
      steps,
      train_blocks,
      ctx.image_shape,
    ),
  )
  stage = _stage(
    ctx.cache,
    key,
    finetune.init_params(model, ctx.image_shape),
    finetune.make_loss(model, ft_cfg),
    tx,
    ctx.mesh,
    ctx.data_sharding,
    ctx.config.run,
    score_fn=finetune.make_score(model),
  )
  return stage, steps, ft_cfg


class _Selection:
  """Keeps the params with the lowest source-val EER seen so far (saved, so resumable)."""

  def __init__(self, ctx, stage, folder, source_val):
    self.ctx, self.stage, self.source_val = ctx, stage, source_val
    self.params_path = os.path.join(folder, "selected_params.msgpack")
    self.info_path = os.path.join(folder, "selection.json")
    self.best = None
    if os.path.exists(self.info_path):
      with open(self.info_path) as f:
        self.best = json.load(f)

  def __call__(self, step, state):
    scores = evaluate.predict(
      self.stage.score,
      state.params,
      state.model_state,
      self.source_val,
      self.ctx.config.eval_batch_size,
      self.ctx.data_sharding,
    )
    val = fas_metrics(scores, self.source_val["label"])
    if self.best is None or val["eer"] <= self.best["val_eer"]:
      self.best = {"step": int(step), "val_eer": val["eer"], "val_auc": val["auc"]}
      if jax.process_index() == 0:
        blob = flax.serialization.to_bytes(
          {"params": state.params, "model_state": state.model_state}
        )
        with open(self.params_path + ".tmp", "wb") as f:
          f.write(blob)
        os.replace(self.params_path + ".tmp", self.params_path)
        app.write_json(self.info_path, self.best)
    return {"select_val_eer": val["eer"], "select_val_auc": val["auc"]}

  def restore(self, state):
    if self.best is None or not os.path.exists(self.params_path):
      return state.params, state.model_state
    with open(self.params_path, "rb") as f:
      target = {"params": state.params, "model_state": state.model_state}
      restored = flax.serialization.from_bytes(jax.device_get(target), f.read())
    put = lambda tree, sharding: jax.device_put(tree, sharding)
    return (
      put(restored["params"], self.stage.sharding.params),
      put(restored["model_state"], self.stage.sharding.model_state),
    )


def run_one(ctx: Context, spec: str, seed: int, proto: Protocol, splits) -> dict:
  """Trains and evaluates one method on one protocol with one seed (or loads its result)."""
  folder = os.path.join(ctx.workdir, f"seed_{seed}", proto.slug, slug(spec))
  result_path = os.path.join(folder, "subrun.json")
  if os.path.exists(result_path):
    with open(result_path) as f:
      return json.load(f)
  start = time.time()
  base, _ = parse_method(spec)
  method = METHODS[base]
  mcfg = method_config(ctx.config, spec)
  key = jax.random.fold_in(jax.random.PRNGKey(ctx.config.seed), seed)
  source_train = select(splits["train"], proto.sources, f"{proto.name}: source train")
  source_val = select(splits["val"], proto.sources, f"{proto.name}: source val")
  target_test = select(splits["test"], [proto.target], f"{proto.name}: target test")

  pre_params = None
  if method.pretrain is not None:
    pre_params = _pretrain(ctx, mcfg, base, proto, seed, key, source_train)
  stage, steps, ft_cfg = _classifier_stage(ctx, mcfg, method, pretrained=pre_params is not None)
  state = stage.create(jax.random.fold_in(key, 2))
  if pre_params is not None:
    params = init_classifier_from_mae(state.params, pre_params["backbone"])
    state = state.replace(params=jax.device_put(params, stage.sharding.params))
  del pre_params  # the classifier holds its own copy now
  selection = None
  if mcfg.finetune.select_every > 0:
    selection = _Selection(ctx, stage, folder, source_val)
  state = _train(
    ctx,
    stage,
    state,
    source_train,
    ("image", "label"),
    steps,
    ft_cfg.batch_size,
    seed * 1000 + 2,
    folder,
    f"{spec}[{proto.name}, seed {seed}]",
    hooks=(selection,) if selection else (),
    every=mcfg.finetune.select_every,
  )
  params, model_state = selection.restore(state) if selection else (state.params, state.model_state)
  score = lambda arrays: evaluate.predict(
    stage.score, params, model_state, arrays, ctx.config.eval_batch_size, ctx.data_sharding
  )
  val_scores, test_scores = score(source_val), score(target_test)
  result = {
    "method": spec,
    "protocol": proto.name,
    "seed": seed,
    **evaluate.fas_report(val_scores, source_val["label"], test_scores, target_test["label"]),
    "selected_step": selection.best["step"] if selection and selection.best else steps,
    "steps": steps,
    "wall_time_s": round(time.time() - start, 2),
  }
  if jax.process_index() == 0:
    np.savez(
      os.path.join(folder, "scores.npz"),
      val_scores=val_scores,
      val_labels=source_val["label"],
      test_scores=test_scores,
      test_labels=target_test["label"],
    )
    app.write_json(result_path, result)
  logging.info(
    "%s %s seed %d: HTER(test EER) %.2f%%, HTER(val thr) %.2f%%, AUC %.2f%% (%.1fs)",
    spec,
    proto.name,
    seed,
    100 * result["hter_eer"],
    100 * result["hter_val"],
    100 * result["auc"],
    result["wall_time_s"],
  )
  return result


# ----------------------------------------------------------------------------------------------
# The whole job.


def _load_splits(config):
  options = config.data.options.to_dict()
  data_dir = config.data.data_dir or None
  # Ask for the domains first with the set's own defaults: another set (e.g. cifar10) would
  # otherwise fail on the FAS options before saying what it lacks.
  if "domains" not in data_lib.info(config.data.name, data_dir=data_dir):
    raise ConfigError(
      f"data set {config.data.name!r} has no capture domains; use fas_proxy or fas_json"
    )
  info = data_lib.info(config.data.name, data_dir=data_dir, **options)
  splits = {
    s: data_lib.load(config.data.name, s, data_dir=data_dir, **options)
    for s in ("train", "val", "test")
  }
  return info, splits


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Every method x protocol x seed, then mean ± std tables, ROC figures and results."""
  start = time.time()
  for spec in config.methods:  # fail on a bad method or override before any training
    method_config(config, spec)
  if not config.seeds:
    raise ConfigError("config.seeds is empty")
  info, splits = _load_splits(config)
  domains = list(info["domains"])
  protocols = leave_one_out(domains, config.protocols or domains)
  mesh = train_lib.make_mesh(config.run.model_axis)
  ctx = Context(
    config=config,
    workdir=workdir,
    mesh=mesh,
    data_sharding=train_lib.batch_sharding(mesh),
    image_shape=tuple(splits["train"]["image"].shape[1:]),
    num_domains=len(domains),
    num_attacks=len(info.get("attacks", ("live", "spoof"))),
    cache={},
  )
  runs = []
  for seed in config.seeds:
    for proto in protocols:
      for spec in config.methods:
        runs.append(run_one(ctx, spec, int(seed), proto, splits))

  names = [p.name for p in protocols]
  rows = evaluate.summarise(runs, list(config.methods), names)
  figures = []
  if jax.process_index() == 0:
    for proto in protocols:
      curves = {}
      for spec in config.methods:
        for seed in config.seeds:
          path = os.path.join(workdir, f"seed_{seed}", proto.slug, slug(spec), "scores.npz")
          if os.path.exists(path):
            with np.load(path) as f:
              curves.setdefault(spec, []).append(
                evaluate.roc_of(f["test_scores"], f["test_labels"])
              )
      figure = os.path.join(workdir, f"roc_{proto.slug}.png")
      evaluate.roc_figure(figure, f"{proto.name} (mean ROC over seeds)", curves)
      figures.append(os.path.basename(figure))
    table = evaluate.markdown_tables(rows, names)
    with open(os.path.join(workdir, "table.md"), "w") as f:
      f.write(table + "\n")
  means = {r["method"]: r for r in rows if r["protocol"] == evaluate.MEAN_ROW}
  metrics: dict = {}
  for spec, r in means.items():
    for m in ("hter_eer", "hter_val", "auc"):
      metrics[f"{spec}/mean_{m}"] = r[f"{m}_mean"]
  for m in ("hter_eer", "hter_val"):
    metrics[f"lowest_mean_{m}"] = min(means, key=lambda s: means[s][f"{m}_mean"])
  # One row per (method, protocol or mean), labelled by "name" for shared.report; the per-seed
  # sub-run results go to runs.json beside results.json.
  metrics["table"] = [
    {
      "name": f"{r['method']} | {r['protocol']}",
      "method": r["method"],
      "held_out": r["protocol"],
      **{k: v for k, v in r.items() if k not in ("method", "protocol")},
    }
    for r in rows
  ]
  if jax.process_index() == 0:
    app.write_json(os.path.join(workdir, "runs.json"), {"runs": runs})
  metrics["runs_file"] = "runs.json"
  metrics["protocols"] = names
  metrics["figures"] = figures
  metrics["train_and_evaluate_s"] = round(time.time() - start, 2)
  return metrics
