"""What every sub-run of the pipeline (a tokenizer or a unified model) does the same way.

  init_state(key, seed, init_fn, tx, mesh)   its TrainState, from an initialiser jitted once per
                                             process for each model and optimizer
  train(cfg, state, step_fn, batches, ...)   its resumable training stage (`stages.run_stage`)

Why not `train_lib.init_state`: it builds a new closure on every call, so each of the many
same-shaped sub-runs of a sweep would compile its initialiser anew (most of their start-up).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping

import jax
import numpy as np

from shared import stages, train_lib


def mesh_key(mesh) -> dict:
  """What of a mesh a compiled function depends on (for `stages.stage_key`)."""
  return {"axes": dict(mesh.shape), "devices": mesh.device_ids.tolist()}


def _jitted_create(init_fn, tx, mesh):
  def create(key):
    init_rng, step_rng = jax.random.split(key)
    params, model_state = init_fn(init_rng)
    return train_lib.TrainState.create(params=params, tx=tx, rng=step_rng, model_state=model_state)

  sharding = train_lib.state_shardings(jax.eval_shape(create, jax.random.PRNGKey(0)), mesh)
  return jax.jit(create, out_shardings=sharding), sharding


def init_state(key: str, seed: int, init_fn: Callable, tx, mesh):
  """(TrainState from `seed`, its sharding); `key` (a `stages.stage_key` of everything `init_fn`
  and `tx` depend on) names the compiled initialiser.

  Args:
    init_fn: key -> (params, model_state).
  """
  create, sharding = stages.compiled(key, lambda: _jitted_create(init_fn, tx, mesh))
  return create(jax.random.PRNGKey(seed)), sharding


def train(
  cfg,
  state: train_lib.TrainState,
  step_fn: Callable,
  batches: Callable[[int], Iterator[Mapping[str, np.ndarray]]],
  num_steps: int,
  data_sharding,
  workdir: str | None,
  log_dir: str | None,
  stage: str,
) -> train_lib.TrainState:
  """One sub-run's training: resumable from `workdir/checkpoints` (the last one kept, every
  `cfg.checkpoint_every` steps), metrics rows tagged `stage` in `log_dir`'s metrics.jsonl every
  `cfg.log_every` steps, no progress bar.

  `workdir=None` (the Python API on arrays, `infotok.train_tokenizer`): the same loop with no
  checkpoints and no metric files (nothing to resume; the NaN guard still runs).
  """
  return stages.run_stage(
    state=state,
    step_fn=step_fn,
    batches=batches,
    num_steps=num_steps,
    data_sharding=data_sharding,
    checkpoint_dir=None if workdir is None else os.path.join(workdir, "checkpoints"),
    log_dir=None if workdir is None else log_dir,
    stage=stage,
    checkpoint_every=cfg.checkpoint_every,
    keep=1,
    log_every=cfg.log_every,
    progress=False,
  )
