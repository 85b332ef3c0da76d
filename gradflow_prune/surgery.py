"""Structured pruning surgery for the DDPM U-Net: channel groups, masks, physical removal.

    groups = surgery.channel_groups(model_config)
    masks = surgery.masks_from_scores(groups, scores, keep_ratio)
    small_config, small_params = surgery.apply_masks(model_config, params, masks)

`model_config` is a `shared.models.unet` config dict (or a `UNet`). The groups come from the
network's layout (`unet.layout`): a ResBlock's inner channels (conv1-out, temb_proj-out, norm2,
conv2-in), residual streams (coupled by residual adds, 1x1 shortcuts, down / up-sampling convs and
the decoder's skip concatenations, which read a stream at the stream's own channel positions),
attention's q / k / v / proj, and the time-embedding MLP.

GroupNorm. A pruned GroupNorm with G groups splits its C' channels into G contiguous groups of C'/G,
so removal is exact only if every one of the G original groups keeps the same number of channels
(Diff-Pruning's rule: remove n/G channels from each group). A decoder GroupNorm reads a skip
concatenation whose group boundaries can fall inside a stream (e.g. 256 + 128 = 384 channels in 32
groups of 12: group 21 holds 4 channels of one stream and 8 of the other), so the constraint couples
streams. We split every GroupNorm-read group into *units* of u channels, u the gcd of all GroupNorm
group sizes, concatenation offsets and widths within the set of groups coupled through GroupNorms
(a *component*), and keep the same number q = round(keep_ratio * u) of channels in every unit of a
component. Then every GroupNorm group, a union of whole units, keeps the same count. Groups read by
no GroupNorm (attention q/k/v, the time MLP) are one unit. In the DDPM CIFAR-10 U-Net u = 4 for
every stream: keep ratio 0.7 (Diff-Pruning's ratio 0.3) gives 128 -> 96 and 256 -> 192.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from shared.models import unet

Masks = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class ChannelGroup:
  """A prunable set of channels: its width, unit (see module doc) and the parameters it indexes."""

  name: str
  kind: str  # stream | inner | attn | temb
  size: int
  unit: int
  component: int  # groups with the same component share GroupNorms (same keep count per unit)
  slices: tuple[unet.Slice, ...]


@dataclasses.dataclass(frozen=True)
class Groups:
  """All channel groups of a U-Net configuration, in layout order."""

  config: dict[str, Any]
  groups: dict[str, ChannelGroup]
  norms: tuple[unet.NormRead, ...]

  def __iter__(self):
    return iter(self.groups.values())

  def __len__(self):
    return len(self.groups)

  def __getitem__(self, name: str) -> ChannelGroup:
    return self.groups[name]

  @property
  def names(self) -> list[str]:
    return list(self.groups)

  def num_channels(self) -> int:
    return sum(g.size for g in self)

  def ones(self) -> Masks:
    return {g.name: np.ones(g.size, np.float32) for g in self}

  def keep_per_unit(self, name: str, keep_ratio: float) -> int:
    """Channels kept in each unit of group `name` at `keep_ratio` (at least 1)."""
    u = self.groups[name].unit
    return int(min(u, max(1, math.floor(keep_ratio * u + 0.5))))


def _as_model(model_config) -> unet.UNet:
  if isinstance(model_config, unet.UNet):
    return model_config
  return unet.from_config_dict(model_config)


def channel_groups(model_config) -> Groups:
  """The channel groups of a U-Net config (base or already pruned), with GroupNorm units."""
  model = _as_model(model_config)
  lay = unet.layout(model)
  slices = unet.param_slices(lay)
  norms = tuple(unet.norm_reads(lay))
  w = lay.width

  # Union-find over groups read by a common GroupNorm.
  parent = {g: g for g in lay.groups}

  def find(g):
    while parent[g] != g:
      parent[g] = parent[parent[g]]
      g = parent[g]
    return g

  for nr in norms:
    for g in nr.groups[1:]:
      parent[find(g)] = find(nr.groups[0])

  gcd: dict[str, int] = {}
  for nr in norms:
    total = sum(w(g) for g in nr.groups)
    root = find(nr.groups[0])
    numbers = [total // model.num_groups]
    offset = 0
    for g in nr.groups:
      numbers += [offset, w(g)]
      offset += w(g)
    gcd[root] = math.gcd(gcd.get(root, 0), *numbers)

  roots = list(dict.fromkeys(find(g) for g in lay.groups))
  out = {}
  for name, grp in lay.groups.items():
    root = find(name)
    unit = gcd.get(root, w(name))  # read by no GroupNorm: the whole group is one unit
    out[name] = ChannelGroup(name, grp.kind, w(name), unit, roots.index(root), tuple(slices[name]))
  return Groups(unet.config_dict(model), out, norms)


def masks_from_scores(
  groups: Groups, scores: Mapping[str, Any], keep_ratio: float, *, tie_break=None
) -> Masks:
  """Binary masks keeping, in every unit of every group, the q highest-scoring channels.

  Args:
    groups: from `channel_groups`.
    scores: group name -> [size] scores (higher = keep).
    keep_ratio: fraction of channels to keep, rounded per unit (see module doc); the same for every
      group, as Diff-Pruning's uniform per-layer ratio.
    tie_break: optional group name -> [size] secondary scores for equal primary scores.

  Returns:
    group name -> float32 [size] array of 0 / 1.
  """
  if not 0.0 < keep_ratio <= 1.0:
    raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
  masks = {}
  for g in groups:
    s = np.asarray(scores[g.name], np.float64).reshape(-1)
    if s.shape != (g.size,):
      raise ValueError(f"scores[{g.name!r}] has shape {s.shape}, expected ({g.size},)")
    q = groups.keep_per_unit(g.name, keep_ratio)
    s_U = s.reshape(-1, g.unit)
    if tie_break is not None:
      order = np.lexsort((-np.asarray(tie_break[g.name]).reshape(-1, g.unit), -s_U), axis=-1)
    else:
      order = np.argsort(-s_U, axis=-1, kind="stable")
    m_U = np.zeros_like(s_U, dtype=np.float32)
    np.put_along_axis(m_U, order[:, :q], 1.0, axis=-1)
    masks[g.name] = m_U.reshape(-1)
  return masks


def check_masks(groups: Groups, masks: Mapping[str, Any]) -> None:
  """Raises ValueError unless masks are 0/1, shaped right, and keep equal counts per unit."""
  per_component: dict[int, tuple[float, str]] = {}
  for g in groups:
    m = np.asarray(masks[g.name], np.float32).reshape(-1)
    if m.shape != (g.size,):
      raise ValueError(f"mask {g.name!r} has shape {m.shape}, expected ({g.size},)")
    if not np.all((m == 0) | (m == 1)):
      raise ValueError(f"mask {g.name!r} is not binary; harden it before surgery")
    counts = m.reshape(-1, g.unit).sum(-1)
    if counts.min() < 1 or counts.min() != counts.max():
      raise ValueError(
        f"mask {g.name!r} keeps {sorted(set(counts.astype(int).tolist()))} channels per unit of "
        f"{g.unit}; GroupNorm needs the same number (>= 1) in every unit"
      )
    frac = counts[0] / g.unit
    if g.component in per_component and per_component[g.component][0] != frac:
      other = per_component[g.component][1]
      raise ValueError(
        f"masks {g.name!r} and {other!r} share a GroupNorm but keep different fractions per unit"
      )
    per_component[g.component] = (frac, g.name)


def apply_masks(model_config, params, masks: Mapping[str, Any]):
  """Physically removes the masked-out channels.

  Args:
    model_config: the U-Net config dict (or `UNet`) that `params` belong to.
    params: its parameters (a nested dict of arrays).
    masks: group name -> 0/1 [size], satisfying `check_masks`.

  Returns:
    (small_config, small_params): a config dict with the kept widths in `widths` and parameters of
    exactly those shapes; `UNet` built from it computes what the big model computes with `masks`.
  """
  model = _as_model(model_config)
  groups = channel_groups(model)
  check_masks(groups, masks)
  kept = {g.name: np.flatnonzero(np.asarray(masks[g.name]) > 0.5) for g in groups}

  axes: dict[tuple[str, ...], dict[int, list[tuple[int, str]]]] = {}
  for g in groups:
    for s in g.slices:
      axes.setdefault(s.path, {}).setdefault(s.axis, []).append((s.offset, g.name))

  flat = traverse_util.flatten_dict(jax.device_get(params))
  missing = sorted("/".join(p) for p in axes if p not in flat)
  if missing:
    raise ValueError(f"params lack {missing[:3]} (do they belong to this config?)")
  new = {}
  for path, p in flat.items():
    p = np.asarray(p)
    for axis, segments in sorted(axes.get(path, {}).items()):
      segments.sort()
      expected = 0
      index = []
      for offset, name in segments:
        if offset != expected:
          raise ValueError(f"{'/'.join(path)} axis {axis}: channel groups do not tile it")
        index.append(offset + kept[name])
        expected = offset + groups[name].size
      if expected != p.shape[axis]:
        raise ValueError(
          f"{'/'.join(path)} has {p.shape[axis]} channels on axis {axis}, the config says "
          f"{expected} (params and config disagree)"
        )
      p = np.take(p, np.concatenate(index), axis=axis)
    new[path] = p

  base = {name: grp.base for name, grp in unet.layout(model).groups.items()}
  small = unet.config_dict(model)
  small["widths"] = {n: int(len(k)) for n, k in kept.items() if len(k) != base[n]}
  return small, traverse_util.unflatten_dict(new)


def channel_reduce(groups: Groups, tree, fn=np.sum) -> dict[str, np.ndarray]:
  """Per-channel reduction of a params-shaped tree: for each group and channel c, `fn` over every
  entry of every parameter slice that belongs to channel c (all other axes), summed over slices.

  E.g. `channel_reduce(groups, jax.tree.map(np.square, params))` is each channel's squared norm.
  """
  flat = traverse_util.flatten_dict(jax.device_get(tree))
  out = {}
  for g in groups:
    acc = np.zeros(g.size, np.float64)
    for s in g.slices:
      a = np.asarray(flat[s.path], np.float64)
      a = np.moveaxis(a, s.axis, 0)[s.offset : s.offset + g.size]
      acc += fn(a.reshape(g.size, -1), axis=1)
    out[g.name] = acc
  return out


def count_params(params) -> int:
  return unet.num_params(params)
