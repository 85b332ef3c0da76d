"""Saved U-Nets: a folder with unet_config.json, params.npz and a free-form teacher.json."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from shared import cli, workdir
from shared.errors import CheckpointError, ConfigError
from shared.models import unet

CONFIG, PARAMS, META = "unet_config.json", "params.npz", "teacher.json"
STORED_DTYPES = ("float32", "float16")


def save_unet(
  directory: str, model_config: dict, params, meta: dict | None = None, dtype: str = "float32"
) -> None:
  """Writes the folder `load_unet` reads (process 0, each file atomically). `dtype`: how the
  params are stored ("float16" halves a shipped asset; `load_unet` gives float32 either way)."""
  if dtype not in STORED_DTYPES:
    raise ConfigError(f"U-Net params stored as {dtype!r}; known: {', '.join(STORED_DTYPES)}")
  workdir.save_params(os.path.join(directory, PARAMS), params, dtype=np.dtype(dtype))
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
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), workdir.load_params(params_path))
  want = jax.tree.map(lambda a: a.shape, unet.abstract_params(unet.from_config_dict(model_config)))
  got = jax.tree.map(lambda a: a.shape, params)
  if want != got:
    raise CheckpointError(f"{directory}: {PARAMS} does not match its {CONFIG}")
  return model_config, params, workdir.read_json(os.path.join(directory, META)) or {}


def update_meta(directory: str, **fields) -> None:
  """Adds `fields` to the folder's teacher.json (process 0)."""
  path = os.path.join(directory, META)
  workdir.write_json(path, {**(workdir.read_json(path) or {}), **fields})


def ship(src: str, dst: str, dtype: str = "float16") -> dict:
  """Copies the U-Net folder `src` to `dst` with its params stored as `dtype` (a small asset);
  teacher.json notes it (its eval numbers were measured on `src`'s params). Returns the meta."""
  model_config, params, meta = load_unet(src)
  meta = {**meta, "stored_dtype": dtype, "shipped_from": os.path.abspath(src)}
  if dtype != "float32":
    meta["stored_note"] = (
      f"params stored as {dtype} (loaded as float32); eval numbers above were measured on the "
      "float32 params before shipping"
    )
  save_unet(dst, model_config, params, meta, dtype=dtype)
  return meta


USAGE = "usage: python -m gradflow_prune.unet_io SRC_DIR DST_DIR [--dtype float16|float32]"


def main(argv=None) -> int:
  """Ships a saved U-Net folder (e.g. a pre-trained teacher) as a small asset."""
  parser = cli.ArgumentParser(
    prog="python -m gradflow_prune.unet_io",
    usage=USAGE.removeprefix("usage: "),
    description=main.__doc__,
  )
  parser.add_argument("src")
  parser.add_argument("dst")
  parser.add_argument("--dtype", default="float16", choices=STORED_DTYPES)
  args = parser.parse_args(argv)
  ship(args.src, args.dst, args.dtype)
  size = os.path.getsize(os.path.join(args.dst, PARAMS)) / 2**20
  print(f"{args.src} -> {args.dst} ({PARAMS} {size:.1f} MiB, {args.dtype})")
  return 0


if __name__ == "__main__":
  raise SystemExit(cli.guarded(main))
