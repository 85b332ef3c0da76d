"""The jitted pieces of the pre-training and classifier stages, built once per process.

`train_lib.init_state` jits a fresh closure per call, which recompiles for every seed and
protocol; here one `create` per stage config takes the key as an argument, and the optimizer
(static in TrainState) is the same object, so the step compiles once for all sub-runs that share
shapes and hyper-parameters (`shared.stages.compiled`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import ml_collections

from mcae import classifiers, pretrain_loss
from shared import stages, train_lib

if TYPE_CHECKING:
  from mcae.subrun import RunContext

# `create` runs once per sub-run: compile it fast (halves the compile time on CPU), not well.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@dataclasses.dataclass
class Stage:
  create: Callable  # rng -> TrainState, jitted into its shardings
  step: Callable  # jitted (state, batch) -> (state, metrics)
  sharding: object
  score: Callable | None = None  # jitted (params, model_state, images) -> scores


def _build_stage(init_fn, loss_fn, tx, mesh, data_sharding, fsdp: bool, score_fn=None) -> Stage:
  def create(rng):
    init_rng, step_rng = jax.random.split(rng)
    params, model_state = init_fn(init_rng)
    return train_lib.TrainState.create(params=params, tx=tx, rng=step_rng, model_state=model_state)

  abstract = jax.eval_shape(create, jax.random.PRNGKey(0))
  sharding = train_lib.state_shardings(abstract, mesh, fsdp=fsdp)
  return Stage(
    create=jax.jit(create, out_shardings=sharding, compiler_options=_FAST_COMPILE),
    step=train_lib.make_step(train_lib.loss_step(loss_fn), sharding, data_sharding),
    sharding=sharding,
    score=jax.jit(score_fn) if score_fn else None,
  )


def _placement(ctx: RunContext) -> tuple:
  """What a compiled stage depends on besides its own configs: devices, dtype, data shapes."""
  devices = [d.id for d in ctx.mesh.devices.flat]
  run = ctx.config.run
  return (ctx.mesh.axis_names, ctx.mesh.devices.shape, devices, run.dtype, run.fsdp,
          ctx.image_shape)  # fmt: skip


def pretrain_folder_id(ctx: RunContext, mcfg, pretrain_cfg) -> str:
  """Names a pre-training stage's folder: methods whose pre-training is the same share it."""
  return stages.stage_key(mcfg.model.to_dict(), pretrain_cfg.to_dict(), ctx.image_shape)[:10]


def pretrain_stage(ctx: RunContext, mcfg, pretrain_cfg) -> Stage:
  dtype = train_lib.compute_dtype(ctx.config.run.dtype)

  def build():
    return _build_stage(
      pretrain_loss.init_params(mcfg.model, pretrain_cfg, dtype, ctx.image_shape),
      pretrain_loss.make_loss(
        mcfg.model, pretrain_cfg, dtype, num_domains=ctx.num_domains, num_attacks=ctx.num_attacks
      ),
      train_lib.make_optimizer(pretrain_cfg.optimizer, pretrain_cfg.num_steps),
      ctx.mesh,
      ctx.data_sharding,
      ctx.config.run.fsdp,
    )

  key = stages.stage_key(
    "mcae/pretrain", mcfg.model, pretrain_cfg, ctx.num_domains, ctx.num_attacks, _placement(ctx)
  )
  return stages.compiled(key, build)


@dataclasses.dataclass(frozen=True)
class ClassifierPlan:
  """How a method's classifier trains: its stage, step count and loss config."""

  stage: Stage
  num_steps: int
  loss_cfg: ml_collections.ConfigDict  # flip, pad, label_smoothing, batch_size


def classifier_stage(ctx: RunContext, mcfg, name: str, pretrained: bool) -> ClassifierPlan:
  """The classifier of method `name`: fine-tuned after pre-training, else label-only."""
  dtype = train_lib.compute_dtype(ctx.config.run.dtype)
  kind = mcfg.method_table[name].classifier
  if kind == "resnet18":
    model_cfg, loss_cfg = {"width": mcfg.method_table[name].width}, mcfg.resnet
    opt_cfg, num_steps, train_blocks = mcfg.resnet.optimizer, mcfg.baselines.supervised_steps, -1
    model = classifiers.resnet18(model_cfg["width"], dtype)
  else:
    model_cfg, loss_cfg = mcfg.model, mcfg.finetune
    model = classifiers.vit_classifier(mcfg.model, dtype)
    if pretrained:
      opt_cfg, num_steps = mcfg.finetune.optimizer, mcfg.finetune.num_steps
      train_blocks = mcfg.finetune.train_blocks
    else:
      opt_cfg, num_steps = mcfg.baselines.scratch_optimizer, mcfg.baselines.supervised_steps
      train_blocks = -1

  def build():
    base_tx = train_lib.make_optimizer(opt_cfg, num_steps)
    return _build_stage(
      classifiers.init_params(model, ctx.image_shape),
      classifiers.make_loss(model, loss_cfg),
      classifiers.optimizer(base_tx, mcfg.model, train_blocks),
      ctx.mesh,
      ctx.data_sharding,
      ctx.config.run.fsdp,
      score_fn=classifiers.make_score(model),
    )

  key = stages.stage_key(
    "mcae/classifier",
    kind,
    model_cfg,
    mcfg.model,  # the frozen-layer split reads the ViT's depth
    opt_cfg,
    loss_cfg,
    num_steps,
    train_blocks,
    _placement(ctx),
  )
  return ClassifierPlan(stages.compiled(key, build), num_steps, loss_cfg)
