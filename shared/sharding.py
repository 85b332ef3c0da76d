"""The ("data", "model") mesh, the shardings of batches and states, and global batches.

Pieces:
  make_mesh        a ("data", "model") mesh over all devices
  batch_sharding   leading (batch) axis on "data"
  replicated       everything on every device
  state_shardings  a pytree's shardings: replicated, or FSDP-style on "data" for large leaves
  global_batch     per-process numpy batch -> global jax.Array (multi-host safe)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from shared.errors import ConfigError

PyTree = Any
Batch = Mapping[str, Any]


def make_mesh(model_axis: int = 1, devices=None) -> jax.sharding.Mesh:
  """A ("data", "model") mesh over all devices (or `devices`); "model" of size `model_axis`."""
  devices = jax.devices() if devices is None else list(devices)
  n = len(devices)
  if model_axis < 1 or n % model_axis:
    raise ConfigError(f"model_axis={model_axis} does not divide the {n} devices")
  shape = (n // model_axis, model_axis)
  # Auto axes: XLA propagates shardings (GSPMD), so model code needs no sharding annotations.
  # (jax.make_mesh defaults to Explicit axes on recent JAX.)
  auto = (jax.sharding.AxisType.Auto,) * 2
  return jax.make_mesh(shape, ("data", "model"), axis_types=auto, devices=devices)


def batch_sharding(mesh) -> NamedSharding:
  """Leading (batch) axis split over "data"; other axes replicated."""
  return NamedSharding(mesh, P("data"))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _fsdp_spec(shape, n_data: int, min_size: int) -> P:
  """Shards the largest axis divisible by the data-axis size, for leaves of >= min_size items."""
  if n_data == 1 or math.prod(shape) < min_size:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % n_data == 0:
      spec = [None] * len(shape)
      spec[axis] = "data"
      return P(*spec)
  return P()


def state_shardings(state: PyTree, mesh, fsdp: bool = False, min_size: int = 2**14) -> PyTree:
  """Shardings for a TrainState (or any pytree): replicated, or FSDP-style on "data".

  Works on concrete arrays or `jax.ShapeDtypeStruct`s, so it can be called on `jax.eval_shape`
  output before anything is materialised.
  """
  n_data = mesh.shape["data"]

  def one(leaf):
    if not fsdp:
      return replicated(mesh)
    return NamedSharding(mesh, _fsdp_spec(np.shape(leaf), n_data, min_size))

  return jax.tree.map(one, state)


def global_batch(local: Batch, sharding: NamedSharding) -> dict[str, jax.Array]:
  """This process's slice of a global batch (numpy) -> global arrays sharded on "data"."""
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()
  }
