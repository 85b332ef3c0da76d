"""A pre-trained MCAE encoder as files another program loads: safetensors + a JSON of its config.

  <dir>/encoder.safetensors   the ViT encoder's params, keys '/'-joined paths of the params tree
                              ('block_0/attn/query/kernel', 'patch_embed/kernel', ...), float32
  <dir>/encoder.json          {"format": "mcae-encoder", "version": 1, "model": config.model's
                              fields, "image_shape": [H, W, C], "info": {method, pretrain config}}

The model fields rebuild the module: `shared.models.vit.ViTEncoder(**mcae.pretrain_loss.vit_kwargs(
ConfigDict(model), jnp.float32))`; `mcae.load_encoder(dir)` returns an `mcae.Encoder` that
`mcae.finetune` and `mcae.features` take. Outside JAX the safetensors file reads with
`safetensors.numpy.load_file` (or torch's); the names follow Flax's Dense / LayerNorm layout
(kernel [in, out], bias, scale).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections

from mcae.api import Encoder
from mcae.pretrain_loss import MaskedEncoder, vit_kwargs
from shared import tensor_files
from shared.errors import DataError

FORMAT, VERSION = "mcae-encoder", 1
WEIGHTS, CONFIG = "encoder.safetensors", "encoder.json"


def save_encoder(directory: str, encoder: Encoder) -> str:
  """Writes `encoder` to `directory` (created; files replaced atomically); returns the directory.
  Only process 0 writes."""
  if not isinstance(encoder, Encoder):
    raise DataError(f"save_encoder: expected an mcae.Encoder, got {type(encoder).__name__}")
  meta = {
    "format": FORMAT,
    "version": VERSION,
    "model": encoder.model,
    "image_shape": list(encoder.image_shape),
    "info": encoder.info,
  }
  header = {"format": FORMAT}
  tensor_files.write(directory, WEIGHTS, encoder.params, CONFIG, meta, header=header)
  return directory


def load_encoder(directory: str) -> Encoder:
  """The `Encoder` that `save_encoder` wrote to `directory` (numpy params).

  Raises:
    DataError: a missing folder or file, a file that is not what `save_encoder` writes, or
      weights whose names or shapes do not match the model the JSON describes.
  """
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
  image_shape = tuple(int(s) for s in meta["image_shape"])
  net = MaskedEncoder(vit_kwargs(ml_collections.ConfigDict(meta["model"]), jnp.float32))
  x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  abstract = jax.eval_shape(net.init, jax.random.PRNGKey(0), x, jax.random.PRNGKey(0))
  params = tensor_files.read(
    weights_path, abstract["params"]["encoder"], described_by=CONFIG, error=DataError
  )
  return Encoder(
    params=params, model=meta["model"], image_shape=image_shape, info=meta.get("info", {})
  )
