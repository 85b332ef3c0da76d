"""The dense teacher: supplied diffusers weights, the shipped folder, or pre-trained in the run.

Pre-training (workdir/pretrain, orbax checkpoints, resumable) exports workdir/teacher, the folder
that `--config.stage=pretrain` produces for shipping (`unet_io`), with its provenance and, after
its evaluation, its FD in teacher.json.
"""

from __future__ import annotations

import logging
import os
import time

import jax

from gradflow_prune import inputs, torch_import, unet_io
from gradflow_prune.toolkit import toolkit
from shared import stages
from shared.errors import ConfigError
from shared.models import unet

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def same_arch(a: dict, b: dict) -> bool:
  """Same architecture (dropout is a training choice, not part of it)."""
  norm = lambda d: unet.config_dict(unet.from_config_dict(d))
  return {**norm(a), "dropout": 0} == {**norm(b), "dropout": 0}


def pretrain(config, workdir, model_config, images01, mesh) -> dict:
  """Trains the dense U-Net with L_simple; returns the params to use (EMA when kept)."""
  pc = config.pretrain
  kit = toolkit(model_config, config, mesh)
  params = unet.init_params(kit.model, config.seed)
  state, step = kit.make_state(params, pc.optimizer, pc.steps, jax.random.PRNGKey(config.seed))
  state = stages.run_stage(
    state=state,
    step_fn=step,
    batches=inputs.train_batches(config, images01, pc.batch_size, config.seed, workdir),
    num_steps=pc.steps,
    data_sharding=kit.data_sharding,
    checkpoint_dir=os.path.join(workdir, "pretrain", "checkpoints"),
    log_dir=workdir,
    stage="pretrain",
    checkpoint_every=config.run.checkpoint_every,
    keep=config.run.keep_checkpoints,
    log_every=config.run.log_every,
    progress=config.run.progress,
  )
  return jax.device_get(state.ema_params if state.ema_params is not None else state.params)


def _shipped_dir(config) -> str:
  shipped = config.teacher.dir
  if shipped and not os.path.isabs(shipped):
    shipped = os.path.join(REPO_ROOT, shipped)
  return shipped


def get_teacher(config, workdir, model_config, images01, mesh) -> tuple[dict, dict, dict]:
  """(model config, params, meta): supplied weights, the shipped folder, or pre-trained here."""
  if config.teacher.weights:
    params = torch_import.load_unet_state_dict(config.teacher.weights, model_config)
    return model_config, params, {"source": config.teacher.weights}
  shipped = _shipped_dir(config)
  if shipped and os.path.isdir(shipped) and config.stage != "pretrain":
    cfg, params, meta = unet_io.load_unet(shipped)
    if not same_arch(cfg, model_config):
      raise ConfigError(
        f"teacher {shipped} is a different U-Net than config.model / the data "
        f"({cfg} vs {model_config}); fix config.model or set --config.teacher.dir=''"
      )
    logging.info("teacher: loaded %s (%s)", shipped, meta.get("summary", "no meta"))
    return cfg, params, {**meta, "source": shipped}
  local = os.path.join(workdir, "teacher")
  if unet_io.has_unet(local):
    cfg, params, meta = unet_io.load_unet(local)
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
  params = pretrain(config, workdir, model_config, images01, mesh)
  meta = {
    "data": config.data.to_dict(),
    "pretrain": config.pretrain.to_dict(),
    "seed": config.seed,
    "wall_time_s": round(time.time() - start, 1),
    "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
    "command": f"python -m gradflow_prune --config configs/gradflow_prune.py:{config.variant} "
    "--config.stage=pretrain --workdir <dir>",
  }
  unet_io.save_unet(local, model_config, params, meta)
  return model_config, params, {**meta, "source": local}


def record_eval(
  config, workdir, teacher_row: dict, data_fd: float, features: str, gate: dict | None = None
) -> None:
  """After `--config.stage=pretrain`: the exported teacher's FD (and its quality gate, `gate.py`)
  go into its teacher.json."""
  local = os.path.join(workdir, "teacher")
  if not os.path.isdir(local):
    return
  unet_io.update_meta(
    local,
    eval={**teacher_row, "data_fd": data_fd, **({"gate": gate} if gate else {})},
    summary=(
      f"FD {teacher_row['fd']:.3f} ({features}, {config.eval.num_samples} "
      f"DDIM-{config.eval.ddim_steps} samples; data floor {data_fd:.3f})"
    ),
  )
