"""Saved U-Nets: a folder with unet_config.json, params.npz and a free-form teacher.json."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from shared import workdir
from shared.errors import CheckpointError
from shared.models import unet

CONFIG, PARAMS, META = "unet_config.json", "params.npz", "teacher.json"


def save_unet(directory: str, model_config: dict, params, meta: dict | None = None) -> None:
  """Writes the folder `load_unet` reads (process 0, each file atomically)."""
  workdir.save_params(os.path.join(directory, PARAMS), params)
  workdir.write_json(os.path.join(directory, CONFIG), model_config)
  if meta is not None:
    workdir.write_json(os.path.join(directory, META), meta)


def has_unet(directory: str) -> bool:
  return os.path.isfile(os.path.join(directory, PARAMS))


def load_unet(directory: str) -> tuple[dict, dict, dict]:
  """(model config, params, meta) from `save_unet`'s folder; shapes checked against the config."""
  cfg_path, params_path = os.path.join(directory, CONFIG), os.path.join(directory, PARAMS)
  if not (os.path.isfile(cfg_path) and os.path.isfile(params_path)):
    raise CheckpointError(f"{directory} holds no saved U-Net ({CONFIG} + {PARAMS})")
  model_config = workdir.read_json(cfg_path)
  params = jax.tree.map(jnp.asarray, workdir.load_params(params_path))
  want = jax.tree.map(lambda a: a.shape, unet.abstract_params(unet.from_config_dict(model_config)))
  got = jax.tree.map(lambda a: a.shape, params)
  if want != got:
    raise CheckpointError(f"{directory}: {PARAMS} does not match its {CONFIG}")
  return model_config, params, workdir.read_json(os.path.join(directory, META)) or {}


def update_meta(directory: str, **fields) -> None:
  """Adds `fields` to the folder's teacher.json (process 0)."""
  path = os.path.join(directory, META)
  workdir.write_json(path, {**(workdir.read_json(path) or {}), **fields})
