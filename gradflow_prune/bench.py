"""Benchmark cases for gradient-flow pruning, built from the code `gradflow_prune.train` runs.

    python -m benchmarks.run --config configs/gradflow_prune.py:paper --what train_step
    python -m benchmarks.run --config configs/gradflow_prune.py:paper --what sample

train_step: the DDPM U-Net's denoising step (`Toolkit.make_state`), in float32 and bfloat16.
sample: the U-Net forward that sampling repeats (image-steps/s), for the teacher and for U-Nets
physically pruned by `surgery.apply_masks` at each configured keep ratio (magnitude masks: the
speed depends only on the widths), plus the full DDIM sampler (`Toolkit.sample`) for each.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np

from gradflow_prune import evaluate, surgery
from gradflow_prune.toolkit import Toolkit, schedule, unet_config
from shared import train_lib
from shared.benchmark import Case, breakdown
from shared.errors import ConfigError
from shared.models import unet


def _setup(config, dtype: str):
  cfg = copy.deepcopy(config)
  with cfg.unlocked():
    cfg.run.dtype = dtype
  image_shape = (32, 32, 3) if cfg.data.name == "tfds:cifar10" else (32, 32, 1)
  model_config = unet_config(cfg, image_shape)
  sched = schedule(cfg)
  mesh = train_lib.make_mesh(cfg.run.model_axis)
  return cfg, model_config, sched, mesh, image_shape


def train_case(config, batch_size: int, dtype: str) -> Case:
  cfg, model_config, sched, mesh, image_shape = _setup(config, dtype)
  kit = Toolkit(model_config, sched, cfg, mesh)
  params = unet.init_params(kit.model, 0)
  opt = cfg.pretrain.optimizer
  state, step = kit.make_state(params, opt, cfg.pretrain.steps, jax.random.PRNGKey(0))
  images = jax.random.uniform(jax.random.PRNGKey(1), (batch_size, *image_shape))
  batch = jax.device_put({"image": images}, kit.data_sharding)
  _, loss_fn, _ = kit.trainer(opt, cfg.pretrain.steps, False)
  raw_step = train_lib.loss_step(loss_fn)
  abstract_state = jax.eval_shape(lambda: state)

  def flops_fn(b):
    return raw_step, (
      abstract_state,
      {"image": jax.ShapeDtypeStruct((b, *image_shape), jnp.float32)},
    )

  return Case(
    name=f"gradflow_prune/ddpm_train_{dtype}",
    step=step,
    args=(state, batch),
    examples=batch_size,
    batch_size=batch_size,
    flops_fn=flops_fn,
    loss_fn=loss_fn,
    meta={"dtype": dtype, "params": unet.num_params(params), "macs": None},
  )


def _pruned(model_config, params, keep_ratio: float):
  """Physically pruned config + params at `keep_ratio` (magnitude scores)."""
  if keep_ratio >= 1.0:
    return model_config, params
  groups = surgery.channel_groups(model_config)
  squares = jax.tree.map(lambda p: np.square(np.asarray(p)), jax.device_get(params))
  scores = surgery.channel_reduce(groups, squares, np.sum)
  masks = surgery.masks_from_scores(groups, scores, keep_ratio)
  return surgery.apply_masks(model_config, jax.device_get(params), masks)


def sample_cases(config, batch_size: int, dtype: str = "bfloat16") -> list[Case]:
  cfg, model_config, sched, mesh, image_shape = _setup(config, dtype)
  teacher = unet.from_config_dict(model_config)
  params = unet.init_params(teacher, 0)
  data_sharding = train_lib.batch_sharding(mesh)
  x = jax.device_put(
    jax.random.normal(jax.random.PRNGKey(2), (batch_size, *image_shape)), data_sharding
  )
  t = jax.device_put(jnp.full((batch_size,), 500, jnp.int32), data_sharding)
  out = []
  for keep in (1.0, *cfg.prune.keep_ratios):
    small_config, small_params = _pruned(model_config, params, keep)
    kit = Toolkit(small_config, sched, cfg, mesh)
    model = kit.model
    small_params = jax.device_put(small_params, train_lib.replicated(mesh))
    raw_forward = lambda p, x, t, model=model: model.apply({"params": p}, x, t)
    forward = jax.jit(raw_forward)
    abstract_params = jax.eval_shape(lambda p=small_params: p)

    def flops_fn(b, raw_forward=raw_forward, abstract_params=abstract_params):
      x_b = jax.ShapeDtypeStruct((b, *image_shape), jnp.float32)
      return raw_forward, (abstract_params, x_b, jax.ShapeDtypeStruct((b,), jnp.int32))

    label = "teacher" if keep == 1.0 else f"keep{keep:g}"
    macs = evaluate.unet_macs(small_config)
    meta = {"dtype": dtype, "params": unet.num_params(small_params), "macs": macs, "keep": keep}
    out.append(
      Case(
        name=f"gradflow_prune/forward_{label}",
        step=forward,
        args=(small_params, x, t),
        examples=batch_size,
        batch_size=batch_size,
        flops_fn=flops_fn,
        carry=False,
        meta=meta,
      )
    )
    out.append(
      Case(
        name=f"gradflow_prune/ddim{len(kit.steps)}_{label}",
        step=lambda p, x, kit=kit: kit.sample(p, None, x),
        args=(small_params, x),
        examples=batch_size,
        batch_size=batch_size,
        carry=False,
        meta=meta,
      )
    )
  return out


def cases(config, what: str, batch_size: int | None) -> list[Case]:
  if what == "train_step":
    return [train_case(config, batch_size or 128, d) for d in ("float32", "bfloat16")]
  if what == "breakdown":  # the bf16 step: forward, forward + backward, full step
    return breakdown(train_case(config, batch_size or 128, "bfloat16"))
  if what == "sample":
    return sample_cases(config, batch_size or 256)
  raise ConfigError(f"gradflow_prune has --what=train_step|sample|breakdown, not {what!r}")
