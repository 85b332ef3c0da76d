"""The DDPM U-Net's channel groups and order of operations, shared by the module and pruning code.

A `Layout` is pure Python (no tracing): the groups (`stream`, `inner`, `attn`, `temb`; see the
`shared.models.unet` docstring), the ops of the forward pass in order, and every group's actual
width. `param_slices` says which parameter axes each group's channels index (what physical pruning
slices); `norm_reads` lists every GroupNorm with the groups it normalises (what the per-unit
GroupNorm rule applies to). `shared.models.unet` re-exports every name here.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from shared.errors import ConfigError

if TYPE_CHECKING:
  from shared.models.unet import UNet


@dataclasses.dataclass(frozen=True)
class Group:
  """A set of channels kept or removed together. `base` is its width in the unpruned model."""

  name: str
  kind: str  # stream | inner | attn | temb
  base: int


@dataclasses.dataclass(frozen=True)
class Op:
  """One step of the forward pass.

  kind: conv_in | res | attn | down | up | out. `inputs` are the groups concatenated into the op
  (two for an up-path ResBlock: the running stream, then the popped skip); `output` the group it
  writes; `inner` the ResBlock's or attention's own group; `push` puts the output on the skip stack.
  """

  kind: str
  name: str
  inputs: tuple[str, ...]
  output: str | None
  inner: str | None = None
  shortcut: bool = False
  push: bool = False
  resolution: int = 0


@dataclasses.dataclass(frozen=True)
class Layout:
  groups: dict[str, Group]
  ops: tuple[Op, ...]
  widths: dict[str, int]  # actual width of every group (base unless overridden)

  def width(self, group: str) -> int:
    return self.widths[group]


def layout(model: UNet) -> Layout:
  """The channel groups and ops of `model`'s architecture (pure Python, no tracing)."""
  ch, mult = model.ch, tuple(model.ch_mult)
  groups: dict[str, Group] = {}
  ops: list[Op] = []

  def group(name, kind, base):
    groups[name] = Group(name, kind, base)
    return name

  group("temb.hidden", "temb", 4 * ch)
  group("temb.out", "temb", 4 * ch)
  cur = group("conv_in.out", "stream", ch)
  ops.append(Op("conv_in", "conv_in", (), cur, push=True, resolution=model.resolution))
  stack = [cur]
  res = model.resolution

  def res_block(name, inputs, out_base):
    in_base = sum(groups[g].base for g in inputs)
    shortcut = in_base != out_base
    out = group(f"{name}.out", "stream", out_base) if shortcut else inputs[0]
    inner = group(f"{name}.inner", "inner", out_base)
    ops.append(Op("res", name, tuple(inputs), out, inner, shortcut, resolution=res))
    return out

  def attn_block(name, stream):
    inner = group(f"{name}.qkv", "attn", groups[stream].base)
    ops.append(Op("attn", name, (stream,), stream, inner, resolution=res))

  for i, m in enumerate(mult):
    for j in range(model.num_res_blocks):
      cur = res_block(f"down_{i}_res_{j}", (cur,), ch * m)
      if res in model.attn_resolutions:
        attn_block(f"down_{i}_attn_{j}", cur)
      ops[-1] = dataclasses.replace(ops[-1], push=True)
      stack.append(cur)
    if i != len(mult) - 1:
      name = f"down_{i}_downsample"
      new = group(f"{name}.out", "stream", groups[cur].base)
      ops.append(Op("down", name, (cur,), new, push=True, resolution=res))
      cur, res = new, res // 2
      stack.append(cur)

  cur = res_block("mid_res_0", (cur,), groups[cur].base)
  attn_block("mid_attn", cur)
  cur = res_block("mid_res_1", (cur,), groups[cur].base)

  for i in reversed(range(len(mult))):
    for j in range(model.num_res_blocks + 1):
      cur = res_block(f"up_{i}_res_{j}", (cur, stack.pop()), ch * mult[i])
      if res in model.attn_resolutions:
        attn_block(f"up_{i}_attn_{j}", cur)
    if i != 0:
      name = f"up_{i}_upsample"
      new = group(f"{name}.out", "stream", groups[cur].base)
      res *= 2
      ops.append(Op("up", name, (cur,), new, resolution=res))
      cur = new
  ops.append(Op("out", "out", (cur,), None, resolution=res))
  assert not stack, stack

  overrides = dict(model.widths)
  unknown = sorted(set(overrides) - set(groups))
  if unknown:
    raise ConfigError(f"UNet.widths names unknown channel groups: {', '.join(unknown[:5])}")
  widths = {name: int(overrides.get(name, g.base)) for name, g in groups.items()}
  bad = {k: v for k, v in widths.items() if v < 1}
  if bad:
    raise ConfigError(f"UNet.widths must be positive: {bad}")
  return Layout(groups, tuple(ops), widths)


@dataclasses.dataclass(frozen=True)
class Slice:
  """Axis `axis` of the parameter at `path` holds group channels from `offset` on."""

  path: tuple[str, ...]
  axis: int
  offset: int


@dataclasses.dataclass(frozen=True)
class NormRead:
  """A GroupNorm (parameters under `path`) over the concatenation of `groups`."""

  path: tuple[str, ...]
  groups: tuple[str, ...]


def param_slices(lay: Layout) -> dict[str, list[Slice]]:
  """For every group, the parameter axes indexed by its channels (offsets in the actual widths).

  Kernels: conv [kh, kw, in, out], dense [in, out]; biases and GroupNorm scale / bias [C].
  """
  out: dict[str, list[Slice]] = {g: [] for g in lay.groups}
  w = lay.width

  def produce(path, group, kernel_axis):  # a layer writing `group`: kernel out-axis and bias
    out[group] += [Slice((*path, "kernel"), kernel_axis, 0), Slice((*path, "bias"), 0, 0)]

  def consume(path, groups, kernel_axis):  # a layer reading the concatenation of `groups`
    offset = 0
    for g in groups:
      out[g].append(Slice((*path, "kernel"), kernel_axis, offset))
      offset += w(g)

  def norm(path, groups):
    offset = 0
    for g in groups:
      out[g] += [Slice((*path, "scale"), 0, offset), Slice((*path, "bias"), 0, offset)]
      offset += w(g)

  produce(("temb_dense0",), "temb.hidden", 1)
  consume(("temb_dense1",), ("temb.hidden",), 0)
  produce(("temb_dense1",), "temb.out", 1)
  for op in lay.ops:
    n = op.name
    if op.kind == "conv_in":
      produce((n,), op.output, 3)
    elif op.kind == "res":
      norm((n, "norm1"), op.inputs)
      consume((n, "conv1"), op.inputs, 2)
      produce((n, "conv1"), op.inner, 3)
      consume((n, "temb_proj"), ("temb.out",), 0)
      produce((n, "temb_proj"), op.inner, 1)
      norm((n, "norm2"), (op.inner,))
      consume((n, "conv2"), (op.inner,), 2)
      produce((n, "conv2"), op.output, 3)
      if op.shortcut:
        consume((n, "shortcut"), op.inputs, 2)
        produce((n, "shortcut"), op.output, 3)
    elif op.kind == "attn":
      norm((n, "norm"), op.inputs)
      for p in ("q", "k", "v"):
        consume((n, p), op.inputs, 0)
        produce((n, p), op.inner, 1)
      consume((n, "proj"), (op.inner,), 0)
      produce((n, "proj"), op.output, 1)
    elif op.kind in ("down", "up"):
      consume((n,), op.inputs, 2)
      produce((n,), op.output, 3)
    elif op.kind == "out":
      norm(("norm_out",), op.inputs)
      consume(("conv_out",), op.inputs, 2)
  return out


def norm_reads(lay: Layout) -> list[NormRead]:
  """Every GroupNorm and the groups it normalises (concatenated, in order)."""
  reads = []
  for op in lay.ops:
    if op.kind == "res":
      reads += [NormRead((op.name, "norm1"), op.inputs), NormRead((op.name, "norm2"), (op.inner,))]
    elif op.kind == "attn":
      reads.append(NormRead((op.name, "norm"), op.inputs))
    elif op.kind == "out":
      reads.append(NormRead(("norm_out",), op.inputs))
  return reads
