"""The training loop and its steps; re-exports the core's pieces, so `train_lib.X` keeps working.

Pieces, each usable alone from a notebook:
  TrainState, make_optimizer, init_state    shared.train_state
  make_mesh / *_sharding, global_batch      shared.sharding
  Checkpointer                              shared.checkpoint (orbax: keep N, every K steps,
                                            resume, refuse corrupt; the data iterator beside)
  MetricWriter, read_metrics                shared.metric_writer
  Preempted                                 shared.preemption (all processes save one step)
  make_step             jit a pure `step(state, batch) -> (state, metrics)`, donated, sharded
  loss_step             the usual step built from a loss function
  train_loop            the loop: resume, step, log, progress bar, NaN guard, checkpoint, preemption
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding

from shared.checkpoint import Checkpointer
from shared.errors import DivergenceError
from shared.metric_writer import MetricWriter, read_metrics
from shared.preemption import Preempted, PreemptionWatch
from shared.sharding import (
  batch_sharding,
  global_batch,
  make_mesh,
  replicated,
  state_shardings,
)
from shared.train_state import (
  TrainState,
  compute_dtype,
  init_state,
  learning_rate_schedule,
  make_optimizer,
)

__all__ = [
  "Batch",
  "Checkpointer",
  "LossFn",
  "Metrics",
  "MetricWriter",
  "Preempted",
  "PyTree",
  "TrainState",
  "batch_sharding",
  "compute_dtype",
  "global_batch",
  "init_state",
  "learning_rate_schedule",
  "loss_step",
  "make_mesh",
  "make_optimizer",
  "make_step",
  "read_metrics",
  "replicated",
  "state_shardings",
  "train_loop",
]

PyTree = Any
Batch = Mapping[str, Any]
Metrics = dict[str, Any]


def make_step(
  step_fn: Callable[[TrainState, Batch], tuple[TrainState, Metrics]],
  state_sharding: PyTree,
  data_sharding: NamedSharding,
  *,
  donate: bool = True,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """jit a pure step with explicit in/out shardings; the old state's buffers are donated."""
  return jax.jit(
    step_fn,
    in_shardings=(state_sharding, data_sharding),
    out_shardings=(state_sharding, replicated(data_sharding.mesh)),
    donate_argnums=(0,) if donate else (),
  )


LossFn = Callable[[PyTree, PyTree, Batch, jax.Array], tuple[jax.Array, tuple[Metrics, PyTree]]]


def loss_step(loss_fn: LossFn) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """The usual step from a loss function.

  Args:
    loss_fn: `(params, model_state, batch, rng) -> (loss, (metrics, new_model_state))`.

  Returns:
    `step(state, batch) -> (state, metrics)`; metrics are loss, grad_norm and `loss_fn`'s own.
  """

  def step(state: TrainState, batch: Batch):
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (metrics, model_state)), grads = grad_fn(
      state.params, state.model_state, batch, state.step_rng()
    )
    new_state = state.apply_gradients(grads, model_state=model_state)
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), **metrics}

  return step


class _Progress:
  """tqdm bar (rate, ETA) on process 0; silent elsewhere or when disabled."""

  def __init__(self, total: int, initial: int, desc: str, enabled: bool):
    self._bar = None
    if enabled and jax.process_index() == 0:
      from tqdm.auto import tqdm

      self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)

  def update(self, n: int, postfix: Mapping[str, float] | None = None) -> None:
    if self._bar is not None:
      if postfix:
        self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
      self._bar.update(n)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


def _check_finite(step: int, metrics: Mapping[str, Any], stage: str, ckpt_dir: str | None):
  for key in ("loss", *[k for k in metrics if k.endswith("loss")]):
    if key in metrics and not np.all(np.isfinite(np.asarray(metrics[key]))):
      kept = f"; last good checkpoint kept in {ckpt_dir}" if ckpt_dir else ""
      raise DivergenceError(
        f"{stage}: non-finite {key} ({np.asarray(metrics[key]).item()}) at step {step}{kept}. "
        "Lower the learning rate or enable optimizer.grad_clip."
      )


def train_loop(
  *,
  state: TrainState,
  step_fn: Callable[[TrainState, dict], tuple[TrainState, Metrics]],
  batches: Callable[[int], Iterator[Batch]],
  num_steps: int,
  data_sharding: NamedSharding,
  checkpointer: Checkpointer | None = None,
  writer: MetricWriter | None = None,
  log_every: int = 50,
  progress: bool = True,
  stage: str = "train",
  hooks: tuple[Callable[[int, TrainState], Mapping[str, Any] | None], ...] = (),
  hook_every: int = 0,
) -> TrainState:
  """Runs `step_fn` until `state.step == num_steps`, resuming from the latest checkpoint.

  Args:
    state: the freshly initialised state (its structure and shardings are the restore target).
    step_fn: a jitted `step(state, batch) -> (state, metrics)` (see `make_step`).
    batches: `start_step -> iterator` of per-process numpy batches; batch k of the stream must be
      the same whatever start_step (see `shared.data.batches`), so a resumed run is bit-identical.
      An iterator with `get_state` / `set_state` (`shared.data.streaming.batches`) has its state
      saved in each checkpoint and set from it on resume.
    num_steps: total optimizer steps for this stage.
    data_sharding: where batches go (`batch_sharding(mesh)`).
    checkpointer: saves every `checkpointer.every` steps, at the end and on SIGTERM (the same
      step on every process, see `shared.preemption`); None = never.
    writer: where metrics go; averaged over `log_every` steps.
    log_every: host-sync interval for logging and the NaN check.
    progress: show a tqdm bar on process 0.
    stage: the name used in logs, metrics.jsonl rows and errors.
    hooks: `fn(step, state) -> metrics | None`, called every `hook_every` steps and at the end
      (evaluation, sample grids); their metrics are written too.
    hook_every: 0 = only at the end.

  Returns:
    The final state.

  Raises:
    DivergenceError: a non-finite loss; the last checkpoint written before it stays intact
      (checkpoints are only written after the metrics up to that step were checked).
    Preempted: after SIGTERM to any process, once every process saved the same step.
  """
  ckpt_dir = checkpointer.directory if checkpointer else None
  restored = None
  if checkpointer is not None:
    state, restored = checkpointer.restore_or(state)
    if restored is not None:
      logging.info("%s: resumed from step %d (%s)", stage, restored, ckpt_dir)
  start = int(jax.device_get(state.step))
  if start >= num_steps:
    logging.info("%s: already at step %d of %d, nothing to train", stage, start, num_steps)
    return state

  bar = _Progress(num_steps, start, stage, progress)
  pending: list[Metrics] = []
  window_start = time.perf_counter()
  it = batches(start)
  # Iterators with a state (grain's) are checkpointed with the TrainState and restored from it.
  stateful = hasattr(it, "get_state") and hasattr(it, "set_state")
  if stateful and restored is not None:
    data_state = checkpointer.restore_data(restored)
    if data_state is not None:
      it.set_state(data_state)
  step = start
  try:
    with PreemptionWatch() as preemption:
      while step < num_steps:
        batch = global_batch(next(it), data_sharding)
        state, metrics = step_fn(state, batch)
        step += 1
        pending.append(metrics)
        regular = (
          step % log_every == 0
          or step == num_steps
          or (checkpointer is not None and checkpointer.should_save(step))
          or bool(hook_every and step % hook_every == 0)
        )
        # Asked on every step, by every process: True on all of them at the same step.
        preempted = preemption.reached(step, regular)
        if not (regular or preempted):
          continue
        host = jax.device_get(pending)  # one sync per window
        for i, m in enumerate(host):
          _check_finite(step - len(host) + i + 1, m, stage, ckpt_dir)
        mean = {k: float(np.mean([np.asarray(m[k]) for m in host])) for k in host[0]}
        elapsed = time.perf_counter() - window_start
        mean["steps_per_s"] = len(host) / max(elapsed, 1e-9)
        if writer is not None:
          writer.write(step, mean)
        bar.update(len(host), {k: v for k, v in mean.items() if k.endswith("loss")})
        pending, window_start = [], time.perf_counter()
        if hook_every and step % hook_every == 0 and step != num_steps:
          _run_hooks(hooks, step, state, writer)
        if checkpointer is not None and (
          checkpointer.should_save(step) or step == num_steps or preempted
        ):
          checkpointer.save(step, state, data_state=it.get_state() if stateful else None)
        if preempted:
          raise Preempted(f"{stage}: SIGTERM at step {step}; checkpoint saved in {ckpt_dir}")
  finally:
    bar.close()
  _run_hooks(hooks, step, state, writer)
  return state


def _run_hooks(hooks, step, state, writer):
  for hook in hooks:
    out = hook(step, state)
    if out and writer is not None:
      writer.write(step, out)
