"""One pruning run: masks -> surgery -> fine-tuning -> evaluation, in its own resumable folder.

workdir/runs/keep<r>/<procedure>/<criterion>/seed<k>/ holds masks.npz (one-shot: scored once;
iterative: after the soft-mask flow interleaved with training, checkpointed per iteration in
iterative/, with iterative_params.npz), pruned_config.json, finetune/ (orbax checkpoints),
convergence/step<s>.json (FD and SSIM at fine-tune step s), model/ (the pruned, fine-tuned U-Net:
`export.save`, reloaded by `gradflow_prune.load`) and result.json, the run's row (a finished run
is read back, not redone).

Paired design: runs of one seed share their scoring batches (`score_batches(seed, k)`), the flow's
batches, the fine-tuning data order and training noise (seed + 1, 10_000 + seed), and every run
samples from the same evaluation noise (eval.seed), so arms differ only by how they prune.
"""

from __future__ import annotations

import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from gradflow_prune import criteria, diffusion, export, inputs, plan, procedures, surgery
from gradflow_prune.toolkit import Toolkit, toolkit
from shared import data as data_lib
from shared import stages, train_lib
from shared.workdir import (
  cached_result,
  load_params,
  read_json,
  read_state_dict,
  save_npz,
  save_params,
  write_json,
)


def score_batches(config, train01, seed: int, k: int, sched):
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


def importance_fn(config, kit: Toolkit, groups, train01, seed):
  """(criterion, params, masks, k) -> (importance, info) on the k-th fixed scoring batches."""
  pc, sched = config.prune, kit.sched
  timesteps = range(0, sched.num_timesteps, pc.taylor_stride)

  def score(criterion, params, masks, k):
    batches = score_batches(config, train01, seed, k, sched)
    return criteria.importance(
      criterion,
      groups,
      params,
      scorer=kit.scorer,
      masks=procedures.soft_masks_as_jnp(masks),
      taylor_batch=(batches[0][0], batches[0][2]),
      taylor_timesteps=timesteps,
      taylor_thr=pc.taylor_thr,
      grasp_batches=batches,
      grasp_protocol=pc.grasp_protocol,
      seed=seed,
    )

  return score


def _save_masks(path, masks):
  save_npz(path, masks, every_process=True)  # atomic; read back by read_state_dict


def _load_masks(path):
  return read_state_dict(path, what="masks")


def oneshot_masks(criterion, keep_ratio, t_params, groups, score):
  """(hard masks, info): the dense model scored once, the top keep_ratio of every unit kept."""
  importance, info = score(criterion, t_params, groups.ones(), 0)
  return surgery.masks_from_scores(groups, importance, keep_ratio), info


def _oneshot_masks(rdir, criterion, keep_ratio, t_params, groups, score):
  path = os.path.join(rdir, "masks.npz")
  if os.path.isfile(path):
    return _load_masks(path), {}
  masks, info = oneshot_masks(criterion, keep_ratio, t_params, groups, score)
  _save_masks(path, masks)
  return masks, info


def iterative_masks(config, run, kit: Toolkit, t_params, groups, score, train01, mesh, *,
                    label: str, ckpt=None, writer=None, cache_dir=None):  # fmt: skip
  """(hard masks, final state, info) of the soft-mask flow interleaved with training.

  `ckpt` (a `train_lib.Checkpointer`, saved after every iteration and resumed from) and `writer`
  (metrics) are optional: the Python API runs it in memory, a run in its folder.
  """
  pc = config.prune
  seed, fc = run["seed"], plan.flow_config(config, run["procedure"])
  state, step = kit.make_state(
    t_params, pc.optimizer, fc.iterations * fc.n_train, jax.random.PRNGKey(seed),
    masks=groups.ones(),
  )  # fmt: skip
  stage = f"{label}/flow"
  done = 0
  if ckpt is not None:
    state, done = ckpt.restore_or(state)
    done = done or 0
  if done:
    logging.info("%s: resumed after flow iteration %d of %d", label, done, fc.iterations)
  batches = inputs.train_batches(config, train01, pc.batch_size, seed, cache_dir)
  masks_sharding = train_lib.replicated(mesh)

  def train(state, masks, k):
    # Placed like the rest of the state, so the jitted step sees the same input types.
    masks = jax.device_put(procedures.soft_masks_as_jnp(masks), masks_sharding)
    state = state.replace(model_state={"masks": masks})
    return train_lib.train_loop(
      state=state,
      step_fn=step,
      batches=batches,
      num_steps=k * fc.n_train,
      data_sharding=kit.data_sharding,
      writer=writer,
      log_every=min(config.run.log_every, fc.n_train),
      progress=False,
      stage=stage,
    )

  def on_iteration(k, state, masks, row):
    if ckpt is not None:
      ckpt.save(k, state)
    if writer is not None:
      writer.write(int(state.step), {f"flow_{a}": b for a, b in row.items()})
    logging.info(
      "%s: iteration %d/%d sparsity %.3f energy %.4g -> %.4g, mean kept mask %.3f",
      label, k, fc.iterations, row["sparsity"], row["energy_start"], row["energy_end"],
      row["mean_mask_kept"],
    )  # fmt: skip

  masks, state, history = procedures.iterative(
    groups=groups,
    criterion=run["criterion"],
    state=state,
    params_of=lambda s: jax.device_get(s.params),
    score=score,
    removal=procedures.removal_from_importance,
    grad_fn=kit.scorer.mask_grads,
    flow_batch=lambda k: score_batches(config, train01, seed, 1000 + k, kit.sched)[0],
    train=train,
    keep_ratio=run["keep_ratio"],
    cfg=fc,
    start=done,
    masks={k: np.asarray(v) for k, v in jax.device_get(state.model_state["masks"]).items()},
    on_iteration=on_iteration,
  )
  return masks, state, {"flow": history}


def _iterative_masks(config, workdir, rdir, label, run, kit: Toolkit, t_params, groups, score,
                     train01, mesh):  # fmt: skip
  """(hard masks, dense params after the interleaved training, info) of the soft-mask flow."""
  masks_path = os.path.join(rdir, "masks.npz")
  params_path = os.path.join(rdir, "iterative_params.npz")
  if os.path.isfile(masks_path) and os.path.isfile(params_path):
    return _load_masks(masks_path), load_params(params_path), {}
  with (
    train_lib.Checkpointer(os.path.join(rdir, "iterative"), keep=1, every=1) as ckpt,
    train_lib.MetricWriter(workdir, stage=f"{label}/flow") as writer,
  ):
    masks, state, info = iterative_masks(
      config, run, kit, t_params, groups, score, train01, mesh, label=label, ckpt=ckpt,
      writer=writer, cache_dir=workdir,
    )  # fmt: skip
  big_params = jax.device_get(state.params)
  save_params(params_path, big_params)
  _save_masks(masks_path, masks)
  return masks, big_params, info


def evaluated(state):
  """The params a run evaluates and exports: the EMA when kept, else the trained ones."""
  return state.ema_params if state.ema_params is not None else state.params


def finetune_state(config, kit: Toolkit, params, num_steps, train01, seed, cache_dir=None):
  """(state, jitted step, batches) of the pruned U-Net's fine-tuning (the paired seeds)."""
  pc = config.prune
  state, step = kit.make_state(params, pc.optimizer, num_steps, jax.random.PRNGKey(10_000 + seed))
  batches = inputs.train_batches(config, train01, pc.batch_size, seed + 1, cache_dir)
  return state, step, batches


def _finetune(config, workdir, rdir, label, seed, kit: Toolkit, params, num_steps, train01,
              evaluator, points):  # fmt: skip
  """`num_steps` denoising steps of the pruned U-Net, stopping at each of `points` (< num_steps)
  for FD and SSIM (cached per point); (the params to evaluate (EMA when kept), the curve)."""
  state, step, batches = finetune_state(config, kit, params, num_steps, train01, seed, workdir)
  curve = []
  for target in points:
    path = os.path.join(rdir, "convergence", f"step{target}.json")
    if target < num_steps and read_json(path) is not None:
      curve.append(read_json(path))
      continue
    if target > 0:
      state = stages.run_stage(
        state=state,
        step_fn=step,
        batches=batches,
        num_steps=target,
        data_sharding=kit.data_sharding,
        checkpoint_dir=os.path.join(rdir, "finetune"),
        log_dir=workdir,
        stage=f"{label}/finetune",
        checkpoint_every=config.run.checkpoint_every,
        keep=1,
        log_every=config.run.log_every,
        progress=config.run.progress,
      )
    if target < num_steps:
      point = lambda: {"finetune_step": target, **evaluator.quality(kit, evaluated(state))}
      curve.append(cached_result(path, point))
      logging.info("%s: fine-tune step %d FD %.4g SSIM %.4g", label, target, curve[-1]["fd"],
                   curve[-1]["ssim"])  # fmt: skip
  return evaluated(state), curve


def _export(config, rdir, small_cfg, small_params, run, row) -> str:
  directory = os.path.join(rdir, "model")
  ec = config.eval
  export.save(
    directory, small_cfg, small_params, schedule=config.diffusion.to_dict(),
    sampler=dict(ddim_steps=ec.ddim_steps, skip=ec.skip, eta=ec.eta, clip_x0=ec.clip_x0),
    extra={**run, "fd": row["fd"], "ssim": row["ssim"], "features": row.get("features", "")},
  )  # fmt: skip
  return directory


def run_one(config, workdir, *, criterion, procedure, seed, keep_ratio, teacher, data, mesh,
            evaluator, index, total):  # fmt: skip
  """One (criterion, procedure, seed, keep ratio) run; returns its result row (result.json)."""
  run = dict(criterion=criterion, procedure=procedure, seed=seed, keep_ratio=keep_ratio)
  label = f"keep{keep_ratio:g}/{procedure}/{criterion}/seed{seed}"
  rdir = os.path.join(workdir, "runs", *label.split("/"))

  def compute():
    os.makedirs(rdir, exist_ok=True)
    logging.info("run %d/%d: %s", index, total, label)
    start = time.time()
    t_cfg, t_params, _ = teacher
    big = toolkit(t_cfg, config, mesh)
    groups = surgery.channel_groups(t_cfg)
    score = importance_fn(config, big, groups, data["train"], seed)
    interleaved, finetune_steps = plan.finetune_steps(config, procedure)
    if procedure == "oneshot":
      big_params = t_params
      masks, info = _oneshot_masks(rdir, criterion, keep_ratio, t_params, groups, score)
    else:
      masks, big_params, info = _iterative_masks(
        config, workdir, rdir, label, run, big, t_params, groups, score, data["train"], mesh
      )
    small_cfg, small_params = surgery.apply_masks(t_cfg, big_params, masks)
    write_json(os.path.join(rdir, "pruned_config.json"), small_cfg)
    small = toolkit(small_cfg, config, mesh)
    small_params, curve = _finetune(
      config, workdir, rdir, label, seed, small, small_params, finetune_steps, data["train"],
      evaluator, plan.convergence_points(config, finetune_steps),
    )  # fmt: skip
    name = f"keep{keep_ratio:g}_{procedure}_{criterion}_seed{seed}"
    row = {
      "label": label,
      **run,
      **evaluator.evaluate(small, small_params, name),
      "interleaved_steps": interleaved,
      "finetune_steps": finetune_steps,
    }
    last = {"finetune_step": finetune_steps, "fd": row["fd"], "ssim": row["ssim"]}
    row["convergence"] = [
      {**p, "train_steps": interleaved + p["finetune_step"]} for p in [*curve, last]
    ]
    row["model_dir"] = os.path.relpath(_export(config, rdir, small_cfg, small_params, run, row),
                                       workdir)  # fmt: skip
    row["wall_s"] = round(time.time() - start, 1)
    row["info"] = info
    logging.info(
      "run %d/%d %s: FD %.3f  SSIM %.3f  params %d  MACs %.3gM  latency %.3fs  (%.0fs)",
      index, total, label, row["fd"], row["ssim"], row["params"], row["macs"] / 1e6,
      row["latency_s"], row["wall_s"],
    )  # fmt: skip
    return row

  return cached_result(os.path.join(rdir, "result.json"), compute)
