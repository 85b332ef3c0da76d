"""Pre-trained weights in diffusers' `UNet2DModel` layout (e.g. `google/ddpm-cifar10-32`).

Diff-Pruning starts from that checkpoint (its EMA version). A user supplies the state dict as a
file -- nothing is downloaded -- and `load_unet_state_dict(path, model_config)` returns our params:

  .pth / .pt / .bin   a PyTorch state dict (`torch.load(path, weights_only=True)`; torch optional)
  .safetensors        diffusers' other format
  .npz                the same arrays saved with numpy

Key mapping (ours -> diffusers): conv_in, temb_dense{0,1} -> time_embedding.linear_{1,2},
down_{i}_res_{j} -> down_blocks.{i}.resnets.{j} (temb_proj -> time_emb_proj, shortcut ->
conv_shortcut), down_{i}_attn_{j} -> down_blocks.{i}.attentions.{j} (norm -> group_norm; q, k, v,
proj -> to_q, to_k, to_v, to_out.0, or the older query, key, value, proj_attn),
down_{i}_downsample -> down_blocks.{i}.downsamplers.0.conv, mid_res_{0,1} / mid_attn ->
mid_block.resnets.{0,1} / mid_block.attentions.0, up_{i}_* -> up_blocks.{L-1-i}.* (diffusers
counts up blocks from the bottom), up_{i}_upsample -> up_blocks.{L-1-i}.upsamplers.0.conv,
norm_out -> conv_norm_out, conv_out. Layouts: conv [O, I, kh, kw] -> [kh, kw, I, O], linear [O, I]
-> [I, O] (attention projections stored as 1x1 convs are accepted too), GroupNorm weight -> scale.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import jax
import numpy as np
from flax import traverse_util

from shared import workdir
from shared.errors import CheckpointError
from shared.models import unet

_RES = {"temb_proj": "time_emb_proj", "shortcut": "conv_shortcut"}
_ATTN = {
  "norm": ("group_norm",),
  "q": ("to_q", "query"),
  "k": ("to_k", "key"),
  "v": ("to_v", "value"),
  "proj": ("to_out.0", "proj_attn"),
}


def _module_prefixes(model: unet.UNet, module: tuple[str, ...]) -> tuple[str, ...]:
  """Candidate diffusers prefixes (first = modern naming) for our module path."""
  levels = len(model.ch_mult)
  top, rest = module[0], module[1:]
  if top in ("conv_in", "conv_out"):
    return (top,)
  if top == "norm_out":
    return ("conv_norm_out",)
  if top in ("temb_dense0", "temb_dense1"):
    return (f"time_embedding.linear_{int(top[-1]) + 1}",)
  m = re.fullmatch(r"(down|up)_(\d+)_(res|attn)_(\d+)", top)
  mid = re.fullmatch(r"mid_(res_(\d+)|attn)", top)
  if m or mid:
    if m:
      side, level, kind, j = m.group(1), int(m.group(2)), m.group(3), m.group(4)
      block = f"down_blocks.{level}" if side == "down" else f"up_blocks.{levels - 1 - level}"
      base = f"{block}.{'resnets' if kind == 'res' else 'attentions'}.{j}"
    else:
      kind = "res" if mid.group(2) is not None else "attn"
      base = f"mid_block.resnets.{mid.group(2)}" if kind == "res" else "mid_block.attentions.0"
    (sub,) = rest
    if kind == "res":
      return (f"{base}.{_RES.get(sub, sub)}",)
    return tuple(f"{base}.{name}" for name in _ATTN[sub])
  m = re.fullmatch(r"(down|up)_(\d+)_(downsample|upsample)", top)
  if m:
    level = int(m.group(2))
    if m.group(1) == "down":
      return (f"down_blocks.{level}.downsamplers.0.conv",)
    return (f"up_blocks.{levels - 1 - level}.upsamplers.0.conv",)
  raise ValueError(f"no diffusers name for {'/'.join(module)}")


def _to_ours(array: np.ndarray, ours_shape: tuple[int, ...], leaf: str) -> np.ndarray:
  a = np.asarray(array, np.float32)
  if leaf == "kernel" and len(ours_shape) == 4:  # conv
    return a.transpose(2, 3, 1, 0)
  if leaf == "kernel":  # dense: [O, I] (or a 1x1 conv [O, I, 1, 1])
    return a.reshape(a.shape[0], a.shape[1]).T
  return a


def _to_torch(array: np.ndarray, leaf: str) -> np.ndarray:
  a = np.asarray(array)
  if leaf == "kernel" and a.ndim == 4:
    return a.transpose(3, 2, 0, 1)
  if leaf == "kernel":
    return a.T
  return a


def params_from_state_dict(state_dict: Mapping[str, np.ndarray], model_config, source="weights"):
  """Our params for `model_config` from a diffusers `UNet2DModel` state dict (numpy arrays).

  Raises:
    CheckpointError: a missing key, a shape that does not fit, or keys nothing uses.
  """
  model = (
    model_config if isinstance(model_config, unet.UNet) else unet.from_config_dict(model_config)
  )
  target = traverse_util.flatten_dict(unet.abstract_params(model))
  used, out = set(), {}
  for path, leaf in target.items():
    module, name = path[:-1], path[-1]
    torch_leaf = "bias" if name == "bias" else "weight"
    candidates = [f"{p}.{torch_leaf}" for p in _module_prefixes(model, module)]
    key = next((k for k in candidates if k in state_dict), None)
    if key is None:
      raise CheckpointError(f"{source}: no {' or '.join(candidates)} for {'/'.join(path)}")
    value = _to_ours(state_dict[key], leaf.shape, name)
    if value.shape != leaf.shape:
      raise CheckpointError(
        f"{source}: {key} has shape {tuple(np.shape(state_dict[key]))}, which does not fit "
        f"{'/'.join(path)} {leaf.shape}; does the model config match the checkpoint?"
      )
    used.add(key)
    out[path] = value
  unused = sorted(set(state_dict) - used)
  if unused:
    raise CheckpointError(
      f"{source}: {len(unused)} keys fit no parameter of this U-Net config, e.g. {unused[:3]}"
    )
  return jax.tree.map(np.asarray, traverse_util.unflatten_dict(out))


def state_dict_from_params(params, model_config) -> dict[str, np.ndarray]:
  """The inverse of `params_from_state_dict`, in modern diffusers naming (torch layouts)."""
  model = (
    model_config if isinstance(model_config, unet.UNet) else unet.from_config_dict(model_config)
  )
  out = {}
  for path, value in traverse_util.flatten_dict(jax.device_get(params)).items():
    module, name = path[:-1], path[-1]
    prefix = _module_prefixes(model, module)[0]
    out[f"{prefix}.{'bias' if name == 'bias' else 'weight'}"] = _to_torch(value, name)
  return out


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """A state dict file as numpy arrays (`shared.workdir.read_state_dict`: PyTorch files are read
  with weights_only=True, so no pickled code runs)."""
  return workdir.read_state_dict(os.fspath(path), what="pre-trained U-Net weights")


def load_unet_state_dict(path: str, model_config):
  """Our params from a diffusers-layout weights file."""
  return params_from_state_dict(read_state_dict(path), model_config, source=path)
