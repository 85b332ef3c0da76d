"""MCAE's two training stages on arrays: pre-training, and a classifier trained to convergence.

Both callers train through here, so the command line and the Python API are one path:
  `mcae.subrun` (the CLI's sub-runs) passes a folder: the stage checkpoints there, logs to its
    metrics.jsonl, resumes after an interruption, and keeps the selected params on disk;
  `mcae.api` passes folder=None: the same stages and steps, in memory, nothing written.
The compiled stages come from `mcae.stage_builders` (one compilation per shape and config).
"""

from __future__ import annotations

import dataclasses
import os

import jax

from mcae import stage_builders
from mcae.selection import BestValSelection, EarlyStop
from shared import data as data_lib
from shared import stages
from shared.models.vit import init_classifier_from_mae

PRETRAIN_FIELDS = ("image", "label", "domain", "attack")
CLASSIFIER_FIELDS = ("image", "label")


def train_stage(ctx, stage, state, arrays, fields, num_steps, batch_size, seed, folder, name,
                **hooks):  # fmt: skip
  """`stage.step` over shuffled batches of `fields` of `arrays` (batch order from `seed`).

  With a folder: checkpoints, metrics.jsonl, resume; None: the same loop, in memory
  (`shared.stages.run_stage` either way).
  """
  arrays = {k: arrays[k] for k in fields}
  run = ctx.config.run
  return stages.run_stage(
    state=state,
    step_fn=stage.step,
    batches=lambda start: data_lib.batches(arrays, batch_size, seed=seed, start_step=start),
    num_steps=num_steps,
    data_sharding=ctx.data_sharding,
    stage=name,
    log_every=run.log_every,
    progress=run.progress,
    **hooks,
    checkpoint_dir=None if folder is None else os.path.join(folder, "checkpoints"),
    log_dir=folder,
    checkpoint_every=run.checkpoint_every,
    keep=1,
    tensorboard=run.tensorboard,
  )


def pretrain(ctx, mcfg, pretrain_cfg, source_train, key, seed: int, folder, name: str):
  """Pre-trains (or resumes, with a folder) on `source_train`; returns the stage's params,
  {"backbone": {"encoder": ..., ["decoder": ...]}, ["projection": ...]}."""
  stage = stage_builders.pretrain_stage(ctx, mcfg, pretrain_cfg)
  state = stage.create(key)
  state = train_stage(
    ctx,
    stage,
    state,
    source_train,
    PRETRAIN_FIELDS,
    pretrain_cfg.num_steps,
    pretrain_cfg.batch_size,
    seed,
    folder,
    name,
  )
  return state.params


@dataclasses.dataclass
class TrainedClassifier:
  """What `classifier` returns: the selected params and how they were reached."""

  params: object
  model_state: object
  plan: stage_builders.ClassifierPlan
  steps_run: int  # the cap, or the step training stopped early at
  selected_step: int  # the step of the params kept (best source-val AUC), else steps_run
  best: dict | None  # {"step", "val_auc", "val_eer"} of the selection, None without one


def classifier(ctx, mcfg, name: str, backbone, source_train, source_val, key, seed: int, folder,
               label: str) -> TrainedClassifier:  # fmt: skip
  """Trains method `name`'s classifier: from the pre-trained `backbone` ({"encoder": ...}; its
  buffers may be donated to the first step) or, with None, from scratch; to convergence on
  `source_val` when `convergence.eval_every` > 0 and source_val is given (`mcae.selection`), else
  to the step cap, keeping the last params."""
  plan = stage_builders.classifier_stage(ctx, mcfg, name, pretrained=backbone is not None)
  stage = plan.stage
  state = stage.create(key)
  if backbone is not None:
    params = init_classifier_from_mae(state.params, backbone)
    state = state.replace(params=jax.device_put(params, stage.sharding.params))
  del backbone  # the classifier holds its own copy now
  conv = mcfg.convergence
  selection = None
  if conv.eval_every > 0 and source_val is not None:
    selection = BestValSelection(
      stage,
      folder,
      source_val,
      ctx.config.eval_batch_size,
      ctx.data_sharding,
      every=conv.eval_every,
      patience=conv.patience,
    )
  steps_run = plan.num_steps
  try:
    state = train_stage(
      ctx,
      stage,
      state,
      source_train,
      CLASSIFIER_FIELDS,
      plan.num_steps,
      plan.loss_cfg.batch_size,
      seed,
      folder,
      label,
      hooks=(selection,) if selection else (),
      hook_every=conv.eval_every,
    )
  except EarlyStop as stop:  # the state was donated to the last step; the best is kept
    steps_run, state = stop.step, None
  params, model_state = selection.restore(state) if selection else (state.params, state.model_state)
  best = selection.best if selection else None
  return TrainedClassifier(
    params=params,
    model_state=model_state,
    plan=plan,
    steps_run=steps_run,
    selected_step=best["step"] if best else steps_run,
    best=best,
  )
