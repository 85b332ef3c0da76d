"""Benchmark cases for MCAE: the pre-training step that `mcae.train` jits, at the config's shapes.

    python -m benchmarks.run --config configs/mcae.py:paper --what train_step

Cases: `mae` (lambda = 0: the MAE ViT-B/16 step of the performance targets) and `mcae` (MAE +
lambda * SupCon, as configured). Inputs are synthetic, already on the devices.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp

from mcae import pretrain_loss
from shared import train_lib
from shared.benchmark import Case, breakdown
from shared.errors import ConfigError

NUM_DOMAINS, NUM_ATTACKS = 4, 2


def _image_shape(config) -> tuple[int, int, int]:
  options = config.data.options
  size = options.get("image_size") or options.get("resolution")
  return (int(size), int(size), 3)


def _batch(batch_size: int, image_shape, key) -> dict:
  k1, k2, k3, k4 = jax.random.split(key, 4)
  return {
    "image": jax.random.uniform(k1, (batch_size, *image_shape)),
    "label": jax.random.randint(k2, (batch_size,), 0, 2),
    "domain": jax.random.randint(k3, (batch_size,), 0, NUM_DOMAINS),
    "attack": jax.random.randint(k4, (batch_size,), 0, NUM_ATTACKS),
  }


def pretrain_case(config, name: str, batch_size: int | None, supcon_weight: float) -> Case:
  cfg = copy.deepcopy(config)
  with cfg.unlocked():
    cfg.pretrain.supcon_weight = supcon_weight
  batch_size = batch_size or cfg.pretrain.batch_size
  dtype = train_lib.compute_dtype(cfg.run.dtype)
  image_shape = _image_shape(cfg)
  init = pretrain_loss.init_params(cfg.model, cfg.pretrain, dtype, image_shape)
  loss = pretrain_loss.make_loss(
    cfg.model, cfg.pretrain, dtype, num_domains=NUM_DOMAINS, num_attacks=NUM_ATTACKS
  )
  tx = train_lib.make_optimizer(cfg.pretrain.optimizer, cfg.pretrain.num_steps)
  mesh = train_lib.make_mesh(cfg.run.model_axis)
  data_sharding = train_lib.batch_sharding(mesh)
  state, sharding = train_lib.init_state(init, tx, jax.random.PRNGKey(0), mesh, fsdp=cfg.run.fsdp)
  raw_step = train_lib.loss_step(loss)
  step = train_lib.make_step(raw_step, sharding, data_sharding)
  batch = jax.device_put(_batch(batch_size, image_shape, jax.random.PRNGKey(1)), data_sharding)
  abstract_state = jax.eval_shape(lambda: state)

  def flops_fn(b):
    return raw_step, (
      abstract_state,
      jax.eval_shape(lambda: _batch(b, image_shape, jnp.zeros(2, jnp.uint32))),
    )

  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  return Case(
    name=f"mcae/{name}",
    step=step,
    args=(state, batch),
    examples=batch_size * cfg.pretrain.views,
    batch_size=batch_size,
    flops_fn=flops_fn,
    loss_fn=loss,
    meta={
      "dtype": cfg.run.dtype,
      "image_size": image_shape[0],
      "patch": cfg.model.patch_size,
      "mask_ratio": cfg.pretrain.mask_ratio,
      "decoder_depth": cfg.pretrain.decoder_depth,
      "attention": pretrain_loss.attention_impl(cfg.model.get("attention_impl", ""), dtype)
      or "xla",
      "params": int(n_params),
    },
  )


def cases(config, what: str, batch_size: int | None) -> list[Case]:
  if what == "breakdown":  # the MAE step: forward, forward + backward, full step
    return breakdown(pretrain_case(config, "mae_pretrain", batch_size, supcon_weight=0.0))
  if what != "train_step":
    raise ConfigError(f"mcae has --what=train_step|breakdown, not {what!r}")
  return [
    pretrain_case(config, "mae_pretrain", batch_size, supcon_weight=0.0),
    pretrain_case(config, "mcae_pretrain", batch_size, supcon_weight=config.pretrain.supcon_weight),
  ]
