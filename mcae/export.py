"""A pre-trained MCAE encoder as files another program loads: safetensors + a JSON of its config.

  <dir>/encoder.safetensors   the ViT encoder's params, keys '/'-joined paths of the params tree
                              ('block_0/attn/query/kernel', 'patch_embed/kernel', ...), float32
  <dir>/encoder.json          {"format": "mcae-encoder", "version": 1, "model": config.model's
                              fields, "image_shape": [H, W, C], "info": {method, pretrain config}}

The model fields rebuild the module: `shared.models.vit.ViTEncoder(**mcae.pretrain.vit_kwargs(
ConfigDict(model), jnp.float32))`; `mcae.load_encoder(dir)` returns an `mcae.Encoder` that
`mcae.finetune` and `mcae.features` take. Outside JAX the safetensors file reads with
`safetensors.numpy.load_file` (or torch's); the names follow Flax's Dense / LayerNorm layout
(kernel [in, out], bias, scale).
"""

from __future__ import annotations

import json
import os
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from mcae.api import Encoder
from mcae.pretrain_loss import MaskedEncoder, vit_kwargs
from shared.errors import DataError

FORMAT, VERSION = "mcae-encoder", 1
WEIGHTS, CONFIG = "encoder.safetensors", "encoder.json"


def save_encoder(directory: str, encoder: Encoder) -> str:
  """Writes `encoder` to `directory` (created; files replaced atomically); returns the directory.
  Only process 0 writes."""
  from safetensors.numpy import save  # noqa: PLC0415

  if not isinstance(encoder, Encoder):
    raise DataError(f"save_encoder: expected an mcae.Encoder, got {type(encoder).__name__}")
  if jax.process_index() != 0:
    return directory
  flat = traverse_util.flatten_dict(jax.device_get(encoder.params), sep="/")
  tensors = {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in flat.items()}
  meta = {
    "format": FORMAT,
    "version": VERSION,
    "model": encoder.model,
    "image_shape": list(encoder.image_shape),
    "info": encoder.info,
  }
  os.makedirs(directory, exist_ok=True)
  _write_atomic(os.path.join(directory, WEIGHTS), save(tensors, metadata={"format": FORMAT}))
  text = json.dumps(meta, indent=2, sort_keys=True, default=_plain) + "\n"
  _write_atomic(os.path.join(directory, CONFIG), text.encode())
  return directory


def load_encoder(directory: str) -> Encoder:
  """The `Encoder` that `save_encoder` wrote to `directory` (numpy params).

  Raises:
    DataError: a missing folder or file, a file that is not what `save_encoder` writes, or
      weights whose names or shapes do not match the model the JSON describes.
  """
  from safetensors import SafetensorError  # noqa: PLC0415
  from safetensors.numpy import load_file  # noqa: PLC0415

  if not os.path.isdir(directory):
    raise DataError(f"no MCAE encoder at {directory}: not a folder (write one with save_encoder)")
  config_path, weights_path = (os.path.join(directory, f) for f in (CONFIG, WEIGHTS))
  for path in (config_path, weights_path):
    if not os.path.isfile(path):
      raise DataError(f"MCAE encoder {directory}: {os.path.basename(path)} is missing")
  try:
    with open(config_path) as f:
      meta = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f"{config_path}: not valid JSON ({e})") from None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise DataError(f"{config_path}: not an MCAE encoder config (format {FORMAT!r} expected)")
  if meta.get("version") != VERSION:
    raise DataError(f"{config_path}: version {meta.get('version')!r}; this code reads {VERSION}")
  for field in ("model", "image_shape"):
    if field not in meta:
      raise DataError(f"{config_path}: no {field!r} field")
  try:
    flat = load_file(weights_path)
  except (SafetensorError, OSError) as e:
    raise DataError(f"{weights_path}: cannot read as safetensors ({e})") from None
  image_shape = tuple(int(s) for s in meta["image_shape"])
  _check_shapes(weights_path, flat, meta["model"], image_shape)
  return Encoder(
    params=traverse_util.unflatten_dict(flat, sep="/"),
    model=meta["model"],
    image_shape=image_shape,
    info=meta.get("info", {}),
  )


def _check_shapes(path: str, flat: dict, model: dict, image_shape: tuple) -> None:
  """The names and shapes the JSON's model has, against the file's."""
  net = MaskedEncoder(vit_kwargs(ml_collections.ConfigDict(model), jnp.float32))
  x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  abstract = jax.eval_shape(net.init, jax.random.PRNGKey(0), x, jax.random.PRNGKey(0))
  want = traverse_util.flatten_dict(abstract["params"]["encoder"], sep="/")
  if set(want) != set(flat):
    missing, extra = sorted(set(want) - set(flat)), sorted(set(flat) - set(want))
    raise DataError(f"{path}: weights do not match the model; missing {missing[:3]}, extra "
                    f"{extra[:3]}")  # fmt: skip
  for k, v in want.items():
    if tuple(flat[k].shape) != tuple(v.shape):
      raise DataError(f"{path}: {k} has shape {flat[k].shape}, the model's is {v.shape}")


def _write_atomic(path: str, data: bytes) -> None:
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _plain(o):
  return o.tolist() if hasattr(o, "tolist") else str(o)
