"""Pruning procedures: one-shot, and iterative progressive soft pruning along a gradient flow.

The Python API's `gradflow_prune.prune(params, unet_config, images_uint8, keep=..., procedure=...)`
(`api.prune`) runs these on arrays.

One-shot (Diff-Pruning's protocol): score the dense model once, keep the top `keep_ratio` of every
channel group (per GroupNorm unit, `surgery.masks_from_scores`), remove, fine-tune for the whole
step budget.

Iterative (our reading of arXiv 2501.09464; docs/gradflow_prune.md): soft masks m in [0, 1] per
channel multiply the network's channels (`UNet(..., masks=m)`), and for k = 1..K:

    s_k  = sparsity_schedule(k, K, 1 - keep_ratio)                 # cubic (Zhu & Gupta)
    R    = removal scores of the criterion at (theta, m)           # GraSP: S = -theta * (H g)
    S^   = mean_g|dL/dm| * (R - mean_g R) / mean_g|R - mean_g R|   # per group g (`normalize`)
    E(m) = L(theta, m) - lam * sum_c S^_c (1 - m_c)                # + reward for removing high S
    n_flow Euler steps  m <- clip(m - eta * dE/dm / max|dE/dm|, 0, 1)   (eta halved on a rise)
    keep the top (1 - s_k) of every whole group by m (`rank_within`); the others decay:
      m_c <- gamma * m_c
    n_train denoising training steps of theta under m

then harden (per GroupNorm unit: the top keep_ratio of every unit -> 1, rest -> 0; the only place
the unit rule applies), remove physically, fine-tune.

Why rank within whole groups during the iterations: GroupNorm needs equal keep counts per unit
(`surgery.masks_from_scores`) only in the physically pruned network. Rounded per unit, small
units make the schedule collapse: with units of 3 channels, keep (1 - s_1) = 0.79 already rounds
to 2 of 3, the final count of keep 0.7, so iteration 1 fixes the keep set and later iterations
only fade it.
Ranked within a 24-channel group the count falls 19 -> 17 -> 17 (K = 3) and the set can change.
`rank_within="unit"` and `normalize="all"` reproduce the earlier behaviour.

Why normalise: dE/dm's scale depends on the loss and the width. Dividing the Euler step by its
largest entry (one scalar per step: a change of time variable of the same flow) makes `eta` the
largest mask change per step (halved whenever a step would raise E); scaling S^ to dL/dm's magnitude
makes `lam` a relative weight (lam = 1: the criterion's push equals the loss gradient's on
average). Centring S^ keeps the criterion from pushing every mask down at once; the budget
does that.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradflow_prune import surgery
from shared import masks as mask_schedules

PROCEDURES = ("oneshot", "iterative")
Masks = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class FlowConfig:
  """Knobs of the iterative procedure (each a config field; see configs/gradflow_prune.py)."""

  iterations: int = 4  # K
  n_flow: int = 5  # Euler steps per iteration
  eta: float = 0.05  # mask units per Euler step
  lam: float = 1.0  # weight of the criterion term (0: loss-only flow)
  gamma: float = 0.5  # soft decay of the non-kept per iteration (0: hard cut)
  n_train: int = 10  # denoising training steps per iteration
  power: float = 3.0  # sparsity schedule exponent
  rank_within: str = "group"  # keep set per iteration: per whole "group" | per GroupNorm "unit"
  normalize: str = "group"  # centre and scale the criterion term per "group" | over "all"


RANK_WITHIN = ("group", "unit")
NORMALIZE = ("group", "all")


def _flat(masks: Mapping[str, Any], names) -> np.ndarray:
  return np.concatenate([np.asarray(masks[n], np.float64).reshape(-1) for n in names])


def _unflat(vec: np.ndarray, groups: surgery.Groups) -> Masks:
  out, i = {}, 0
  for g in groups:
    out[g.name] = vec[i : i + g.size].astype(np.float32)
    i += g.size
  return out


def normalized_removal(removal: Mapping[str, Any], groups: surgery.Groups, scale: float) -> Masks:
  """S^ = scale * (R - mean R) / mean|R - mean R| over all channels of all groups."""
  r = _flat(removal, groups.names)
  r = r - r.mean()
  r = r / max(np.abs(r).mean(), 1e-30) * scale
  return _unflat(r, groups)


def normalized_removal_per_group(
  removal: Mapping[str, Any], groups: surgery.Groups, dl_dm: Mapping[str, Any]
) -> Masks:
  """S^_g = mean|dL/dm_g| * (R_g - mean R_g) / mean|R_g - mean R_g|, within each group g.

  Within a group the criterion's push then averages the loss gradient's there (lam = 1), whatever
  the criterion's scale in other groups (GraSP's products span orders of magnitude across depth).
  """
  out = {}
  for g in groups:
    r = np.asarray(removal[g.name], np.float64).reshape(-1)
    r = r - r.mean()
    scale = float(np.abs(np.asarray(dl_dm[g.name], np.float64)).mean())
    out[g.name] = (r / max(np.abs(r).mean(), 1e-30) * scale).astype(np.float32)
  return out


def energy(loss: float, masks: Mapping[str, Any], s_hat: Mapping[str, Any], lam: float) -> float:
  """E(m) = L(theta, m) - lam * sum_c S^_c (1 - m_c)."""
  names = list(s_hat)
  return float(loss) - lam * float(np.sum(_flat(s_hat, names) * (1.0 - _flat(masks, names))))


def flow(
  masks: Mapping[str, Any],
  grad_fn: Callable,
  params,
  batch,
  s_hat: Mapping[str, Any],
  groups: surgery.Groups,
  *,
  lam: float,
  eta: float,
  n_flow: int,
) -> tuple[Masks, list[float]]:
  """n_flow projected Euler steps of dm/dt = -dE/dm on one batch; returns (masks, E per step).

  Step-size control: a step that would raise E is rejected and eta halved (the flow's energy
  never increases; each step costs one gradient evaluation, accepted or not). The E list has
  n_flow + 1 entries: at the start and after each step.
  """
  x0, t_B, noise = batch
  s_vec = _flat(s_hat, groups.names)
  m = _flat(masks, groups.names)
  loss, grads = grad_fn(params, _unflat(m, groups), x0, t_B, noise)
  e = energy(loss, _unflat(m, groups), s_hat, lam)
  energies = [e]
  for _ in range(n_flow):
    d = _flat(jax.device_get(grads), groups.names) + lam * s_vec
    proposal = np.clip(m - eta * d / max(np.abs(d).max(), 1e-30), 0.0, 1.0)
    loss_p, grads_p = grad_fn(params, _unflat(proposal, groups), x0, t_B, noise)
    e_p = energy(loss_p, _unflat(proposal, groups), s_hat, lam)
    if e_p <= e:
      m, grads, e = proposal, grads_p, e_p
    else:
      eta *= 0.5
    energies.append(e)
  return _unflat(m, groups), energies


def keep_per_group(groups: surgery.Groups, masks: Mapping[str, Any], keep_ratio: float,
                   tie_break) -> Masks:  # fmt: skip
  """Binary masks keeping the round(keep_ratio * size) (>= 1) highest of every whole group (ties
  by `tie_break`, then by position); no per-unit count."""
  out = {}
  for g in groups:
    m = np.asarray(masks[g.name], np.float64).reshape(-1)
    q = int(min(g.size, max(1, np.floor(keep_ratio * g.size + 0.5))))
    tb = np.zeros(g.size) if tie_break is None else np.asarray(tie_break[g.name]).reshape(-1)
    order = np.lexsort((np.arange(g.size), -tb, -m))
    keep = np.zeros(g.size, np.float32)
    keep[order[:q]] = 1.0
    out[g.name] = keep
  return out


def decay_nonkept(
  groups: surgery.Groups, masks: Mapping[str, Any], keep_ratio: float, gamma: float, tie_break,
  within: str = "group",
) -> tuple[Masks, Masks]:  # fmt: skip
  """Keeps the top keep_ratio by mask value (per whole group, or per GroupNorm unit with
  within="unit"); multiplies the others by gamma.

  Returns (new soft masks, the binary keep set).
  """
  if within == "group":
    keep = keep_per_group(groups, masks, keep_ratio, tie_break)
  elif within == "unit":
    keep = surgery.masks_from_scores(groups, masks, keep_ratio, tie_break=tie_break)
  else:
    raise ValueError(f"rank_within={within!r}; known: {', '.join(RANK_WITHIN)}")
  soft = {k: np.where(keep[k] > 0, masks[k], gamma * np.asarray(masks[k])) for k in keep}
  return {k: v.astype(np.float32) for k, v in soft.items()}, keep


def harden(groups: surgery.Groups, masks: Mapping[str, Any], keep_ratio: float, tie_break) -> Masks:
  """Binary masks: the top keep_ratio by mask value (ties by `tie_break`)."""
  return surgery.masks_from_scores(groups, masks, keep_ratio, tie_break=tie_break)


def budget_sparsity(k: int, iterations: int, final: float, power: float) -> float:
  """s_k from shared.masks.sparsity_schedule (cubic by default)."""
  return float(mask_schedules.sparsity_schedule(k, iterations, final, power))


def iterative(
  *,
  groups: surgery.Groups,
  criterion: str,
  state,
  params_of: Callable[[Any], Any],
  score: Callable[[str, Any, Masks, int], tuple[dict, dict]],
  removal: Callable[[str, dict], dict],
  grad_fn: Callable,
  flow_batch: Callable[[int], tuple],
  train: Callable[[Any, Masks, int], Any],
  keep_ratio: float,
  cfg: FlowConfig,
  start: int = 0,
  masks: Masks | None = None,
  on_iteration: Callable[[int, Any, Masks, dict], None] | None = None,
) -> tuple[Masks, Any, list[dict]]:
  """Iterative progressive soft pruning (module doc). Resumable: pass `start` (iterations done)
  with the `state` and `masks` saved by `on_iteration` after that iteration.

  Args:
    groups: the dense model's channel groups.
    criterion: a `criteria.CRITERIA` name.
    state: opaque training state; `params_of(state)` gives the dense parameters.
    score: (criterion, params, masks, k) -> (importance, info) at the current soft masks.
    removal: (criterion, importance) -> removal scores R (higher = remove first).
    grad_fn: (params, masks, x0, t_B, noise) -> (loss, dL/dmasks), e.g. `Scorer.mask_grads`.
    flow_batch: k -> (x0, t_B, noise), the fixed batch of iteration k's flow.
    train: (state, masks, k) -> state after cfg.n_train denoising steps under `masks`.
    keep_ratio: the final fraction of channels kept.
    cfg: the flow's knobs.
    on_iteration: called after each iteration with (k, state, masks, info), e.g. to checkpoint.

  Returns:
    (hard masks, final state, per-iteration info).
  """
  final = 1.0 - keep_ratio
  m = groups.ones() if masks is None else {k: np.asarray(v, np.float32) for k, v in masks.items()}
  history = []
  importance = None
  previous = groups.ones() if start == 0 else None  # the keep set before iteration k
  for k in range(start + 1, cfg.iterations + 1):
    params = params_of(state)
    s_k = budget_sparsity(k, cfg.iterations, final, cfg.power)
    importance, info = score(criterion, params, m, k)
    batch = flow_batch(k)
    _, dl_dm = grad_fn(params, m, *batch)
    dl_dm = jax.device_get(dl_dm)
    if cfg.normalize == "group":
      s_hat = normalized_removal_per_group(removal(criterion, importance), groups, dl_dm)
    elif cfg.normalize == "all":
      scale = float(np.abs(_flat(dl_dm, groups.names)).mean())
      s_hat = normalized_removal(removal(criterion, importance), groups, scale)
    else:
      raise ValueError(f"normalize={cfg.normalize!r}; known: {', '.join(NORMALIZE)}")
    m, energies = flow(
      m, grad_fn, params, batch, s_hat, groups, lam=cfg.lam, eta=cfg.eta, n_flow=cfg.n_flow
    )
    m, keep = decay_nonkept(groups, m, 1.0 - s_k, cfg.gamma, importance, within=cfg.rank_within)
    state = train(state, m, k)
    keep_vec = _flat(keep, groups.names) > 0
    mean_kept = float(np.mean(_flat(m, groups.names)[keep_vec]))
    if previous is not None:  # how the keep set moved: dropped from it, (re-)entered it
      before = _flat(previous, groups.names) > 0
      moved = {
        "dropped": int(np.sum(before & ~keep_vec)),
        "entered": int(np.sum(~before & keep_vec)),
      }
    else:
      moved = {}
    previous = keep
    row = {
      "iteration": k,
      "sparsity": s_k,
      "kept": int(keep_vec.sum()),
      **moved,
      "energy_start": energies[0],
      "energy_end": energies[-1],
      "mean_mask_kept": mean_kept,
      "mean_mask": float(_flat(m, groups.names).mean()),
      **{f"score_{a}": b for a, b in info.items() if isinstance(b, int | float)},
    }
    history.append(row)
    if on_iteration is not None:
      on_iteration(k, state, m, row)
  if importance is None:  # resumed after the last iteration: rank by the masks alone
    importance = {g.name: np.zeros(g.size) for g in groups}
  return harden(groups, m, keep_ratio, importance), state, history


def removal_from_importance(criterion: str, importance: Mapping[str, Any]) -> dict:
  """R = -importance (for grasp this is S = -theta * (H g) itself)."""
  del criterion
  return {k: -np.asarray(v, np.float64) for k, v in importance.items()}


def soft_masks_as_jnp(masks: Mapping[str, Any]) -> dict[str, jax.Array]:
  return {k: jnp.asarray(v, jnp.float32) for k, v in masks.items()}
