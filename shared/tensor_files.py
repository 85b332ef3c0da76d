"""Parameter trees as safetensors files beside a JSON of what they are: the exports that other
programs load (the pruned U-Net, the InfoTok tokenizer, the MCAE encoder).

    tensor_files.write(directory, "model.safetensors", params, "model.json", meta)
    params = tensor_files.read(path, abstract, described_by="model.json", error=CheckpointError)

Tensors are float32, named by the '/'-joined path of the params tree ('encoder/block_0/...'),
so `safetensors.numpy.load_file` (or torch's) reads them outside JAX. `read` checks every name
and shape against the tree the JSON describes (`abstract`: e.g. `jax.eval_shape` of the model's
init) and raises `error` with one line naming the first that differs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from shared import workdir
from shared.errors import CheckpointError


def flat_float32(params) -> dict[str, np.ndarray]:
  """{'a/b/kernel': float32 C-contiguous array} of a params tree (0-d arrays stay 0-d)."""
  flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
  return {k: np.array(v, np.float32, order="C") for k, v in flat.items()}


def write(
  directory: str,
  weights_name: str,
  params,
  meta_name: str,
  meta: Mapping[str, Any],
  header: Mapping[str, str] | None = None,
) -> None:
  """Writes `directory`/`weights_name` (safetensors, with `header` as its string metadata) and
  `directory`/`meta_name` (JSON), each atomically; only process 0 writes."""
  from safetensors.numpy import save_file  # noqa: PLC0415

  tensors = flat_float32(params)
  if jax.process_index() == 0:
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{weights_name}.tmp")
    save_file(tensors, tmp, metadata=dict(header) if header else None)
    os.replace(tmp, os.path.join(directory, weights_name))
  workdir.write_json(os.path.join(directory, meta_name), meta)


def read(
  weights_path: str,
  abstract,
  *,
  described_by: str,
  error: type[Exception] = CheckpointError,
) -> dict:
  """The params tree in `weights_path` (numpy arrays), after checking its tensor names and
  shapes against `abstract` (a params tree of arrays or `jax.ShapeDtypeStruct`s).

  Raises:
    error: the file is unreadable, or a name or shape differs (`described_by` names the file
      that describes the model, for the message).
  """
  from safetensors import SafetensorError  # noqa: PLC0415
  from safetensors.numpy import load_file  # noqa: PLC0415

  try:
    tensors = load_file(weights_path)
  except (SafetensorError, OSError) as e:
    raise error(f"cannot read {weights_path}: {e}") from None
  differs = mismatch(abstract, tensors)
  if differs:
    raise error(f"{weights_path} disagrees with {described_by}: {differs}")
  return traverse_util.unflatten_dict(tensors, sep="/")


def mismatch(abstract, params) -> str | None:
  """None when the two trees (nested, or flat with '/'-joined names) have the same names and
  shapes; else '<name> has shape <got>, the config says <want> (<n> tensor(s) differ)'."""

  def shapes(tree):  # a flat dict flattens to itself
    flat = traverse_util.flatten_dict(dict(tree), sep="/")
    return {k: tuple(v.shape if hasattr(v, "shape") else np.shape(v)) for k, v in flat.items()}

  want, got = shapes(abstract), shapes(params)
  if want == got:
    return None
  names = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
  k = names[0]
  return (
    f"{k} has shape {got.get(k, 'missing')}, the config says {want.get(k, 'no such tensor')} "
    f"({len(names)} tensor(s) differ)"
  )
