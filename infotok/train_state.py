"""The TrainState of a sub-run (a tokenizer or a unified model), built by a jitted initialiser that
is compiled once per process for each model and optimizer (`shared.stages.compiled`).

Why not `train_lib.init_state`: it builds a new closure on every call, so each of the many
same-shaped sub-runs of a sweep would compile its initialiser anew (most of their start-up).
"""

from __future__ import annotations

from collections.abc import Callable

import jax

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
