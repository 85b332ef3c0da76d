"""The sub-run kit: compiled-once stages, a resumable training stage, padded batched inference.

  compiled(key, build)       `build()` once per process for each key (shapes + config), reused
  stage_key(*parts)          a key from ConfigDicts, dicts, shapes and scalars (JSON, hashed)
  run_stage(...)             checkpointer + metric writer + `train_lib.train_loop`, one call
                             (either left out with its folder None: in-memory runs)
  batched_apply(fn, x, b)    fn over fixed-size padded batches of x (compiles once), outputs trimmed

Why `compiled`: a jitted step closes over its model and config, so building it anew for every
seed, protocol or criterion recompiles it each time (tens of seconds for a ResNet-18 on a CPU).
Methods build their jitted pieces through `compiled(stage_key(...), build)` instead, so runs
that share shapes and settings share one compilation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import jax
import numpy as np

from shared import train_lib

T = TypeVar("T")
_COMPILED: dict[str, Any] = {}


def _plain(obj):
  if hasattr(obj, "to_dict"):  # ml_collections.ConfigDict
    return _plain(obj.to_dict())
  if isinstance(obj, Mapping):
    return {str(k): _plain(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
  if isinstance(obj, tuple | list):
    return [_plain(v) for v in obj]
  if hasattr(obj, "shape") and hasattr(obj, "dtype"):  # arrays, ShapeDtypeStructs
    return {"shape": list(obj.shape), "dtype": str(obj.dtype)}
  if isinstance(obj, np.generic):
    return obj.item()
  return obj if isinstance(obj, str | int | float | bool | type(None)) else repr(obj)


def stage_key(*parts: Any) -> str:
  """A stable key for `compiled`: the parts as canonical JSON, hashed (arrays by shape/dtype)."""
  text = json.dumps(_plain(parts), sort_keys=True, default=repr)
  return hashlib.sha256(text.encode()).hexdigest()[:20]


def compiled(key: str, build: Callable[[], T]) -> T:
  """`build()` the first time `key` is asked for in this process, the same object afterwards."""
  if key not in _COMPILED:
    _COMPILED[key] = build()
  return _COMPILED[key]


def clear_compiled() -> None:
  """Forget every compiled stage (tests; a notebook that changed a model's code)."""
  _COMPILED.clear()


def run_stage(
  *,
  state: train_lib.TrainState,
  step_fn: Callable,
  batches: Callable[[int], Iterator[Mapping[str, np.ndarray]]],
  num_steps: int,
  data_sharding,
  checkpoint_dir: str | None,
  log_dir: str | None,
  stage: str,
  checkpoint_every: int,
  keep: int = 1,
  log_every: int = 50,
  progress: bool = False,
  hooks: tuple = (),
  hook_every: int = 0,
  tensorboard: bool = True,
) -> train_lib.TrainState:
  """One resumable training stage: checkpoints in `checkpoint_dir`, metrics rows tagged `stage`
  in `log_dir`/metrics.jsonl (and TensorBoard when `tensorboard` and TensorFlow is there), both
  closed on every exit (see `train_lib.train_loop`). `checkpoint_dir=None`: no checkpoints
  (nothing to resume); `log_dir=None`: no metric files (the Python APIs' runs on arrays)."""
  checkpointer = (
    contextlib.nullcontext()
    if checkpoint_dir is None
    else train_lib.Checkpointer(checkpoint_dir, keep=keep, every=checkpoint_every)
  )
  metric_writer = (
    contextlib.nullcontext()
    if log_dir is None
    else train_lib.MetricWriter(log_dir, stage=stage, tensorboard=tensorboard)
  )
  with checkpointer as ckpt, metric_writer as writer:
    return train_lib.train_loop(
      state=state,
      step_fn=step_fn,
      batches=batches,
      num_steps=num_steps,
      data_sharding=data_sharding,
      checkpointer=ckpt,
      writer=writer,
      log_every=log_every,
      progress=progress,
      stage=stage,
      hooks=hooks,
      hook_every=hook_every,
    )


def batched_apply(
  fn: Callable[..., Any],
  inputs: np.ndarray | tuple[np.ndarray, ...],
  batch_size: int,
  *,
  sharding=None,
) -> Any:
  """`fn(*batch)` over all rows of `inputs` in order, every batch padded to `batch_size` rows.

  One input shape means one compilation of a jitted `fn`; the padded rows' outputs are dropped.
  Outputs may be any pytree of arrays with a leading batch axis; they come back as numpy,
  concatenated. `sharding`: where to put each batch (e.g. `train_lib.batch_sharding(mesh)`),
  else `fn` receives numpy.
  """
  inputs = inputs if isinstance(inputs, tuple) else (inputs,)
  n = len(inputs[0])
  if n == 0:
    raise ValueError("batched_apply: no rows")
  b = min(batch_size, n)
  if sharding is not None:  # every device gets the same number of rows
    devices = sharding.num_devices
    b = -(-b // devices) * devices
  out = []
  for start in range(0, n, b):
    valid = min(b, n - start)
    chunk = []
    for x in inputs:
      part = np.asarray(x[start : start + valid])
      if valid < b:
        part = np.concatenate([part, np.zeros((b - valid, *part.shape[1:]), part.dtype)])
      chunk.append(jax.device_put(part, sharding) if sharding is not None else part)
    res = jax.device_get(fn(*chunk))
    out.append(jax.tree.map(lambda a, v=valid: np.asarray(a)[:v], res))
  return jax.tree.map(lambda *xs: np.concatenate(xs), *out)
