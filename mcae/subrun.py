"""One sub-run: a method trained and evaluated on one protocol with one seed.

  <workdir>/seed_<s>/<protocol>/<method>/      fine-tune checkpoints, metrics.jsonl, subrun.json
  <workdir>/seed_<s>/<protocol>/pretrain-<h>/  a pre-training stage, shared by the methods (and
                                               ablations) whose pre-training config hashes to <h>

A finished sub-run is read back from its `subrun.json`; an interrupted one resumes from its last
checkpoint. The held-out domain is used for its test split only: the classifier trains to
convergence on the sources' val split (`mcae.selection`: best source-val AUC every
`convergence.eval_every` steps, early stop after `convergence.patience` evaluations without a
better one) and the honest threshold is fixed there too. The training itself is `mcae.fit`'s,
which the Python API (`mcae.api`) calls too, without a folder.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import jax
import ml_collections

from mcae import classifiers, evaluate, fit, methods, stage_builders
from mcae.mechanism import live_feature_check
from mcae.protocols import Protocol, select
from shared.workdir import cached_result, save_arrays


@dataclasses.dataclass
class RunContext:
  """What every sub-run of one job shares."""

  config: ml_collections.ConfigDict
  workdir: str
  mesh: object
  data_sharding: object
  image_shape: tuple
  num_domains: int
  num_attacks: int


def subrun_folder(workdir: str, seed: int, proto: Protocol, spec: str) -> str:
  return os.path.join(workdir, f"seed_{seed}", proto.slug, methods.folder_name(spec))


def _pretrain(ctx, mcfg, pretrain_cfg, proto, seed, key, source_train):
  """Runs (or resumes, or reuses) the pre-training stage; returns its params."""
  folder_id = stage_builders.pretrain_folder_id(ctx, mcfg, pretrain_cfg)
  folder = os.path.join(ctx.workdir, f"seed_{seed}", proto.slug, f"pretrain-{folder_id}")
  name = f"pretrain[{proto.name}, seed {seed}]"
  key = jax.random.fold_in(key, 1)
  return fit.pretrain(ctx, mcfg, pretrain_cfg, source_train, key, seed * 1000 + 1, folder, name)


def _compute(pre_cfg, steps_run: int, plan) -> dict:
  """What a method trained on: pre-training steps x batch (fixed length) + classifier steps run
  (to convergence or the cap) x batch, and the examples that adds up to."""
  pre_steps, pre_batch = (pre_cfg.num_steps, pre_cfg.batch_size) if pre_cfg else (0, 0)
  batch = plan.loss_cfg.batch_size
  return {
    "pretrain_steps": pre_steps,
    "pretrain_batch_size": pre_batch,
    "steps": steps_run,
    "max_steps": plan.num_steps,
    "batch_size": batch,
    "examples_seen": pre_steps * pre_batch + steps_run * batch,
  }


def _train_and_score(ctx: RunContext, spec: str, seed: int, proto: Protocol, splits) -> dict:
  start = time.time()
  folder = subrun_folder(ctx.workdir, seed, proto, spec)
  name, _ = methods.parse_method(spec)
  mcfg = methods.method_config(ctx.config, spec)
  key = jax.random.fold_in(jax.random.PRNGKey(ctx.config.seed), seed)
  source_train = select(splits["train"], proto.sources, f"{proto.name}: source train")
  source_val = select(splits["val"], proto.sources, f"{proto.name}: source val")
  target_test = select(splits["test"], proto.targets, f"{proto.name}: target test")

  pre_params = pre_cfg = None
  if mcfg.method_table[name].pretrain is not None:
    pre_cfg = methods.pretrain_config(mcfg, name)
    pre_params = _pretrain(ctx, mcfg, pre_cfg, proto, seed, key, source_train)
  mechanism = {}
  if pre_params is not None and mcfg.mechanism.enabled:
    mechanism = live_feature_check(ctx, mcfg, pre_params["backbone"], source_val, target_test, seed)
  trained = fit.classifier(
    ctx,
    mcfg,
    name,
    None if pre_params is None else pre_params["backbone"],
    source_train,
    source_val,
    jax.random.fold_in(key, 2),
    seed * 1000 + 2,
    folder,
    f"{spec}[{proto.name}, seed {seed}]",
  )
  del pre_params  # the classifier holds its own copy now
  stage, plan, steps_run = trained.plan.stage, trained.plan, trained.steps_run
  params, model_state = trained.params, trained.model_state

  def score(arrays):
    return evaluate.predict(
      stage.score, params, model_state, arrays, ctx.config.eval_batch_size, ctx.data_sharding
    )

  val_scores, test_scores = score(source_val), score(target_test)
  result = {
    "method": spec,
    "protocol": proto.name,
    "seed": seed,
    **evaluate.fas_report(
      val_scores,
      source_val["label"],
      test_scores,
      target_test["label"],
      evaluate.video_keys(source_val),
      evaluate.video_keys(target_test),
    ),
    "params": classifiers.num_params(params),
    "selected_step": trained.selected_step,
    **_compute(pre_cfg, steps_run, plan),
    **mechanism,
    "wall_time_s": round(time.time() - start, 2),
  }
  scores = dict(val_scores=val_scores, val_labels=source_val["label"], test_scores=test_scores)
  scores.update(
    test_labels=target_test["label"],
    val_videos=evaluate.video_keys(source_val),
    test_videos=evaluate.video_keys(target_test),
  )
  save_arrays(os.path.join(folder, "scores.npz"), scores)
  logging.info(
    "%s %s seed %d: HTER(test EER) %.2f%%, HTER(val thr) %.2f%%, AUC %.2f%%, video HTER(val "
    "thr) %.2f%% (%.1fs)",
    spec,
    proto.name,
    seed,
    100 * result["hter_eer"],
    100 * result["hter_val"],
    100 * result["auc"],
    100 * result["video_hter_val"],
    result["wall_time_s"],
  )
  return result


def run_subrun(ctx: RunContext, spec: str, seed: int, proto: Protocol, splits) -> dict:
  """Trains and evaluates one method on one protocol with one seed, or reads its result."""
  path = os.path.join(subrun_folder(ctx.workdir, seed, proto, spec), "subrun.json")
  return cached_result(path, lambda: _train_and_score(ctx, spec, seed, proto, splits))
