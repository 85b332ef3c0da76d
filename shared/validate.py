"""Checks a config's values before a run writes anything: every nonsense value is a ConfigError.

  check_config(config, devices=N, processes=P, data_axis=D)   raises ConfigError, else None

The rules go by a field's own name, wherever it sits in the config, so one table covers the four
methods' configs (and any sub-config they nest):

  lr                           a finite number > 0
  num_steps, steps, epochs...  integers >= 1 (a run of 0 steps evaluates an untrained model)
  warmup_steps, other *_steps  integers >= 0
  log_every, checkpoint_every  integers >= 1 (0 would divide by zero in the loop)
  other *_every                integers >= 0 (0 = off)
  keep_checkpoints             an integer >= 1
  seed, seeds, *_seed          integers in [0, 2**63) (what a PRNG key and numpy take)
  batch_size                   an integer >= 1 and, outside eval sub-configs, a multiple of the
                               data-parallel devices (`data_axis`) and of the process count
  *_ratio / *_fraction / ...   inside [0, 1] (mlp_ratio aside), keep ratios in (0, 1]

Evaluation batches are exempt from divisibility: `shared.stages.batched_apply` pads them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from shared.errors import ConfigError

SEED_LIMIT = 2**63
POSITIVE_STEPS = frozenset(
  {
    "num_steps",
    "steps",
    "train_steps",
    "total_steps",
    "supervised_steps",
    "epochs",
    "iterations",
    "pgd_steps",
    "ddim_steps",
    "masked_steps",
    "feature_steps",
  }
)
POSITIVE_EVERY = frozenset({"log_every", "checkpoint_every"})
UNIT_INTERVAL = frozenset(
  {"mask_ratio", "supcon_mask_ratio", "val_fraction", "photo_fraction", "object_fraction"}
)
PROBABILITY_OPEN = frozenset({"ema_decay"})  # [0, 1)
NON_NEGATIVE = frozenset({"weight_decay", "grad_clip", "end_lr_factor"})


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
  items = node.items() if isinstance(node, Mapping) or hasattr(node, "items") else ()
  for key, value in items:
    path = f"{prefix}{key}"
    if isinstance(value, Mapping) or hasattr(value, "items"):
      yield from _leaves(value, f"{path}.")
    else:
      yield path, value


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
  return isinstance(v, int | float) and not isinstance(v, bool)


def _bad(path: str, value: Any, want: str) -> ConfigError:
  return ConfigError(f"config.{path}={value!r}: must be {want}")


def _check_int(path, value, lo, want):
  if not _is_int(value) or value < lo:
    raise _bad(path, value, want)


def _check_leaf(path: str, value: Any, *, data_axis: int, processes: int) -> None:
  name = path.rsplit(".", 1)[-1]
  parents = path.split(".")[:-1]
  if name == "lr" or name.endswith("_lr"):
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
      raise _bad(path, value, "a finite learning rate > 0")
  elif name in POSITIVE_STEPS:
    _check_int(path, value, 1, "an integer >= 1 (a stage of no steps trains nothing)")
  elif name.endswith("_steps") and _is_number(value):
    _check_int(path, value, 0, "an integer >= 0")
  elif name in POSITIVE_EVERY:
    _check_int(path, value, 1, "an integer >= 1")
  elif name.endswith("_every") and _is_number(value):
    _check_int(path, value, 0, "an integer >= 0 (0 = off)")
  elif name == "keep_checkpoints":
    _check_int(path, value, 1, "an integer >= 1")
  elif name == "seed" or name.endswith("_seed"):
    _check_seed(path, value)
  elif name == "seeds":
    seeds = list(value) if isinstance(value, tuple | list) else [value]
    for s in seeds:
      _check_seed(path, s)
    if len(set(seeds)) != len(seeds):
      raise _bad(path, value, "distinct seeds")
  elif name == "batch_size" or name.endswith("_batch_size"):
    _check_batch(path, name, parents, value, data_axis=data_axis, processes=processes)
  elif name in UNIT_INTERVAL:
    if not _is_number(value) or not 0.0 <= value <= 1.0:
      raise _bad(path, value, "in [0, 1]")
  elif name in PROBABILITY_OPEN:
    if not _is_number(value) or not 0.0 <= value < 1.0:
      raise _bad(path, value, "in [0, 1)")
  elif name == "keep_ratios":
    ratios = list(value) if isinstance(value, tuple | list) else [value]
    if not ratios or any(not _is_number(r) or not 0.0 < r <= 1.0 for r in ratios):
      raise _bad(path, value, "keep ratios in (0, 1]")
  elif name in NON_NEGATIVE:
    _check_non_negative(path, value)


def _check_non_negative(path: str, value: Any) -> None:
  if not _is_number(value) or not math.isfinite(value) or value < 0:
    raise _bad(path, value, "a finite number >= 0")


def _check_seed(path: str, value: Any) -> None:
  if not _is_int(value) or not 0 <= value < SEED_LIMIT:
    raise _bad(path, value, "an integer in [0, 2**63)")


def _check_batch(path, name, parents, value, *, data_axis, processes):
  _check_int(path, value, 1, "an integer >= 1")
  evaluation = name != "batch_size" or any(p.startswith("eval") for p in parents)
  if evaluation:  # padded to the devices by batched_apply
    return
  for count, what in ((data_axis, "data-parallel devices"), (processes, "processes")):
    if count > 1 and value % count:
      raise ConfigError(
        f"config.{path}={value} is not divisible by the {count} {what}; use a multiple of "
        f"{count} (e.g. {max(count, value - value % count)}), or run on fewer devices "
        "(JAX_PLATFORMS / CUDA_VISIBLE_DEVICES)"
      )


def check_config(
  config: Any, *, devices: int | None = None, processes: int | None = None, data_axis=None
) -> None:
  """Raises ConfigError naming the first field whose value makes no sense (see the module doc).

  Args:
    config: a ConfigDict or nested dict.
    devices: the global device count (default `jax.device_count()`).
    processes: the process count (default `jax.process_count()`).
    data_axis: devices on the mesh's "data" axis (default devices // config.run.model_axis).
  """
  if devices is None or processes is None:
    import jax  # noqa: PLC0415  (the rules themselves need no JAX)

    devices = jax.device_count() if devices is None else devices
    processes = jax.process_count() if processes is None else processes
  if data_axis is None:
    run = config.get("run") if hasattr(config, "get") else None
    model_axis = run.get("model_axis", 1) if run is not None and hasattr(run, "get") else 1
    if not _is_int(model_axis) or model_axis < 1 or devices % model_axis:
      raise ConfigError(
        f"config.run.model_axis={model_axis!r}: must be a positive divisor of the {devices} devices"
      )
    data_axis = devices // model_axis
  for path, value in _leaves(config):
    _check_leaf(path, value, data_axis=data_axis, processes=processes)
