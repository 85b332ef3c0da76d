"""The jitted pieces of one U-Net config: model, DDIM sampler, criterion scorer, train steps.

Built through `stages.compiled`, so every run of a process that shares a U-Net shape (the teacher,
each pruned width set) and the settings below shares one compilation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradflow_prune import criteria, diffusion, procedures
from shared import stages, train_lib
from shared.errors import ConfigError
from shared.models import unet


def schedule(config) -> diffusion.Schedule:
  """The DDPM noise schedule of `config.diffusion`."""
  d = config.diffusion
  return diffusion.linear_schedule(d.num_timesteps, d.beta_start, d.beta_end)


class Toolkit:
  """The model, its sampler, scorer and train steps for one U-Net config."""

  def __init__(self, model_config: dict, sched, config, mesh):
    self.config_dict = model_config
    self.model = unet.from_config_dict(model_config, train_lib.compute_dtype(config.run.dtype))
    self.score_dtype = score_dtype(config)
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
    self._trainers = {}  # per optimizer config; the Toolkit itself is what `toolkit` compiles

  @property
  def scorer(self) -> criteria.Scorer:
    """Criteria and the soft-mask flow, computed in `prune.score_dtype` (float32 by default,
    whatever the training dtype: bf16's ~0.004 resolution near 1 would swallow Euler steps)."""
    if self._scorer is None:
      model = unet.from_config_dict(self.config_dict, train_lib.compute_dtype(self.score_dtype))
      self._scorer = criteria.Scorer(model, self.sched)
    return self._scorer

  def trainer(self, opt_cfg, num_steps: int, masked: bool):
    """(tx, loss_fn, jitted steps) for this optimizer config and step count (same objects)."""
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
    model_state = {} if masks is None else {"masks": procedures.soft_masks_as_jnp(masks)}
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


def score_dtype(config) -> str:
  """The dtype of scoring and of the flow: `prune.score_dtype`, or the run's for "run"."""
  name = config.prune.get("score_dtype", "run")
  return config.run.dtype if name == "run" else name


def _mesh_key(mesh) -> dict:
  return {"shape": dict(mesh.shape), "devices": [int(d.id) for d in mesh.devices.flat]}


def toolkit(model_config: dict, config, mesh) -> Toolkit:
  """The `Toolkit` of this U-Net config, built once per process for these settings."""
  sched = schedule(config)
  key = stages.stage_key(
    "gradflow_prune.Toolkit", model_config, config.run.dtype, score_dtype(config), config.eval,
    config.diffusion, _mesh_key(mesh),
  )  # fmt: skip
  return stages.compiled(key, lambda: Toolkit(model_config, sched, config, mesh))


def unet_config(config, image_shape) -> dict:
  """The dense U-Net's config dict for `config.model` and images of `image_shape` (H, W, C)."""
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
