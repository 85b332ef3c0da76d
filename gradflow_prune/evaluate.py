"""Evaluation of (pruned) diffusion U-Nets: FD, SSIM to the teacher, params, MACs, latency, figures.

- FD: Frechet distance between features of generated samples and of the data (shared.fd:
  the in-repo classifier trained on the embedded data set by default, FID Inception-v3 when its
  weights are supplied).
- SSIM to the teacher (Diff-Pruning's consistency measure): the pruned and the pre-trained model
  sample from the *same* initial noise with deterministic DDIM; mean `shared.metrics.ssim` over
  pairs, on [0, 1] images.
- MACs: counted from the model's traced forward pass (`jax.make_jaxpr`), summing the
  multiply-accumulates of every `conv_general_dilated` and `dot_general` (convolutions, dense
  layers and the attention matmuls), for one image at one timestep. The DDPM CIFAR-10 U-Net gives
  6.22G (6.05G without the attention matmuls, which thop-style counters such as Torch-Pruning's
  skip; Diff-Pruning reports 6.1G). XLA's CPU cost analysis is offered as a cross-check
  (`xla_flops`); on GPUs it under-counts library GEMMs, so it is not the primary number.
- Latency: wall time of the jitted DDIM sampler of the physically pruned model (compiled first,
  then the best of `repeats`), on whatever device runs it.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from shared.models import unet


def _sub_jaxprs(params):
  """Jaxprs nested in an equation's params (pjit, scan, cond, custom_jvp...), by duck typing:
  a Jaxpr has `.eqns`, a ClosedJaxpr has `.jaxpr.eqns` (no private JAX imports)."""
  for value in params.values():
    for v in value if isinstance(value, tuple | list) else (value,):
      if hasattr(v, "eqns"):
        yield v
      elif hasattr(getattr(v, "jaxpr", None), "eqns"):
        yield v.jaxpr


def _jaxpr_macs(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (contract_lhs, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract_lhs)
    elif name == "conv_general_dilated":
      spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, spatial...)
      rhs = eqn.invars[1].aval.shape
      per_output = rhs[spec[1]] * math.prod(rhs[d] for d in spec[2:])
      total += math.prod(eqn.outvars[0].aval.shape) * per_output
    else:
      repeat = eqn.params.get("length", 1) if name == "scan" else 1
      total += repeat * sum(_jaxpr_macs(sub) for sub in _sub_jaxprs(eqn.params))
  return total


def count_macs(fn: Callable, *args) -> int:
  """Multiply-accumulates of conv and dot ops in `fn(*args)` (args may be ShapeDtypeStructs)."""
  return _jaxpr_macs(jax.make_jaxpr(fn)(*args).jaxpr)


def _abstract_inputs(model: unet.UNet):
  x = jax.ShapeDtypeStruct((1, model.resolution, model.resolution, model.in_channels), jnp.float32)
  return x, jax.ShapeDtypeStruct((1,), jnp.int32)


def unet_macs(model_config) -> int:
  """MACs of one forward pass of the U-Net for one image (no compilation: traced only)."""
  model = (
    model_config if isinstance(model_config, unet.UNet) else unet.from_config_dict(model_config)
  )
  x, t = _abstract_inputs(model)
  return count_macs(
    lambda p, x, t: model.apply({"params": p}, x, t), unet.abstract_params(model), x, t
  )


def xla_flops(model_config) -> float:
  """FLOPs of one forward pass from XLA's cost analysis of the program compiled for this backend."""
  model = (
    model_config if isinstance(model_config, unet.UNet) else unet.from_config_dict(model_config)
  )
  x, t = _abstract_inputs(model)
  fn = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t))
  cost = fn.lower(unet.abstract_params(model), x, t).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  return float(cost["flops"])


def measure_latency(fn: Callable, *args, repeats: int = 3) -> float:
  """Best (minimum) wall seconds of `fn(*args)` over `repeats`, after one warm-up (compilation)
  call. The minimum, as `timeit` recommends: on a shared machine the other numbers measure the
  neighbours."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(max(repeats, 1)):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return min(times)


def ssim_to_teacher(samples01, teacher01) -> float:
  """Mean SSIM between paired samples in [0, 1] (images smaller than 11 px are upsampled)."""
  from shared import metrics

  a, b = jnp.asarray(samples01, jnp.float32), jnp.asarray(teacher01, jnp.float32)
  if min(a.shape[1:3]) < 11:  # the 11x11 window needs room (only the 8x8 `digits` test set)
    size = (a.shape[0], 16, 16, a.shape[-1])
    a, b = jax.image.resize(a, size, "nearest"), jax.image.resize(b, size, "nearest")
  return float(jnp.mean(metrics.ssim(a, b)))


def save_grid(images01, path: str, cols: int = 8, title: str | None = None) -> None:
  """A PNG grid of images in [0, 1] (NHWC, 1 or 3 channels)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  images = np.clip(np.asarray(images01, np.float32), 0, 1)
  n, h, w, c = images.shape
  cols = min(cols, n)
  rows = math.ceil(n / cols)
  grid = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1, c), np.float32)
  for i, im in enumerate(images):
    r, k = divmod(i, cols)
    grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + k * (w + 1) : 1 + k * (w + 1) + w] = im
  fig = plt.figure(figsize=(cols * 0.6 + 0.4, rows * 0.6 + (0.6 if title else 0.2)))
  ax = fig.add_axes((0, 0, 1, 0.9 if title else 1))
  ax.imshow(grid[..., 0] if c == 1 else grid, cmap="gray" if c == 1 else None, vmin=0, vmax=1)
  ax.axis("off")
  if title:
    fig.suptitle(title, fontsize=8)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=150)
  plt.close(fig)


def plot_fd_vs_macs(rows: Sequence[dict], path: str, teacher: dict | None = None) -> None:
  """FD against MACs: one line per (criterion, procedure) over the keep ratios; mean +- std over
  seeds; the teacher as a star and a dashed line."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  by_label: dict[str, dict[float, list[float]]] = {}
  for r in rows:
    label = f"{r['criterion']} / {r['procedure']}"
    by_label.setdefault(label, {}).setdefault(float(r["macs"]), []).append(float(r["fd"]))
  markers = "o^sDvP*Xh<>"
  for i, (label, points) in enumerate(sorted(by_label.items())):
    macs = sorted(points)
    means = [np.mean(points[m]) for m in macs]
    stds = [np.std(points[m]) for m in macs]
    ax.errorbar(
      np.array(macs) / 1e6, means, yerr=stds if any(stds) else None, fmt=markers[i % 11] + "-",
      label=label, capsize=3, lw=0.8,
    )  # fmt: skip
  if teacher:
    ax.axhline(teacher["fd"], color="k", ls="--", lw=1, label="teacher")
    ax.scatter([teacher["macs"] / 1e6], [teacher["fd"]], color="k", marker="*", s=80)
  ax.set_xlabel("MACs per forward pass (M)")
  ax.set_ylabel("FD to data (lower is better)")
  ax.legend(fontsize=7, ncol=2)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=150)
  plt.close(fig)


def plot_convergence(curves: dict[str, dict], path: str, teacher: dict | None = None) -> None:
  """FD and SSIM to the teacher against fine-tune steps, one line per arm (mean over seeds).

  Args:
    curves: arm label -> {step (str): {"fd", "ssim", ...}} (`report.mean_curve`).
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax_fd, ax_ssim) = plt.subplots(1, 2, figsize=(10, 4))
  markers = "o^sDvP*Xh<>"
  for i, (label, curve) in enumerate(sorted(curves.items())):
    steps = sorted(curve, key=int)
    x = [int(s) for s in steps]
    kw = dict(marker=markers[i % 11], lw=0.8, ms=3, label=label)
    ax_fd.plot(x, [curve[s]["fd"] for s in steps], **kw)
    ax_ssim.plot(x, [curve[s]["ssim"] for s in steps], **kw)
  if teacher:
    ax_fd.axhline(teacher["fd"], color="k", ls="--", lw=1, label="teacher")
  ax_fd.set_ylabel("FD to data (lower is better)")
  ax_ssim.set_ylabel("SSIM to the teacher's samples")
  for ax in (ax_fd, ax_ssim):
    ax.set_xlabel("fine-tune step")
    ax.grid(alpha=0.3)
  ax_fd.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=150)
  plt.close(fig)
