"""The DDPM U-Net (Ho et al. 2020, arXiv 2006.11239), with every prunable width set per layer.

Architecture (the CIFAR-10 model of the paper, the same as `google/ddpm-cifar10-32` in diffusers'
`UNet2DModel` layout and yang-song/score_sde `ddpm.py`): sinusoidal timestep embedding -> MLP
(ch -> 4ch -> 4ch); 3x3 conv_in; per resolution level `num_res_blocks` ResBlocks (GroupNorm, swish,
3x3 conv, + projected time embedding, GroupNorm, swish, dropout, 3x3 conv, 1x1 shortcut when the
width changes), single-head self-attention at `attn_resolutions`, 3x3 stride-2 conv downsampling;
middle ResBlock-attention-ResBlock; the mirrored up path with `num_res_blocks + 1` ResBlocks per
level fed by the skip concatenations and nearest-neighbour x2 + 3x3 conv upsampling; GroupNorm,
swish, 3x3 conv_out. `UNet()` with its defaults has 35,746,307 parameters.

Widths. Channels are organised in *channel groups* (see `layout`): each group is a set of channels
that must be kept or removed together, because every tensor carrying them has them at the same
positions. Four kinds: `stream` (channels tied by residual additions: a stream starts at conv_in,
a ResBlock whose width changes, a down- or upsampling conv, and is extended by identity ResBlocks
and attention), `inner` (a ResBlock's conv1-out / temb_proj-out / norm2 / conv2-in), `attn`
(attention q / k / v outputs and proj input) and `temb` (the time-embedding MLP's hidden and
output widths).
`UNet.widths` maps group names to widths, so a physically pruned network is this same module with
a smaller `widths`; `config_dict` / `from_config_dict` carry it through JSON next to a checkpoint.
The structure (which ResBlocks have a shortcut, the attention scale 1/sqrt(C)) is always that of
the unpruned base configuration, so a pruned model computes what the masked base model computes.

Masks. `__call__(..., masks={group: m_C})` multiplies each group's channels by m in [0, 1]: at the
output of every layer that *produces* the group (conv / dense outputs, bias included) and at the
output of every GroupNorm over it; GroupNorm statistics are weighted by m. Why there: with m in
{0, 1} a zero channel then (a) contributes nothing to any later conv / dense / attention logit,
(b) does not enter any GroupNorm's mean or variance, and (c) stays zero after GroupNorm's bias,
swish and upsampling; so the masked model equals the physically pruned one exactly (tested in
tests/test_surgery.py). With soft m the weighted statistics change continuously, which is what a
gradient flow on m needs. `masks=None` is the plain (unmasked, faster) network.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from shared.errors import ConfigError
from shared.models.unet_layout import (  # noqa: F401  (re-exported: pruning code reads them here)
  Group,
  Layout,
  NormRead,
  Op,
  Slice,
  layout,
  norm_reads,
  param_slices,
)

Dtype = Any
Masks = Mapping[str, jax.Array] | None


# The last layer of every residual branch, and conv_out, start at ~0 (DDPM's init_scale=0).
ZERO_INIT = ("conv2", "proj", "conv_out")


def _default_init(scale: float = 1.0):
  """DDPM's init: variance scaling, fan_avg, uniform; scale ~0 for the last layer of a residual."""
  return nn.initializers.variance_scaling(max(scale, 1e-10), "fan_avg", "uniform")


def timestep_embedding(t_B: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """DDPM's sinusoidal embedding: [sin(t w_i), cos(t w_i)], w_i = max_period^(-i / (dim/2 - 1))."""
  half = dim // 2
  freqs_H = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
  args_BxH = t_B.astype(jnp.float32)[:, None] * freqs_H[None]
  emb_BxD = jnp.concatenate([jnp.sin(args_BxH), jnp.cos(args_BxH)], axis=-1)
  if dim % 2:
    emb_BxD = jnp.pad(emb_BxD, ((0, 0), (0, 1)))
  return emb_BxD


# ----------------------------------------------------------------------------------------------
# Modules


def _mask(x, m):
  """x * m, multiplied in float32 and cast back to x's dtype: a soft mask value such as 0.996
  survives a bfloat16 forward pass (rounded to bfloat16 it would move by up to 2^-9, and the
  progressive schedule's small steps with it); the product is rounded once, as x itself is."""
  if m is None:
    return x
  return (x.astype(jnp.float32) * jnp.asarray(m, jnp.float32)).astype(x.dtype)


def _cat_masks(masks: Masks, groups: Sequence[str]):
  if masks is None:
    return None
  return jnp.concatenate([jnp.asarray(masks[g]) for g in groups], axis=0)


class GroupNorm(nn.Module):
  """GroupNorm over contiguous channel groups, statistics in float32, optionally channel-masked.

  With `mask_C`, each group's mean and variance are weighted by the mask (a channel with m = 0 is
  left out as if removed) and the output is multiplied by the mask. Parameters: scale, bias.
  """

  num_groups: int
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC, mask_C=None):
    b, h, w, c = x_BxHxWxC.shape
    g = self.num_groups
    if c % g:
      raise ConfigError(f"GroupNorm: {c} channels do not split into {g} groups")
    scale_C = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
    bias_C = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
    x_BxLxGxK = x_BxHxWxC.astype(jnp.float32).reshape(b, h * w, g, c // g)
    if mask_C is None:
      mean = x_BxLxGxK.mean(axis=(1, 3), keepdims=True)
      var = jnp.square(x_BxLxGxK - mean).mean(axis=(1, 3), keepdims=True)
    else:
      w_1x1xGxK = mask_C.astype(jnp.float32).reshape(1, 1, g, c // g)
      count = jnp.maximum(w_1x1xGxK.sum(axis=3, keepdims=True) * (h * w), 1e-12)
      mean = (x_BxLxGxK * w_1x1xGxK).sum(axis=(1, 3), keepdims=True) / count
      var = (jnp.square(x_BxLxGxK - mean) * w_1x1xGxK).sum(axis=(1, 3), keepdims=True) / count
    y_BxHxWxC = ((x_BxLxGxK - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(b, h, w, c)
    y_BxHxWxC = y_BxHxWxC * scale_C.astype(jnp.float32) + bias_C.astype(jnp.float32)
    if mask_C is not None:
      y_BxHxWxC = y_BxHxWxC * mask_C.astype(jnp.float32)
    return y_BxHxWxC.astype(self.dtype)


class ResBlock(nn.Module):
  """GN-swish-conv, + Dense(swish(temb)), GN-swish-dropout-conv, + (1x1-conv) shortcut."""

  width: int
  inner: int
  shortcut: bool
  num_groups: int
  dropout: float
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxI, temb_BxT, m_in, m_inner, m_out, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    conv = lambda f, k, name, scale=1.0: nn.Conv(
      f, (k, k), padding=k // 2, kernel_init=_default_init(scale), name=name, **kw
    )
    norm = lambda name: GroupNorm(self.num_groups, self.epsilon, name=name, **kw)
    h = nn.swish(norm("norm1")(x_BxHxWxI, m_in))
    h = conv(self.inner, 3, "conv1")(h)
    t = nn.Dense(self.inner, kernel_init=_default_init(), name="temb_proj", **kw)(
      nn.swish(temb_BxT)
    )
    h_BxHxWxF = _mask(h + t[:, None, None, :], m_inner)
    h_BxHxWxF = nn.swish(norm("norm2")(h_BxHxWxF, m_inner))
    h_BxHxWxF = nn.Dropout(self.dropout)(h_BxHxWxF, deterministic=not train)
    h_BxHxWxO = conv(self.width, 3, "conv2", scale=0.0)(h_BxHxWxF)
    if self.shortcut:
      return _mask(conv(self.width, 1, "shortcut")(x_BxHxWxI) + h_BxHxWxO, m_out)
    return x_BxHxWxI + _mask(h_BxHxWxO, m_out)


class AttnBlock(nn.Module):
  """Single-head self-attention over positions; q, k, v, proj are dense layers over channels."""

  inner: int
  scale: float  # 1 / sqrt(base width): fixed by the unpruned architecture
  num_groups: int
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC, m_stream, m_inner):
    b, hh, ww, c = x_BxHxWxC.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = GroupNorm(self.num_groups, self.epsilon, name="norm", **kw)(x_BxHxWxC, m_stream)
    h_BxLxC = h.reshape(b, hh * ww, c)
    qkv = [
      _mask(nn.Dense(self.inner, kernel_init=_default_init(), name=n, **kw)(h_BxLxC), m_inner)
      for n in ("q", "k", "v")
    ]
    q, k, v = (a[:, :, None, :] for a in qkv)  # one head: B x L x 1 x D
    o_BxLxD = jax.nn.dot_product_attention(q, k, v, scale=self.scale)[:, :, 0, :]
    o_BxLxC = nn.Dense(c, kernel_init=_default_init(0.0), name="proj", **kw)(o_BxLxD)
    return x_BxHxWxC + _mask(o_BxLxC.reshape(b, hh, ww, c), m_stream)


class UNet(nn.Module):
  """The DDPM U-Net: `apply(variables, x_BxHxWxC, t_B, masks=None, train=False) -> eps_BxHxWxC`.

  Attributes:
    ch, ch_mult, num_res_blocks, attn_resolutions, resolution: the architecture (DDPM CIFAR-10:
      128, (1, 2, 2, 2), 2, (16,), 32).
    in_channels, out_channels: image channels.
    dropout: in ResBlocks, when `train=True` (needs a 'dropout' rng).
    num_groups, norm_eps: GroupNorm (32 groups, eps 1e-6 as DDPM / diffusers).
    widths: ((group, width), ...) overrides of channel-group widths (a pruned model); see `layout`.
    dtype: compute dtype (GroupNorm statistics and the output are float32); params are float32.
  """

  ch: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  resolution: int = 32
  in_channels: int = 3
  out_channels: int = 3
  dropout: float = 0.1
  num_groups: int = 32
  norm_eps: float = 1e-6
  widths: Sequence[tuple[str, int]] = ()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC, t_B, masks: Masks = None, train: bool = False):
    lay = layout(self)
    w = lay.width
    m = (lambda g: None) if masks is None else (lambda g: jnp.asarray(masks[g]))
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm_kw = dict(num_groups=self.num_groups, epsilon=self.norm_eps, **kw)

    temb = timestep_embedding(t_B, self.ch)
    temb = nn.Dense(w("temb.hidden"), kernel_init=_default_init(), name="temb_dense0", **kw)(temb)
    temb = nn.swish(_mask(temb, m("temb.hidden")))
    temb = nn.Dense(w("temb.out"), kernel_init=_default_init(), name="temb_dense1", **kw)(temb)
    temb_BxT = _mask(temb, m("temb.out"))

    h = x_BxHxWxC.astype(self.dtype)
    skips = []
    for op in lay.ops:
      if op.kind == "conv_in":
        h = nn.Conv(
          w(op.output), (3, 3), padding=1, kernel_init=_default_init(), name=op.name, **kw
        )(h)
        h = _mask(h, m(op.output))
      elif op.kind == "res":
        if len(op.inputs) == 2:
          h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = ResBlock(
          w(op.output),
          w(op.inner),
          op.shortcut,
          dropout=self.dropout,
          name=op.name,
          **norm_kw,
        )(h, temb_BxT, _cat_masks(masks, op.inputs), m(op.inner), m(op.output), train)
      elif op.kind == "attn":
        scale = 1.0 / math.sqrt(lay.groups[op.inner].base)
        h = AttnBlock(w(op.inner), scale, name=op.name, **norm_kw)(h, m(op.output), m(op.inner))
      elif op.kind == "down":
        # Stride-2 3x3 conv with TF 'SAME' padding for even sizes: (0, 1) on each spatial axis
        # (DDPM's TF code; diffusers' `downsample_padding=0`).
        h = nn.Conv(
          w(op.output),
          (3, 3),
          strides=2,
          padding=((0, 1), (0, 1)),
          kernel_init=_default_init(),
          name=op.name,
          **kw,
        )(h)
        h = _mask(h, m(op.output))
      elif op.kind == "up":
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest x2 (cheap gradient)
        h = nn.Conv(
          w(op.output), (3, 3), padding=1, kernel_init=_default_init(), name=op.name, **kw
        )(h)
        h = _mask(h, m(op.output))
      elif op.kind == "out":
        h = nn.swish(GroupNorm(name="norm_out", **norm_kw)(h, _cat_masks(masks, op.inputs)))
        h = nn.Conv(
          self.out_channels,
          (3, 3),
          padding=1,
          kernel_init=_default_init(0.0),
          name="conv_out",
          **kw,
        )(h)
      if op.push:
        skips.append(h)
    return h.astype(jnp.float32)


# ----------------------------------------------------------------------------------------------
# Configs


# Named architectures. `cifar10` is the DDPM CIFAR-10 model (35.7M params); the smaller ones are
# for CPU runs on 32x32 (mnist5k padded) or 8x8 (digits) images.
PRESETS: dict[str, dict[str, Any]] = {
  "cifar10": dict(
    ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), resolution=32,
    in_channels=3, out_channels=3, dropout=0.1, num_groups=32,
  ),
  "small32": dict(
    ch=32, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(16,), resolution=32,
    in_channels=1, out_channels=1, dropout=0.1, num_groups=8,
  ),
  "tiny8": dict(
    ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), resolution=8,
    in_channels=1, out_channels=1, dropout=0.0, num_groups=2,
  ),
}  # fmt: skip

_CONFIG_FIELDS = (
  "ch",
  "ch_mult",
  "num_res_blocks",
  "attn_resolutions",
  "resolution",
  "in_channels",
  "out_channels",
  "dropout",
  "num_groups",
  "norm_eps",
  "widths",
)


def config_dict(model: UNet) -> dict[str, Any]:
  """The JSON-able architecture of `model` (widths as a dict; dtype is a run choice, not saved)."""
  out = {f: getattr(model, f) for f in _CONFIG_FIELDS}
  out["ch_mult"] = list(out["ch_mult"])
  out["attn_resolutions"] = list(out["attn_resolutions"])
  out["widths"] = dict(out["widths"])
  return out


def from_config_dict(cfg: Mapping[str, Any], dtype: Dtype = jnp.float32) -> UNet:
  """`UNet` from `config_dict` output (or a preset dict); unknown keys are a ConfigError."""
  unknown = sorted(set(cfg) - set(_CONFIG_FIELDS))
  if unknown:
    raise ConfigError(f"unknown U-Net config fields: {', '.join(unknown)}")
  kw = dict(cfg)
  for key in ("ch_mult", "attn_resolutions"):
    if key in kw:
      kw[key] = tuple(int(v) for v in kw[key])
  kw["widths"] = tuple(sorted((str(k), int(v)) for k, v in dict(kw.get("widths", {})).items()))
  model = UNet(**kw, dtype=dtype)
  layout(model)  # validates widths
  return model


def preset(name: str, **overrides) -> dict[str, Any]:
  """A named architecture as a config dict, with field overrides."""
  if name not in PRESETS:
    raise ConfigError(f"unknown U-Net preset {name!r}; known: {', '.join(PRESETS)}")
  return {**PRESETS[name], "norm_eps": 1e-6, "widths": {}, **overrides}


def num_params(params) -> int:
  return int(sum(np.prod(np.shape(p)) for p in jax.tree.leaves(params)))


def init_params(model: UNet, rng: jax.Array | int):
  """Float32 parameters of `model`, drawn on the host with DDPM's initialisation.

  The same distribution as `model.init` (variance scaling, fan_avg, uniform; ~0 for the last
  layer of every residual branch and conv_out; zero biases; unit GroupNorm scales) without
  compiling Flax's init, which takes tens of seconds on a busy CPU for an otherwise cheap step.
  """
  seed = rng if isinstance(rng, int) else int(jax.random.randint(rng, (), 0, 2**31 - 1))
  gen = np.random.default_rng(seed)

  def draw(path, leaf):
    names = [getattr(k, "key", str(k)) for k in path]
    shape = leaf.shape
    if names[-1] == "scale":
      return np.ones(shape, np.float32)
    if names[-1] == "bias":
      return np.zeros(shape, np.float32)
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    fan_avg = receptive * (shape[-2] + shape[-1]) / 2
    scale = 1e-10 if names[-2] in ZERO_INIT else 1.0
    limit = math.sqrt(3.0 * scale / fan_avg)
    return gen.uniform(-limit, limit, shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(
    lambda path, leaf: jnp.asarray(draw(path, leaf)), abstract_params(model)
  )


def abstract_params(model: UNet):
  """Parameter shapes without materialising anything (`jax.eval_shape`)."""
  x = jax.ShapeDtypeStruct((1, model.resolution, model.resolution, model.in_channels), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.int32)
  return jax.eval_shape(lambda k, x, t: model.init(k, x, t)["params"], jax.random.PRNGKey(0), x, t)
