"""Timing, FLOP counting and MFU for jitted steps.

A `Case` holds a method's real step (the function its training loop jits, built by the method's
own code) with a state and a batch already on the devices. `measure` times it after compilation
and warm-up, with the output blocked on each step, and reports the median and spread.

FLOPs: on GPUs XLA's `cost_analysis()` misses the library GEMMs and convolutions (measured ~20x
under-count for MAE), so FLOPs are counted by lowering the *same* function for the CPU backend,
where every dot and convolution is an HLO op that the cost model sees. Compiling a paper-scale
step for the CPU is slow, so it is counted at two small batch sizes and extrapolated linearly
(every per-step cost of these steps is affine in the batch size; the optimizer update is the
constant part).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Dense bf16 peak by datasheet, FLOP/s (the MFU denominator the issue asks for).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


@dataclasses.dataclass
class Case:
  """One thing to time.

  Attributes:
    name: e.g. "mcae/train_step".
    step: the jitted step, `step(*args) -> outputs`; when `carry` is True the first output
      replaces the first argument on the next call (a train step's state, donated).
    args: the step's arguments, on the devices.
    examples: examples (images) processed per call.
    flops_fn: `batch_size -> (fn, abstract_args)` building the same (unjitted) function at a
      given batch size for CPU FLOP counting; None to skip counting.
    batch_size: the global batch of `args`.
    carry: thread the first output (or the only one) back as the first argument.
    meta: extra fields for the report (dtype, params, config...).
    loss_fn: for train steps, the loss `train_lib.loss_step` differentiates (see `breakdown`).
  """

  name: str
  step: Callable[..., Any]
  args: tuple
  examples: int
  batch_size: int
  flops_fn: Callable[[int], tuple[Callable, tuple]] | None = None
  carry: bool = True
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)
  loss_fn: Callable | None = None


def _block(tree):
  jax.tree.map(lambda x: x.block_until_ready() if hasattr(x, "block_until_ready") else x, tree)


def _first(out):
  """The carried value: the first output of a tuple-returning step, else the output itself."""
  return out[0] if isinstance(out, tuple) else out


def time_calls(case: Case, steps: int, warmup: int) -> tuple[list[float], float]:
  """Per-call wall times (s) after `warmup` calls, and the first call's (compile) time."""
  args = case.args
  t0 = time.perf_counter()
  out = case.step(*args)
  _block(out)
  compile_s = time.perf_counter() - t0
  if case.carry:
    args = (_first(out), *args[1:])
  for _ in range(warmup):
    out = case.step(*args)
    if case.carry:
      args = (_first(out), *args[1:])
  _block(out)
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    out = case.step(*args)
    _block(out)
    times.append(time.perf_counter() - t)
    if case.carry:
      args = (_first(out), *args[1:])
  case.args = args  # keep the donated-buffer chain valid for a later call
  return times, compile_s


def cpu_flops(fn: Callable, abstract_args: tuple) -> float:
  """FLOPs of `fn` lowered and compiled for the CPU backend (counts every dot/conv)."""
  cpu = jax.devices("cpu")[0]
  sharding = jax.sharding.SingleDeviceSharding(cpu)

  def place(x):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

  args = jax.tree.map(place, abstract_args)
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(cost, list | tuple):
    cost = cost[0]
  return float(cost["flops"])


def flops_affine(case: Case, small: tuple[int, int] = (2, 4)) -> tuple[float, float] | None:
  """(constant, per-example) FLOPs of `case`'s step, from CPU lowerings at two small batches.

  Every per-step cost of these steps is affine in the batch size (the optimizer update is the
  constant part), so two points give the FLOPs at any batch size.
  """
  if case.flops_fn is None:
    return None
  b1, b2 = small
  f1 = cpu_flops(*case.flops_fn(b1))
  f2 = cpu_flops(*case.flops_fn(b2))
  per_example = (f2 - f1) / (b2 - b1)
  return f1 - per_example * b1, per_example


def count_flops(case: Case, small: tuple[int, int] = (2, 4)) -> float | None:
  """FLOPs per call at `case.batch_size` (see `flops_affine`)."""
  fit = flops_affine(case, small)
  return None if fit is None else fit[0] + fit[1] * case.batch_size


def peak_memory_bytes() -> int | None:
  """Peak bytes in use on device 0 since start, where the backend reports it."""
  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:  # CPU and some backends have no memory stats
    return None
  return stats.get("peak_bytes_in_use")


def device_peak_flops() -> float | None:
  kind = jax.devices()[0].device_kind
  for name, peak in PEAK_BF16.items():
    if name in kind:
      return peak * jax.device_count()
  return None


def measure(case: Case, steps: int = 20, warmup: int = 5, count: bool = True) -> dict[str, Any]:
  """Times `case` and returns one JSON-able row."""
  times, compile_s = time_calls(case, steps, warmup)
  med = statistics.median(times)
  row: dict[str, Any] = {
    "case": case.name,
    "devices": jax.device_count(),
    "device_kind": jax.devices()[0].device_kind,
    "batch_size": case.batch_size,
    "steps": steps,
    "step_ms_median": 1e3 * med,
    "step_ms_p10": 1e3 * float(np.percentile(times, 10)),
    "step_ms_p90": 1e3 * float(np.percentile(times, 90)),
    "examples_per_s": case.examples / med,
    "compile_s": compile_s,
    "peak_memory_gib": None,
    **case.meta,
  }
  mem = peak_memory_bytes()
  if mem is not None:
    row["peak_memory_gib"] = mem / 2**30
  return add_flops(row, count_flops(case) if count else None)


def add_flops(row: dict[str, Any], flops: float | None) -> dict[str, Any]:
  """Adds FLOPs per step and what follows from them (TFLOP/s, MFU) to a timed row."""
  row["flops_per_step"] = flops
  if flops:
    seconds = row["step_ms_median"] / 1e3
    row["tflops_per_s"] = flops / seconds / 1e12
    peak = device_peak_flops()
    if peak:
      row["mfu_vs_datasheet"] = flops / seconds / peak
  return row


def matmul_ceiling(n: int = 8192, dtype=jnp.bfloat16, steps: int = 10) -> dict[str, Any]:
  """Achieved FLOP/s of one n^3 matmul on device 0 (the practical ceiling for MFU)."""
  key = jax.random.PRNGKey(0)
  a = jax.random.normal(key, (n, n), dtype)
  b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), dtype)
  f = jax.jit(lambda x, y: x @ y)
  case = Case("matmul", f, (a, b), examples=1, batch_size=1, carry=False)
  times, _ = time_calls(case, steps, warmup=3)
  med = statistics.median(times)
  return {
    "case": f"matmul_{n}_{jnp.dtype(dtype).name}",
    "device_kind": jax.devices()[0].device_kind,
    "step_ms_median": 1e3 * med,
    "tflops_per_s": 2 * n**3 / med / 1e12,
  }


def breakdown(case: Case) -> list[Case]:
  """Where a train step's time goes: the loss alone (forward), the loss and its gradients
  (forward + backward), and the full step (`case`, + optimizer update and EMA).

  `case.loss_fn(params, model_state, batch, rng) -> (loss, aux)` is the method's loss, the one
  its `train_lib.loss_step` differentiates; `case.args` is `(state, batch)`. The differences
  between the three medians are the backward pass and the update. FLOPs: the full step's only.
  The full step comes last: it donates the state the other two read.
  """
  if case.loss_fn is None:
    raise ValueError(f"case {case.name} has no loss_fn to break down")
  loss_fn = case.loss_fn
  state, batch = case.args
  rng = jax.random.PRNGKey(0)
  in_shardings = jax.tree.map(lambda x: x.sharding, (state.params, batch))

  def forward(params, batch):
    return loss_fn(params, state.model_state, batch, rng)[0]

  def grads(params, batch):
    return jax.value_and_grad(lambda p: loss_fn(p, state.model_state, batch, rng)[0])(params)

  out = []
  for label, fn in (("forward", forward), ("forward_backward", grads)):
    out.append(
      Case(
        name=f"{case.name}:{label}",
        step=jax.jit(fn, in_shardings=in_shardings),
        args=(state.params, batch),
        examples=case.examples,
        batch_size=case.batch_size,
        carry=False,
        meta=dict(case.meta),
      )
    )
  return [*out, case]
