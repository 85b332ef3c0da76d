"""The Python API: prune a U-Net on arrays, save / load the pruned model, sample from it.

    pruned = gradflow_prune.prune(params, unet_config, images_uint8, keep=0.7,
                                  procedure="gradflow")          # a PrunedUNet, physically smaller
    images01 = gradflow_prune.sample(pruned, 16, jax.random.PRNGKey(0))   # [16, H, W, C] in [0, 1]
    gradflow_prune.save("pruned/", pruned); again = gradflow_prune.load("pruned/")

`prune` is one run of `python -m gradflow_prune` without its folder: the same scoring batches,
soft-mask flow, surgery and fine-tuning (`pruning_run`'s functions, the same seeds), in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import jax
import numpy as np

from gradflow_prune import criteria, export, pruning_run, surgery
from gradflow_prune.toolkit import toolkit
from shared import tensor_files, train_lib
from shared.errors import ConfigError, DataError
from shared.models import unet

# API name -> the CLI's procedure; the CLI's own names (iterative_<ablation>) are accepted too.
PROCEDURES = {"oneshot": "oneshot", "gradflow": "iterative", "iterative": "iterative"}
ABLATION_PROCEDURES = ("iterative_lam0", "iterative_gamma0", "iterative_k1")
DEFAULT_CRITERION = {"oneshot": "taylor", "iterative": "grasp"}


def _config(config):
  if config is None:
    from configs import gradflow_prune as config_file  # noqa: PLC0415  (the default settings)

    config = config_file.get_config()
  return config.copy_and_resolve_references()


def _check_model(unet_params, unet_config) -> dict:
  """The U-Net config as `unet.config_dict` output; params must have exactly its shapes."""
  try:
    model = (
      unet_config if isinstance(unet_config, unet.UNet) else unet.from_config_dict(unet_config)
    )
  except (TypeError, ValueError, KeyError, AttributeError) as e:
    raise ConfigError(f"unet_config is not a U-Net config dict ({e})") from None
  if not isinstance(unet_params, Mapping):
    raise ConfigError(f"unet_params must be a nested dict of arrays, got {type(unet_params)}")
  differs = tensor_files.mismatch(unet.abstract_params(model), unet_params)
  if differs:
    raise ConfigError(f"unet_params do not match unet_config: {differs}")
  return unet.config_dict(model)


def _check_data(data, model_config: dict, config) -> np.ndarray:
  x = np.asarray(data)
  model = unet.from_config_dict(model_config)
  want = (model.resolution, model.resolution, model.in_channels)
  if x.ndim != 4 or x.shape[1:] != want:
    raise DataError(f"data must be [N, {want[0]}, {want[1]}, {want[2]}] images, got {x.shape}")
  if x.dtype != np.uint8 and not (
    np.issubdtype(x.dtype, np.floating) and x.size and x.min() >= 0 and x.max() <= 1
  ):
    raise DataError(f"data must be uint8 or float in [0, 1], got {x.dtype}")
  need = max(config.prune.score_batch_size, config.prune.batch_size)
  if len(x) < need:
    raise DataError(
      f"data has {len(x)} images; scoring and training batches need at least {need} "
      "(config.prune.score_batch_size, config.prune.batch_size)"
    )
  return x


def prune(
  unet_params,
  unet_config,
  data,
  *,
  keep: float = 0.7,
  procedure: str = "gradflow",
  criterion: str | None = None,
  config=None,
  seed: int = 0,
  finetune_steps: int | None = None,
) -> export.PrunedUNet:
  """Prunes a dense DDPM U-Net and returns the physically smaller, fine-tuned model.

      pruned = gradflow_prune.prune(params, unet_config, images_uint8, keep=0.5,
                                    procedure="oneshot", criterion="taylor")
      pruned.config["widths"], pruned.num_params, pruned.macs

  Args:
    unet_params: the dense U-Net's params (a nested dict of arrays).
    unet_config: its `shared.models.unet` config dict (e.g. `unet.preset("tiny8")`, or the
      `unet_config.json` of a saved teacher).
    data: [N, H, W, C] uint8 (or float in [0, 1]) training images at the U-Net's resolution.
    keep: fraction of channels kept in every channel group, rounded per GroupNorm unit.
    procedure: 'gradflow' (iterative soft-mask gradient flow interleaved with training; the CLI's
      'iterative'), 'oneshot' (score once, remove, fine-tune: Diff-Pruning), or an ablation
      'iterative_lam0' | 'iterative_gamma0' | 'iterative_k1'.
    criterion: random | magnitude | taylor | grasp; default grasp for the flow, taylor one-shot.
    config: a configs/gradflow_prune.py config for the scoring, flow, optimizer, diffusion and
      sampler settings (None: its default variant); not modified.
    seed: the run's seed (scoring batches, data order, training noise), as the CLI's.
    finetune_steps: denoising steps after the surgery; default the config's budget (one-shot:
      prune.total_steps; the flow: the same minus its interleaved steps).

  Returns:
    A `PrunedUNet` (config with the kept `widths`, params, sampler settings); `sample` and `save`
    take it, `load` reads it back.
  """
  config = _config(config)
  if procedure not in PROCEDURES and procedure not in ABLATION_PROCEDURES:
    known = ", ".join([*PROCEDURES, *ABLATION_PROCEDURES])
    raise ConfigError(f"unknown procedure {procedure!r}; known: {known}")
  cli_procedure = PROCEDURES.get(procedure, procedure)
  criterion = criterion or DEFAULT_CRITERION[cli_procedure.split("_")[0]]
  if criterion not in criteria.CRITERIA:
    raise ConfigError(f"unknown criterion {criterion!r}; known: {', '.join(criteria.CRITERIA)}")
  if not 0 < float(keep) <= 1:
    raise ConfigError(f"keep must be in (0, 1], got {keep}")
  if finetune_steps is not None and int(finetune_steps) < 0:
    raise ConfigError(f"finetune_steps must be >= 0, got {finetune_steps}")
  t_cfg = _check_model(unet_params, unet_config)
  images = _check_data(data, t_cfg, config)
  interleaved, budget = pruning_run.plan.finetune_steps(config, cli_procedure)
  steps = budget if finetune_steps is None else int(finetune_steps)
  run = dict(criterion=criterion, procedure=cli_procedure, seed=int(seed), keep_ratio=float(keep))
  label = f"keep{keep:g}/{cli_procedure}/{criterion}/seed{seed}"

  mesh = train_lib.make_mesh(config.run.model_axis)
  t_params = jax.device_get(unet_params)
  big = toolkit(t_cfg, config, mesh)
  groups = surgery.channel_groups(t_cfg)
  score = pruning_run.importance_fn(config, big, groups, images, int(seed))
  if cli_procedure == "oneshot":
    masks, _ = pruning_run.oneshot_masks(criterion, float(keep), t_params, groups, score)
    big_params = t_params
  else:
    masks, state, _ = pruning_run.iterative_masks(
      config, run, big, t_params, groups, score, images, mesh, label=label
    )
    big_params = jax.device_get(state.params)
  small_cfg, small_params = surgery.apply_masks(t_cfg, big_params, masks)
  small = toolkit(small_cfg, config, mesh)
  if steps:
    state, step, batches = pruning_run.finetune_state(
      config, small, small_params, steps, images, int(seed)
    )
    state = train_lib.train_loop(
      state=state, step_fn=step, batches=batches, num_steps=steps,
      data_sharding=small.data_sharding, log_every=config.run.log_every, progress=False,
      stage=f"{label}/finetune",
    )  # fmt: skip
    small_params = jax.device_get(pruning_run.evaluated(state))
  logging.info(
    "%s: %d -> %d params", label, unet.num_params(t_params), unet.num_params(small_params)
  )
  ec = config.eval
  meta = export.metadata(
    small_cfg, small_params, schedule=config.diffusion.to_dict(),
    sampler=dict(ddim_steps=ec.ddim_steps, skip=ec.skip, eta=ec.eta, clip_x0=ec.clip_x0),
    extra={**run, "interleaved_steps": interleaved, "finetune_steps": steps},
  )  # fmt: skip
  return export.PrunedUNet(small_cfg, jax.tree.map(np.asarray, small_params), meta)


def save(directory: str, pruned: export.PrunedUNet) -> None:
  """Writes `directory`/model.safetensors + unet.json; `gradflow_prune.load(directory)` reloads
  a model that samples the same images."""
  if not isinstance(pruned, export.PrunedUNet):
    raise ConfigError(f"save takes a PrunedUNet (from prune or load), got {type(pruned).__name__}")
  export.save_pruned(directory, pruned)


def sample(pruned: export.PrunedUNet, num: int, key, *, steps: int | None = None) -> np.ndarray:
  """`num` DDIM samples, [num, H, W, C] float32 in [0, 1], from the noise N(0, I) drawn with `key`.

  Args:
    pruned: a `PrunedUNet` (from `prune` or `load`).
    num: how many images.
    key: a `jax.random` key; the same key gives the same images.
    steps: DDIM steps (default: the sampler settings the model carries, `meta['sampler']`).
  """
  if not isinstance(pruned, export.PrunedUNet):
    raise ConfigError(
      f"sample takes a PrunedUNet (from prune or load), got {type(pruned).__name__}"
    )
  if int(num) < 1:
    raise ConfigError(f"num must be >= 1, got {num}")
  x_T = jax.random.normal(key, (int(num), *pruned.image_shape))
  return np.asarray(pruned.sample(x_T, ddim_steps=steps))
