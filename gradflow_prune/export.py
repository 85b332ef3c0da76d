"""A pruned U-Net as a reusable folder, and one call that reloads it for sampling.

    model = gradflow_prune.load("runs/x/runs/keep0.7/iterative/grasp/seed0/model")
    images01 = model.sample(jax.random.normal(key, (16, *model.image_shape)))
    gradflow_prune.save("elsewhere/model", model)   # `save_pruned`: the same two files

The folder (`save`) holds `model.safetensors` (flat 'a/b/kernel' float32 tensors) and `unet.json`:
the U-Net config (`shared.models.unet` config dict, `widths` included), the channel count of
every channel group (`channels`), the noise schedule and the DDIM sampler settings it was
evaluated with. `load` rebuilds the network from the JSON and refuses tensors that disagree with
it (`ExportError`, a `CheckpointError`: one line, exit 2 at the command line).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax

from gradflow_prune import diffusion, evaluate, surgery
from shared import stages, tensor_files, workdir
from shared.errors import CheckpointError
from shared.models import unet

WEIGHTS, META = "model.safetensors", "unet.json"
FORMAT = "gradflow_prune.pruned_unet/1"


class ExportError(CheckpointError):
  """An exported model folder that is missing, foreign, or whose JSON and tensors disagree."""


def save(directory: str, model_config: dict, params, *, schedule: dict, sampler: dict,
         extra: dict | None = None) -> None:  # fmt: skip
  """Writes `directory`/model.safetensors + unet.json (process 0, each file atomically).

  Args:
    model_config: the (pruned) U-Net config dict the params belong to.
    params: its parameters.
    schedule: `diffusion.linear_schedule` arguments (num_timesteps, beta_start, beta_end).
    sampler: DDIM settings (ddim_steps, skip, eta, clip_x0).
    extra: provenance (keep ratio, procedure, criterion, seed, metrics...).
  """
  meta = metadata(model_config, params, schedule=schedule, sampler=sampler, extra=extra)
  tensor_files.write(directory, WEIGHTS, params, META, meta)


def metadata(model_config: dict, params, *, schedule: dict, sampler: dict,
             extra: dict | None = None) -> dict:  # fmt: skip
  """What unet.json holds (see `save`): format, U-Net config, channel counts, schedule, sampler."""
  return {
    "format": FORMAT,
    "unet": model_config,
    "channels": {g.name: g.size for g in surgery.channel_groups(model_config)},
    "params": int(sum(v.size for v in tensor_files.flat_float32(params).values())),
    "schedule": dict(schedule),
    "sampler": dict(sampler),
    **({"provenance": extra} if extra else {}),
  }


def save_pruned(directory: str, model: PrunedUNet) -> None:
  """Writes `model` (from `gradflow_prune.prune` or `load`) as `load` reads it back."""
  m = model.meta
  save(directory, model.config, model.params, schedule=m["schedule"], sampler=m["sampler"],
       extra=m.get("provenance"))  # fmt: skip


class _Programs:
  """The module, schedule and jitted eps / DDIM programs of one U-Net config and schedule."""

  def __init__(self, config: dict, schedule: dict):
    self.model = unet.from_config_dict(config)
    s = schedule
    self.schedule = diffusion.linear_schedule(s["num_timesteps"], s["beta_start"], s["beta_end"])
    self.eps = jax.jit(lambda p, x, t: self.model.apply({"params": p}, x, t))
    self._samplers = {}

  def sampler(self, steps: int, skip: str, eta: float, clip: bool):
    key = (steps, skip, eta, clip)
    if key not in self._samplers:
      ts = diffusion.ddim_timesteps(self.schedule.num_timesteps, steps, skip)

      def run(params, x_T, rng):
        eps_fn = lambda x, t: self.model.apply({"params": params}, x, t)
        x0 = diffusion.ddim_sample(eps_fn, self.schedule, x_T, ts, eta=eta, rng=rng, clip_x0=clip)
        return diffusion.to_unit_range(x0)

      self._samplers[key] = jax.jit(run)
    return self._samplers[key]


@dataclasses.dataclass
class PrunedUNet:
  """A (reloaded) pruned U-Net: its config, params, flax module and jitted eps / DDIM sampler.

  Models of the same config share one compilation (`stages.compiled`): the in-memory result of
  `gradflow_prune.prune` and its reloaded copy run the same programs.
  """

  config: dict[str, Any]
  params: Any
  meta: dict[str, Any]

  def __post_init__(self):
    schedule = self.meta["schedule"]
    key = stages.stage_key("gradflow_prune.PrunedUNet", self.config, schedule)
    self._programs = stages.compiled(key, lambda: _Programs(self.config, schedule))
    self.model = self._programs.model
    self.schedule = self._programs.schedule

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (self.model.resolution, self.model.resolution, self.model.in_channels)

  @property
  def num_params(self) -> int:
    return unet.num_params(self.params)

  @property
  def macs(self) -> int:
    """Multiply-accumulates of one forward pass for one image (`evaluate.unet_macs`)."""
    return evaluate.unet_macs(self.config)

  def eps(self, x_BxHxWxC, t_B):
    """The network's noise prediction."""
    return self._programs.eps(self.params, x_BxHxWxC, t_B)

  def sample(self, x_T, ddim_steps: int | None = None, skip: str | None = None,
             eta: float | None = None, clip_x0: bool | None = None, rng=None):  # fmt: skip
    """DDIM samples in [0, 1] from the initial noise `x_T` (defaults: the settings it was
    evaluated with, in unet.json)."""
    cfg = self.meta["sampler"]
    steps = int(cfg["ddim_steps"] if ddim_steps is None else ddim_steps)
    skip = cfg["skip"] if skip is None else skip
    eta = float(cfg["eta"] if eta is None else eta)
    clip = bool(cfg["clip_x0"] if clip_x0 is None else clip_x0)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    return self._programs.sampler(steps, skip, eta, clip)(self.params, x_T, rng)


def load(directory: str) -> PrunedUNet:
  """The model `save` wrote, ready to sample.

  Raises:
    ExportError: no such folder or files, a foreign unet.json, or tensors whose names or shapes
      disagree with its config and channel counts.
  """
  meta_path, weights_path = os.path.join(directory, META), os.path.join(directory, WEIGHTS)
  if not (os.path.isfile(meta_path) and os.path.isfile(weights_path)):
    raise ExportError(f"{directory} holds no exported U-Net ({META} + {WEIGHTS})")
  try:
    meta = workdir.read_json(meta_path)
  except CheckpointError as e:
    raise ExportError(str(e)) from None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise ExportError(f"{meta_path} is not a gradflow_prune export (format != {FORMAT!r})")
  try:
    model = unet.from_config_dict(meta["unet"])
    groups = surgery.channel_groups(model)
    abstract = unet.abstract_params(model)
  except Exception as e:  # a hand-edited or foreign config: say which file
    raise ExportError(f"{meta_path}: its U-Net config is invalid: {e}") from None
  channels = {g.name: g.size for g in groups}
  if meta.get("channels") != channels:
    bad = sorted(k for k in set(channels) | set(meta.get("channels") or {})
                 if channels.get(k) != (meta.get("channels") or {}).get(k))  # fmt: skip
    raise ExportError(
      f"{meta_path}: channel counts disagree with its U-Net config at {', '.join(bad[:3])}"
    )
  params = tensor_files.read(weights_path, abstract, described_by=META, error=ExportError)
  return PrunedUNet(meta["unet"], jax.tree.map(jax.numpy.asarray, params), meta)
