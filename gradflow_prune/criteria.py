"""Channel importance criteria for the U-Net's channel groups (higher = keep).

Per-parameter saliencies are summed, per channel, over every parameter entry that belongs to the
channel (`surgery.channel_reduce`: the producing layers' output slices, the consuming layers'
input slices, GroupNorm scales and biases), so each channel group gets a [width] score vector.

- random:     U(0, 1) per channel.
- magnitude:  sqrt(sum w^2) over the channel's parameters (Torch-Pruning's MagnitudeImportance,
              p = 2, as Diff-Pruning's `magnitude` baseline).
- taylor:     Diff-Pruning's first-order Taylor importance sum |w * G|, G = sum_t dL_t/dw the
              gradient accumulated over timesteps t = 0, stride, 2 stride, ... on one batch with
              fixed noise, stopping after the first t whose loss L_t < thr * max_{s <= t} L_s
              (`ddpm_prune.py --pruner diff-pruning --thr 0.05`: the early, informative steps).
              thr = 0 uses every timestep of the sweep (Diff-Pruning's plain `taylor`).
- grasp:      the gradient-flow criterion S = -theta * (H g) (GraSP, Wang et al. 2020),
              g = dL/dtheta, H g = jax.jvp(jax.grad(L), (theta,), (g,)) -- a Hessian-vector
              product, never a Hessian. Removing weight i (delta = -theta_i) changes ||g||^2 by
              about 2 delta_i (H g)_i = 2 S_i, so a large S_i means removal *raises* the gradient
              norm (the pruned net keeps training fast): prune high S, keep low S.
              Importance = -S; `Scorer.grasp_removal` returns S itself (the iterative energy's).
              Two protocols (`prune.grasp_protocol`): "sweep" (default) scores the same loss
              as taylor -- L = sum_t L_t over the same batch, fixed noise and timesteps (the
              sweep and its stop) -- so g = sum_t g_t and H g = sum_t H_t g; "random_t" (the
              earlier behaviour) averages -theta * (H_b g_b) over `grasp_batches` batches with
              random timesteps.

All losses are the DDPM eps-MSE of the masked model (`masks` in [0, 1] per channel group), so the
same code scores the dense teacher (all-ones masks) and a softly pruned network mid-flow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradflow_prune import diffusion, surgery
from shared.errors import ConfigError

CRITERIA = ("random", "magnitude", "taylor", "grasp")
GRASP_PROTOCOLS = ("sweep", "random_t")
Scores = dict[str, np.ndarray]


def masked_loss(model, sched: diffusion.Schedule) -> Callable:
  """`loss(params, masks, x0, t_B, noise) -> eps-MSE` of the masked model (no dropout)."""

  def loss(params, masks, x0, t_B, noise):
    eps_fn = lambda x, t: model.apply({"params": params}, x, t, masks=masks)
    return diffusion.eps_mse(eps_fn, sched, x0, t_B, noise)

  return loss


def hvp(loss: Callable, params, v, *args):
  """H v, H the Hessian of `loss(params, *args)` in params: forward-over-reverse (jvp of grad)."""
  return jax.jvp(lambda p: jax.grad(loss)(p, *args), (params,), (v,))[1]


def random_scores(groups: surgery.Groups, seed: int) -> Scores:
  rng = np.random.default_rng(seed)
  return {g.name: rng.uniform(size=g.size) for g in groups}


def magnitude_scores(groups: surgery.Groups, params) -> Scores:
  sq = surgery.channel_reduce(groups, jax.tree.map(np.square, _host(params)))
  return {k: np.sqrt(v) for k, v in sq.items()}


def _host(tree):
  """Host numpy copies: elementwise work on the host compiles nothing (one XLA program per shape
  otherwise), and jitted functions then always see the same kind of input."""
  return jax.tree.map(lambda a: np.asarray(a, np.float32), jax.device_get(tree))


class Scorer:
  """The jitted pieces criteria and the flow need for one model config (compiled once)."""

  def __init__(self, model, sched: diffusion.Schedule):
    self.model = model
    self.loss = masked_loss(model, sched)
    # One program for d/dparams (taylor) and d/dmasks (the flow): one compilation instead of two.
    self._grads = jax.jit(jax.value_and_grad(self.loss, argnums=(0, 1)))

    def grasp_terms(params, masks, x0, t_B, noise):
      g = jax.lax.stop_gradient(jax.grad(self.loss)(params, masks, x0, t_B, noise))
      hg = hvp(self.loss, params, g, masks, x0, t_B, noise)
      return jax.tree.map(lambda p, h: -p * h, params, hg)

    self._grasp = jax.jit(grasp_terms)
    self._hvp = jax.jit(lambda params, masks, x0, t_B, noise, v: hvp(
      self.loss, params, v, masks, x0, t_B, noise
    ))  # fmt: skip

  def grads(self, params, masks, x0, t_B, noise):
    """(loss, dL/dparams, dL/dmasks) on the host."""
    loss, (dp, dm) = self._grads(_host(params), _host(masks), x0, t_B, noise)
    return float(loss), _host(dp), _host(dm)

  def mask_grads(self, params, masks, x0, t_B, noise):
    """(loss, dL/dmasks): what the soft-mask flow follows."""
    loss, _, dm = self.grads(params, masks, x0, t_B, noise)
    return loss, dm

  def sweep_gradient(self, params, masks, x0, noise, timesteps: Iterable[int], thr: float):
    """G = sum_t dL_t/dtheta over Diff-Pruning's sweep (stop after the first t with
    L_t < thr * max L); returns (G, the timesteps used, info)."""
    params = _host(params)
    grad_sum = None
    loss_max, used, losses = 0.0, [], []
    for t in timesteps:
      t_B = jnp.full((x0.shape[0],), int(t), jnp.int32)
      loss, grads, _ = self.grads(params, masks, x0, t_B, noise)
      grad_sum = grads if grad_sum is None else jax.tree.map(np.add, grad_sum, grads)
      used.append(int(t))
      losses.append(loss)
      loss_max = max(loss_max, loss)
      if thr > 0 and loss < thr * loss_max:
        break
    if grad_sum is None:
      raise ConfigError("taylor / grasp criterion: the timestep sweep is empty")
    info = {
      "timesteps_used": len(used), "last_t": used[-1], "loss_max": loss_max,
      "loss_last": losses[-1],
    }  # fmt: skip
    return grad_sum, used, info

  def taylor(
    self,
    groups: surgery.Groups,
    params,
    masks,
    x0,
    noise,
    timesteps: Iterable[int],
    thr: float,
  ) -> tuple[Scores, dict[str, Any]]:
    """Diff-Pruning's Taylor importance with the loss-threshold stop; returns (scores, info)."""
    params = _host(params)
    grad_sum, _, info = self.sweep_gradient(params, masks, x0, noise, timesteps, thr)
    saliency = jax.tree.map(lambda p, g: np.abs(p * g), params, grad_sum)
    return surgery.channel_reduce(groups, saliency), info

  def grasp_sweep_removal(
    self, groups: surgery.Groups, params, masks, x0, noise, timesteps: Iterable[int], thr: float
  ) -> tuple[Scores, dict[str, Any]]:
    """S = -theta * (H g) of the sweep's loss L = sum_t L_t (taylor's batch, noise, timesteps):
    g = sum_t g_t, then H g = sum_t H_t g (one HVP per timestep used); returns (S per channel,
    info)."""
    params, masks = _host(params), _host(masks)
    g, used, info = self.sweep_gradient(params, masks, x0, noise, timesteps, thr)
    hg = None
    for t in used:
      t_B = jnp.full((x0.shape[0],), t, jnp.int32)
      h = _host(self._hvp(params, masks, x0, t_B, noise, g))
      hg = h if hg is None else jax.tree.map(np.add, hg, h)
    s = jax.tree.map(lambda p, h: -p * h, params, hg)
    return surgery.channel_reduce(groups, s), info

  def grasp_removal(self, groups: surgery.Groups, params, masks, batches) -> Scores:
    """S = -theta * (H g) summed per channel, averaged over `batches` of (x0, t_B, noise)."""
    params, masks = _host(params), _host(masks)
    total, n = None, 0
    for x0, t_B, noise in batches:
      s = _host(self._grasp(params, masks, x0, t_B, noise))
      total = s if total is None else jax.tree.map(np.add, total, s)
      n += 1
    return {k: v / n for k, v in surgery.channel_reduce(groups, total).items()}


def importance(
  criterion: str,
  groups: surgery.Groups,
  params,
  *,
  scorer: Scorer | None = None,
  masks: Mapping[str, Any] | None = None,
  taylor_batch=None,
  taylor_timesteps: Iterable[int] = (),
  taylor_thr: float = 0.05,
  grasp_batches=(),
  grasp_protocol: str = "random_t",
  seed: int = 0,
) -> tuple[Scores, dict[str, Any]]:
  """Per-channel importance (higher = keep) of `criterion`, and a small info dict.

  grasp_protocol "sweep" scores grasp on `taylor_batch` over `taylor_timesteps` (with taylor's
  stop); "random_t" on `grasp_batches`."""
  masks = groups.ones() if masks is None else masks
  if criterion == "random":
    return random_scores(groups, seed), {}
  if criterion == "magnitude":
    return magnitude_scores(groups, params), {}
  if criterion == "taylor":
    x0, noise = taylor_batch
    return scorer.taylor(groups, params, masks, x0, noise, taylor_timesteps, taylor_thr)
  if criterion == "grasp":
    if grasp_protocol == "sweep":
      x0, noise = taylor_batch
      s, info = scorer.grasp_sweep_removal(
        groups, params, masks, x0, noise, taylor_timesteps, taylor_thr
      )
      return {k: -v for k, v in s.items()}, info
    if grasp_protocol != "random_t":
      raise ConfigError(
        f"prune.grasp_protocol={grasp_protocol!r}; known: {', '.join(GRASP_PROTOCOLS)}"
      )
    s = scorer.grasp_removal(groups, params, masks, grasp_batches)
    return {k: -v for k, v in s.items()}, {}
  raise ConfigError(f"unknown pruning criterion {criterion!r}; known: {', '.join(CRITERIA)}")
