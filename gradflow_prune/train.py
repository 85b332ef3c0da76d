"""`train_and_evaluate(config, workdir)`: teacher -> every criterion x procedure -> evaluation.

Stages, each resumable (re-running the command continues where it stopped):
  1. teacher   loaded from `teacher.weights` (diffusers state dict) or `teacher.dir` (shipped
               folder); else pre-trained here (workdir/pretrain, orbax checkpoints) and exported to
               workdir/teacher. `--config.stage=pretrain` stops after this and its evaluation.
  2. eval set  FD features (a classifier trained on the data, or Inception), reference statistics,
               the fixed initial noise and the teacher's samples from it (workdir/eval/).
  3. runs      for seed x procedure x criterion: workdir/runs/<procedure>/<criterion>/seed<k>/:
               masks (one-shot: scored once; iterative: soft-mask flow interleaved with training,
               checkpointed per iteration), surgery (pruned_config.json), fine-tuning (orbax
               checkpoints), evaluation -> result.json.
  4. summary   rows, mean +- std table (summary.md), sample grids and FD-vs-MACs plot (PNG).
"""

from __future__ import annotations

import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from gradflow_prune import criteria, diffusion, evaluate, prune, surgery, torch_import
from shared import data as data_lib
from shared import report, train_lib
from shared.data import pipeline
from shared.errors import CheckpointError, ConfigError
from shared.models import unet

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABLATIONS = {"lam0": dict(lam=0.0), "gamma0": dict(gamma=0.0), "k1": dict(iterations=1)}


# ----------------------------------------------------------------------------------------------
# Saved U-Nets: a folder with unet_config.json, params.npz and a free-form meta json.


def save_unet(directory: str, model_config: dict, params, meta: dict | None = None) -> None:
  os.makedirs(directory, exist_ok=True)
  flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
  tmp = os.path.join(directory, "params.tmp.npz")
  np.savez(tmp, **{k: np.asarray(v, np.float32) for k, v in flat.items()})
  os.replace(tmp, os.path.join(directory, "params.npz"))
  with open(os.path.join(directory, "unet_config.json"), "w") as f:
    json.dump(model_config, f, indent=2)
  if meta is not None:
    with open(os.path.join(directory, "teacher.json"), "w") as f:
      json.dump(meta, f, indent=2, default=str)


def load_unet(directory: str) -> tuple[dict, dict, dict]:
  """(model config, params, meta) from `save_unet`'s folder; shapes checked against the config."""
  cfg_path, params_path = (os.path.join(directory, n) for n in ("unet_config.json", "params.npz"))
  if not (os.path.isfile(cfg_path) and os.path.isfile(params_path)):
    raise CheckpointError(f"{directory} holds no saved U-Net (unet_config.json + params.npz)")
  with open(cfg_path) as f:
    model_config = json.load(f)
  with np.load(params_path) as f:
    params = traverse_util.unflatten_dict({k: jnp.asarray(f[k]) for k in f.files}, sep="/")
  want = jax.tree.map(lambda a: a.shape, unet.abstract_params(unet.from_config_dict(model_config)))
  got = jax.tree.map(lambda a: a.shape, params)
  if want != got:
    raise CheckpointError(f"{directory}: params.npz does not match its unet_config.json")
  meta_path = os.path.join(directory, "teacher.json")
  meta = json.load(open(meta_path)) if os.path.isfile(meta_path) else {}  # noqa: SIM115
  return model_config, params, meta


# ----------------------------------------------------------------------------------------------
# Jitted pieces per U-Net config, built once per process and shared by all runs of that shape.


class Toolkit:
  """The model, its sampler, scorer and train steps for one U-Net config."""

  def __init__(self, model_config: dict, sched, config, mesh):
    self.config_dict = model_config
    self.model = unet.from_config_dict(model_config, train_lib.compute_dtype(config.run.dtype))
    self.sched = sched
    self.mesh = mesh
    self.data_sharding = train_lib.batch_sharding(mesh)
    self.steps = diffusion.ddim_timesteps(
      sched.num_timesteps, config.eval.ddim_steps, config.eval.skip
    )
    model, eval_cfg = self.model, config.eval

    def sample(params, masks, x_T):
      eps_fn = lambda x, t: model.apply({"params": params}, x, t, masks=masks)
      x0 = diffusion.ddim_sample(
        eps_fn, sched, x_T, self.steps, eta=eval_cfg.eta, rng=jax.random.PRNGKey(0),
        clip_x0=eval_cfg.clip_x0,
      )  # fmt: skip
      return diffusion.to_unit_range(x0)

    self.sample = jax.jit(sample)
    self._scorer = None
    self._trainers = {}

  @property
  def scorer(self) -> criteria.Scorer:
    if self._scorer is None:
      self._scorer = criteria.Scorer(self.model, self.sched)
    return self._scorer

  def trainer(self, opt_cfg, num_steps: int, masked: bool):
    """(tx, jitted step) for this optimizer config and step count (cached: same objects)."""
    constant = opt_cfg.schedule == "constant" and opt_cfg.warmup_steps == 0
    key = (opt_cfg.to_json(), 0 if constant else int(num_steps), masked)  # share compilations
    if key not in self._trainers:
      tx = train_lib.make_optimizer(opt_cfg, num_steps)
      model, sched = self.model, self.sched

      def loss_fn(params, model_state, batch, rng):
        drop_rng, diff_rng = jax.random.split(rng)
        masks = model_state["masks"] if masked else None
        eps_fn = lambda x, t: model.apply(
          {"params": params}, x, t, masks=masks, train=True, rngs={"dropout": drop_rng}
        )
        return diffusion.ddpm_loss(eps_fn, sched, batch["image"], diff_rng), ({}, model_state)

      self._trainers[key] = (tx, loss_fn, {})
    return self._trainers[key]

  def make_state(self, params, opt_cfg, num_steps, rng, masks=None):
    """A sharded TrainState and its jitted step (masks, when given, live in model_state)."""
    tx, loss_fn, steps = self.trainer(opt_cfg, num_steps, masks is not None)
    model_state = {} if masks is None else {"masks": prune.soft_masks_as_jnp(masks)}
    state = train_lib.TrainState.create(
      # A copy: the jitted step donates its state, and `params` may be the teacher's device
      # arrays, which every later run starts from (on a GPU they would be deleted).
      params=jax.tree.map(lambda x: jnp.array(x, copy=True), params),
      tx=tx,
      rng=rng,
      model_state=model_state,
      ema_decay=opt_cfg.ema_decay,
    )
    sharding = train_lib.state_shardings(state, self.mesh)
    state = jax.device_put(state, sharding)
    if "step" not in steps:
      steps["step"] = train_lib.make_step(
        train_lib.loss_step(loss_fn), sharding, self.data_sharding
      )
    return state, steps["step"]


def _toolkit(cache: dict, model_config: dict, sched, config, mesh) -> Toolkit:
  key = json.dumps(model_config, sort_keys=True)
  if key not in cache:
    cache[key] = Toolkit(model_config, sched, config, mesh)
  return cache[key]


# ----------------------------------------------------------------------------------------------
# Data


def _load_split(config, split: str) -> dict:
  options = {"image_size": config.data.image_size} if config.data.image_size else {}
  return data_lib.load(config.data.name, split, data_dir=config.data.data_dir or None, **options)


def _train_batches(config, images01: np.ndarray, batch_size: int, seed: int, cache_dir: str):
  """`start_step -> batches` in the model's [-1, 1] range, from `config.data.pipeline`."""

  def to_model(b):
    return {"image": diffusion.to_model_range(data_lib.to_float(b["image"])).astype(np.float32)}

  return pipeline.train_batches(
    config.data, {"image": images01}, batch_size, seed=seed, cache_dir=cache_dir, transform=to_model
  )


def _model_config(config, image_shape) -> dict:
  h, w, c = image_shape
  if h != w:
    raise ConfigError(f"the U-Net needs square images, got {h}x{w}")
  m = config.model
  preset = unet.preset(
    "cifar10",
    ch=m.ch,
    ch_mult=tuple(m.ch_mult),
    num_res_blocks=m.num_res_blocks,
    attn_resolutions=tuple(m.attn_resolutions),
    resolution=int(h),
    in_channels=int(c),
    out_channels=int(c),
    dropout=m.dropout,
    num_groups=m.num_groups,
  )
  return unet.config_dict(unet.from_config_dict(preset))


def _same_arch(a: dict, b: dict) -> bool:
  """Same architecture (dropout is a training choice, not part of it)."""
  norm = lambda d: {k: v for k, v in unet.config_dict(unet.from_config_dict(d)).items()}
  return {**norm(a), "dropout": 0} == {**norm(b), "dropout": 0}


# ----------------------------------------------------------------------------------------------
# Stage 1: the teacher


def pretrain_teacher(config, workdir, model_config, images01, tools, sched, mesh) -> dict:
  """Trains the dense U-Net with L_simple; returns the params to use (EMA when kept)."""
  pc = config.pretrain
  kit = _toolkit(tools, model_config, sched, config, mesh)
  params = unet.init_params(kit.model, config.seed)
  state, step = kit.make_state(params, pc.optimizer, pc.steps, jax.random.PRNGKey(config.seed))
  with (
    train_lib.Checkpointer(
      os.path.join(workdir, "pretrain", "checkpoints"),
      keep=config.run.keep_checkpoints,
      every=config.run.checkpoint_every,
    ) as ckpt,
    train_lib.MetricWriter(workdir, stage="pretrain") as writer,
  ):
    state = train_lib.train_loop(
      state=state,
      step_fn=step,
      batches=_train_batches(config, images01, pc.batch_size, config.seed, workdir),
      num_steps=pc.steps,
      data_sharding=kit.data_sharding,
      checkpointer=ckpt,
      writer=writer,
      log_every=config.run.log_every,
      progress=config.run.progress,
      stage="pretrain",
    )
  return jax.device_get(state.ema_params if state.ema_params is not None else state.params)


def get_teacher(config, workdir, model_config, images01, tools, sched, mesh):
  """(model config, params, meta): supplied weights, the shipped folder, or pre-trained here."""
  if config.teacher.weights:
    params = torch_import.load_unet_state_dict(config.teacher.weights, model_config)
    return model_config, params, {"source": config.teacher.weights}
  shipped = config.teacher.dir
  if shipped and not os.path.isabs(shipped):
    shipped = os.path.join(REPO_ROOT, shipped)
  if shipped and os.path.isdir(shipped) and config.stage != "pretrain":
    cfg, params, meta = load_unet(shipped)
    if not _same_arch(cfg, model_config):
      raise ConfigError(
        f"teacher {shipped} is a different U-Net than config.model / the data "
        f"({cfg} vs {model_config}); fix config.model or set --config.teacher.dir=''"
      )
    logging.info("teacher: loaded %s (%s)", shipped, meta.get("summary", "no meta"))
    return cfg, params, {**meta, "source": shipped}
  local = os.path.join(workdir, "teacher")
  if os.path.isfile(os.path.join(local, "params.npz")):
    cfg, params, meta = load_unet(local)
    return cfg, params, {**meta, "source": local}
  if config.stage != "pretrain":
    logging.warning(
      "teacher: no shipped checkpoint at %r; PRE-TRAINING the teacher now (%d steps, batch %d; "
      "hours on 2 CPU cores for the default variant -- run --config.stage=pretrain on a GPU and "
      "ship the folder instead)",
      config.teacher.dir,
      config.pretrain.steps,
      config.pretrain.batch_size,
    )
  start = time.time()
  params = pretrain_teacher(config, workdir, model_config, images01, tools, sched, mesh)
  meta = {
    "data": config.data.to_dict(),
    "pretrain": config.pretrain.to_dict(),
    "seed": config.seed,
    "wall_time_s": round(time.time() - start, 1),
    "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
    "command": f"python -m gradflow_prune --config configs/gradflow_prune.py:{config.variant} "
    "--config.stage=pretrain --workdir <dir>",
  }
  if jax.process_index() == 0:
    save_unet(local, model_config, params, meta)
  return model_config, params, {**meta, "source": local}


# ----------------------------------------------------------------------------------------------
# Stage 2: evaluation set-up


class Evaluator:
  """FD features, reference statistics, the fixed noise and the teacher's samples (cached)."""

  def __init__(self, config, workdir, train, test):
    from shared import features

    self.config = config
    self.dir = os.path.join(workdir, "eval")
    os.makedirs(self.dir, exist_ok=True)
    ec = config.eval
    path = os.path.join(self.dir, "features.npz")
    if ec.inception_weights:
      self.extractor = features.load_inception(ec.inception_weights)
    elif os.path.isfile(path):
      self.extractor = features.FeatureExtractor.load(path)
    else:
      logging.info("eval: training the FD feature classifier (%d steps)", ec.feature_steps)
      self.extractor = features.train_classifier_features(
        train["image"],
        train["label"],
        num_classes=int(train["label"].max()) + 1,
        steps=ec.feature_steps,
        seed=config.seed,
      )
      self.extractor.save(path)
    stats_path = os.path.join(self.dir, f"ref_stats_{self.extractor.name}.npz")
    if os.path.isfile(stats_path):
      self.ref = features.FeatureStats.load(stats_path)
    else:
      self.ref = features.feature_stats(self.extractor, train["image"])
      self.ref.save(stats_path)
    n = min(ec.num_samples, len(test["image"]))
    # FD of as many real held-out images as we sample: what sampling error alone costs. A random
    # subset: built-in splits come in file order, which for mnist5k is sorted by label.
    held_out = np.random.default_rng(ec.seed).choice(len(test["image"]), n, replace=False)
    self.data_fd = features.feature_stats(
      self.extractor, test["image"][np.sort(held_out)]
    ).frechet_distance(self.ref)
    if ec.num_samples % ec.batch_size:
      raise ConfigError(
        f"eval.num_samples ({ec.num_samples}) must be a multiple of eval.batch_size "
        f"({ec.batch_size})"
      )
    self.shape = train["image"].shape[1:]
    self.noise = jax.random.normal(jax.random.PRNGKey(ec.seed), (ec.num_samples, *self.shape))
    self.teacher_samples = None

  def fd(self, samples01) -> float:
    from shared import features

    return features.feature_stats(self.extractor, samples01).frechet_distance(self.ref)

  def samples(self, kit: Toolkit, params) -> np.ndarray:
    bs = self.config.eval.batch_size
    out = [
      np.asarray(kit.sample(params, None, self.noise[i : i + bs]))
      for i in range(0, len(self.noise), bs)
    ]
    return np.concatenate(out)

  def latency(self, kit: Toolkit, params) -> float:
    ec = self.config.eval
    x_T = self.noise[: ec.latency_batch]
    return evaluate.measure_latency(kit.sample, params, None, x_T, repeats=ec.latency_repeats)

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
    grid = samples[: self.config.eval.grid]
    evaluate.save_grid(grid, os.path.join(self.dir, f"samples_{name}.png"), title=name)
    return row


def _teacher_eval(evaluator: Evaluator, kit: Toolkit, params, meta) -> dict:
  """The teacher's row and samples (the SSIM reference), cached in workdir/eval/ per source."""
  row_path = os.path.join(evaluator.dir, "teacher_eval.json")
  samples_path = os.path.join(evaluator.dir, "teacher_samples.npz")
  source = str(meta.get("source", ""))
  if os.path.isfile(row_path) and os.path.isfile(samples_path):
    with open(row_path) as f:
      cached = json.load(f)
    if cached.get("source") == source:
      with np.load(samples_path) as f:
        evaluator.teacher_samples = f["samples"]
      return cached["row"]
  row = evaluator.evaluate(kit, params, "teacher")
  if jax.process_index() == 0:
    np.savez(samples_path, samples=evaluator.teacher_samples)
    with open(row_path, "w") as f:
      json.dump({"source": source, "row": row}, f, indent=2, default=float)
  return row


# ----------------------------------------------------------------------------------------------
# Stage 3: one pruning run


def _score_batches(config, train01, seed: int, k: int, sched):
  """(x0, t_B, noise) batches drawn from (seed, k): the fixed batches of scoring and flow."""
  rng = np.random.default_rng([seed, k])
  pc = config.prune
  out = []
  for _ in range(max(pc.grasp_batches, 1)):
    idx = rng.choice(len(train01), pc.score_batch_size, replace=False)
    x0 = diffusion.to_model_range(data_lib.to_float(jnp.asarray(train01[idx])))
    t_B = jnp.asarray(rng.integers(0, sched.num_timesteps, pc.score_batch_size), jnp.int32)
    noise = jnp.asarray(rng.standard_normal(x0.shape), jnp.float32)
    out.append((x0, t_B, noise))
  return out


def _importance_fn(config, kit: Toolkit, groups, train01, seed, sched):
  pc = config.prune
  timesteps = range(0, sched.num_timesteps, pc.taylor_stride)

  def score(criterion, params, masks, k):
    batches = _score_batches(config, train01, seed, k, sched)
    return criteria.importance(
      criterion,
      groups,
      params,
      scorer=kit.scorer,
      masks=prune.soft_masks_as_jnp(masks),
      taylor_batch=(batches[0][0], batches[0][2]),
      taylor_timesteps=timesteps,
      taylor_thr=pc.taylor_thr,
      grasp_batches=batches,
      seed=seed,
    )

  return score


def _flow_config(config, procedure: str) -> prune.FlowConfig:
  pc = config.prune
  fc = prune.FlowConfig(
    iterations=pc.iterations,
    n_flow=pc.n_flow,
    eta=pc.eta,
    lam=pc.lam,
    gamma=pc.gamma,
    n_train=pc.n_train,
    power=pc.power,
  )
  if procedure != "iterative":
    fc = prune.FlowConfig(**{**fc.__dict__, **ABLATIONS[procedure.split("_", 1)[1]]})
  if fc.iterations * fc.n_train > pc.total_steps:
    raise ConfigError(
      f"{procedure}: iterations x n_train = {fc.iterations * fc.n_train} exceeds "
      f"prune.total_steps = {pc.total_steps} (the budget shared with one-shot)"
    )
  return fc


def _save_masks(path, masks):
  np.savez(path, **{k: np.asarray(v) for k, v in masks.items()})


def _load_masks(path):
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def run_one(
  config, workdir, *, criterion, procedure, seed, keep_ratio, teacher, tools, sched, mesh, data,
  evaluator, index, total,
):  # fmt: skip
  """One (criterion, procedure, seed, keep ratio) run; returns its result row (result.json)."""
  rdir = os.path.join(workdir, "runs", f"keep{keep_ratio:g}", procedure, criterion, f"seed{seed}")
  result_path = os.path.join(rdir, "result.json")
  if os.path.isfile(result_path):
    with open(result_path) as f:
      return json.load(f)
  os.makedirs(rdir, exist_ok=True)
  label = f"keep{keep_ratio:g}/{procedure}/{criterion}/seed{seed}"
  logging.info("run %d/%d: %s", index, total, label)
  start = time.time()
  pc = config.prune
  t_cfg, t_params, _ = teacher
  big = _toolkit(tools, t_cfg, sched, config, mesh)
  groups = surgery.channel_groups(t_cfg)
  score = _importance_fn(config, big, groups, data["train"], seed, sched)
  with train_lib.MetricWriter(workdir, stage=label) as writer:
    masks_path = os.path.join(rdir, "masks.npz")
    info: dict = {}
    interleaved = 0
    big_params = t_params
    if procedure == "oneshot":
      if os.path.isfile(masks_path):
        masks = _load_masks(masks_path)
      else:
        importance, info = score(criterion, t_params, groups.ones(), 0)
        masks = surgery.masks_from_scores(groups, importance, keep_ratio)
        _save_masks(masks_path, masks)
    else:
      fc = _flow_config(config, procedure)
      interleaved = fc.iterations * fc.n_train
      state, step = big.make_state(
        t_params, pc.optimizer, interleaved, jax.random.PRNGKey(seed), masks=groups.ones()
      )
      params_path = os.path.join(rdir, "iterative_params.npz")
      if os.path.isfile(masks_path) and os.path.isfile(params_path):
        masks = _load_masks(masks_path)
        with np.load(params_path) as f:
          big_params = traverse_util.unflatten_dict({k: f[k] for k in f.files}, sep="/")
      else:
        with train_lib.Checkpointer(os.path.join(rdir, "iterative"), keep=1, every=1) as ckpt:
          state, done = ckpt.restore_or(state)
          done = done or 0
          if done:
            logging.info("%s: resumed after flow iteration %d of %d", label, done, fc.iterations)
          batches = _train_batches(config, data["train"], pc.batch_size, seed, workdir)

          masks_sharding = train_lib.replicated(mesh)

          def train(state, masks, k):
            # Placed like the rest of the state, so the jitted step sees the same input types.
            masks = jax.device_put(prune.soft_masks_as_jnp(masks), masks_sharding)
            state = state.replace(model_state={"masks": masks})
            return train_lib.train_loop(
              state=state,
              step_fn=step,
              batches=batches,
              num_steps=k * fc.n_train,
              data_sharding=big.data_sharding,
              writer=writer,
              log_every=min(config.run.log_every, fc.n_train),
              progress=False,
              stage=f"{label}/flow",
            )

          def on_iteration(k, state, masks, row):
            ckpt.save(k, state)
            writer.write(int(state.step), {f"flow_{a}": b for a, b in row.items()})
            logging.info(
              "%s: iteration %d/%d sparsity %.3f energy %.4g -> %.4g, mean kept mask %.3f",
              label, k, fc.iterations, row["sparsity"], row["energy_start"], row["energy_end"],
              row["mean_mask_kept"],
            )  # fmt: skip

          masks, state, history = prune.iterative(
            groups=groups,
            criterion=criterion,
            state=state,
            params_of=lambda s: jax.device_get(s.params),
            score=score,
            removal=prune.removal_from_importance,
            grad_fn=big.scorer.mask_grads,
            flow_batch=lambda k: _score_batches(config, data["train"], seed, 1000 + k, sched)[0],
            train=train,
            keep_ratio=keep_ratio,
            cfg=fc,
            start=done,
            masks={k: np.asarray(v) for k, v in jax.device_get(state.model_state["masks"]).items()},
            on_iteration=on_iteration,
          )
        big_params = jax.device_get(state.params)
        flat = traverse_util.flatten_dict(big_params, sep="/")
        np.savez(params_path, **{k: np.asarray(v) for k, v in flat.items()})
        _save_masks(masks_path, masks)
        info = {"flow": history}

    small_cfg, small_params = surgery.apply_masks(t_cfg, big_params, masks)
    with open(os.path.join(rdir, "pruned_config.json"), "w") as f:
      json.dump(small_cfg, f, indent=2)
    finetune_steps = pc.total_steps - interleaved
    small = _toolkit(tools, small_cfg, sched, config, mesh)
    if finetune_steps > 0:
      state, step = small.make_state(
        small_params, pc.optimizer, finetune_steps, jax.random.PRNGKey(10_000 + seed)
      )
      with train_lib.Checkpointer(
        os.path.join(rdir, "finetune"), keep=1, every=config.run.checkpoint_every
      ) as ckpt:
        state = train_lib.train_loop(
          state=state,
          step_fn=step,
          batches=_train_batches(config, data["train"], pc.batch_size, seed + 1, workdir),
          num_steps=finetune_steps,
          data_sharding=small.data_sharding,
          checkpointer=ckpt,
          writer=writer,
          log_every=config.run.log_every,
          progress=config.run.progress,
          stage=f"{label}/finetune",
        )
      small_params = state.ema_params if state.ema_params is not None else state.params
  row = {
    "label": label,
    "criterion": criterion,
    "procedure": procedure,
    "seed": seed,
    "keep_ratio": keep_ratio,
    **evaluator.evaluate(
      small, small_params, f"keep{keep_ratio:g}_{procedure}_{criterion}_seed{seed}"
    ),
    "interleaved_steps": interleaved,
    "finetune_steps": finetune_steps,
    "wall_s": round(time.time() - start, 1),
    "info": info,
  }
  logging.info(
    "run %d/%d %s: FD %.3f  SSIM %.3f  params %d  MACs %.3gM  latency %.3fs  (%.0fs)",
    index, total, label, row["fd"], row["ssim"], row["params"], row["macs"] / 1e6,
    row["latency_s"], row["wall_s"],
  )  # fmt: skip
  if jax.process_index() == 0:
    with open(result_path + ".tmp", "w") as f:
      json.dump(row, f, indent=2, default=float)
    os.replace(result_path + ".tmp", result_path)
  return row


# ----------------------------------------------------------------------------------------------
# Stage 4: summary


def _summary(rows, teacher_row):
  keys = ("fd", "ssim", "params", "macs", "latency_s")
  out = {}
  for r in rows:
    out.setdefault(f"keep{r['keep_ratio']:g}/{r['procedure']}/{r['criterion']}", []).append(r)
  return {
    name: {
      **{k: float(np.mean([r[k] for r in rs])) for k in keys},
      **{f"{k}_std": float(np.std([r[k] for r in rs])) for k in ("fd", "ssim")},
      "n": len(rs),
      "speedup": teacher_row["latency_s"] / float(np.mean([r["latency_s"] for r in rs])),
    }
    for name, rs in out.items()
  }


def _claim(summary: dict, keep_ratios) -> dict:
  """The paper's claim at each keep ratio: iterative gradient-flow (grasp) pruning has lower FD and
  higher SSIM to the teacher than one-shot Taylor (Diff-Pruning), at equal MACs and steps."""
  out = {}
  for keep in keep_ratios:
    ours = summary.get(f"keep{keep:g}/iterative/grasp")
    base = summary.get(f"keep{keep:g}/oneshot/taylor")
    if ours and base:
      out[f"keep{keep:g}"] = {
        "fd_iterative_grasp": ours["fd"],
        "fd_oneshot_taylor": base["fd"],
        "ssim_iterative_grasp": ours["ssim"],
        "ssim_oneshot_taylor": base["ssim"],
        "lower_fd": bool(ours["fd"] < base["fd"]),
        "higher_ssim": bool(ours["ssim"] > base["ssim"]),
      }
  return out


def _runs(config):
  pc = config.prune
  for p in pc.procedures:
    if p not in prune.PROCEDURES:
      raise ConfigError(f"unknown procedure {p!r}; known: {', '.join(prune.PROCEDURES)}")
  for a in pc.ablations:
    if a not in ABLATIONS:
      raise ConfigError(f"unknown ablation {a!r}; known: {', '.join(ABLATIONS)}")
  for c in (*pc.criteria, *pc.ablation_criteria):
    if c not in criteria.CRITERIA:
      raise ConfigError(f"unknown criterion {c!r}; known: {', '.join(criteria.CRITERIA)}")
  if not pc.keep_ratios or not all(0 < r <= 1 for r in pc.keep_ratios):
    raise ConfigError(f"prune.keep_ratios must be in (0, 1], got {pc.keep_ratios}")
  runs = [(c, p) for p in pc.procedures for c in pc.criteria]
  runs += [(c, f"iterative_{a}") for a in pc.ablations for c in pc.ablation_criteria]
  return runs


def train_and_evaluate(config, workdir: str) -> dict:
  runs = _runs(config)
  if config.stage not in ("all", "pretrain"):
    raise ConfigError(f"config.stage={config.stage!r}; known: all, pretrain")
  mesh = train_lib.make_mesh(config.run.model_axis)
  sched = diffusion.linear_schedule(
    config.diffusion.num_timesteps, config.diffusion.beta_start, config.diffusion.beta_end
  )
  train, test = _load_split(config, "train"), _load_split(config, "test")
  data = {"train": train["image"]}  # uint8 (float per batch, on the device)
  model_config = _model_config(config, data["train"].shape[1:])
  tools: dict = {}
  teacher = get_teacher(config, workdir, model_config, data["train"], tools, sched, mesh)
  t_cfg, t_params, t_meta = teacher
  evaluator = Evaluator(config, workdir, train, test)
  teacher_row = _teacher_eval(
    evaluator, _toolkit(tools, t_cfg, sched, config, mesh), t_params, t_meta
  )
  logging.info(
    "teacher: FD %.3f (data floor %.3f)  params %d  MACs %.3gM  latency %.3fs",
    teacher_row["fd"], evaluator.data_fd, teacher_row["params"], teacher_row["macs"] / 1e6,
    teacher_row["latency_s"],
  )  # fmt: skip
  metrics = {
    "teacher_fd": teacher_row["fd"],
    "data_fd": evaluator.data_fd,
    "features": evaluator.extractor.name,
    "teacher": teacher_row,
  }
  if config.stage == "pretrain":
    local = os.path.join(workdir, "teacher")
    if os.path.isdir(local) and jax.process_index() == 0:
      meta_path = os.path.join(local, "teacher.json")
      meta = {**json.load(open(meta_path)), "eval": {**teacher_row, "data_fd": evaluator.data_fd}}  # noqa: SIM115
      meta["summary"] = (
        f"FD {teacher_row['fd']:.3f} ({evaluator.extractor.name}, {config.eval.num_samples} "
        f"DDIM-{config.eval.ddim_steps} samples; data floor {evaluator.data_fd:.3f})"
      )
      with open(meta_path, "w") as f:
        json.dump(meta, f, indent=2, default=float)
    return metrics

  rows = []
  todo = [(r, s, c, p) for r in config.prune.keep_ratios for s in config.seeds for c, p in runs]
  for i, (keep, seed, criterion, procedure) in enumerate(todo, 1):
    run = dict(criterion=criterion, procedure=procedure, seed=seed, keep_ratio=keep)
    shared = dict(teacher=teacher, tools=tools, sched=sched, mesh=mesh, data=data)
    rows.append(
      run_one(config, workdir, **run, **shared, evaluator=evaluator, index=i, total=len(todo))
    )
  summary = _summary(rows, teacher_row)
  if jax.process_index() == 0:
    evaluate.plot_fd_vs_macs(rows, os.path.join(workdir, "fd_vs_macs.png"), teacher=teacher_row)
    table = report.mean_std_table(
      rows, ["keep_ratio", "procedure", "criterion"], ["fd", "ssim", "params", "macs", "latency_s"]
    )
    with open(os.path.join(workdir, "summary.md"), "w") as f:
      f.write(
        f"Teacher: FD {teacher_row['fd']:.4g}, params {teacher_row['params']}, MACs "
        f"{teacher_row['macs']:.4g}, latency {teacher_row['latency_s']:.4g} s. "
        f"Data floor FD {evaluator.data_fd:.4g} ({evaluator.extractor.name}).\n\n{table}\n"
      )
  metrics["summary"] = summary
  metrics["claim"] = _claim(summary, config.prune.keep_ratios)
  metrics["rows"] = [{k: v for k, v in r.items() if k != "info"} for r in rows]
  metrics["teacher_source"] = t_meta.get("source", "")
  return metrics
