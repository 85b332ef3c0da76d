"""Benchmark cases for unlearnable examples, built from the programs the method runs.

    python -m benchmarks.run --config configs/unlearnable.py:paper --what perturb
    python -m benchmarks.run --config configs/unlearnable.py:paper --what train_step

perturb: one PGD step of EM's error-minimising search on a batch (`minmin.Program.sweep_batch`
with pgd_steps=1) and one surrogate step (`Program.train_step`), on the config's surrogate (the
CIFAR ResNet-18 in `paper`) at 32x32x3. train_step: the supervised victim's step
(`victims.program(...).step`). Each row also carries the projected wall time to protect 50,000
images with the EM and TUE recipes of the config (rounds x (PGD steps + surrogate steps)).
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp

from shared import train_lib
from shared.benchmark import Case
from shared.errors import ConfigError
from shared.train_lib import TrainState
from unlearnable import evaluate, minmin, perturb, victims

SHAPE = (32, 32, 3)
NUM_CLASSES = 10


def _data(batch_size: int):
  key = jax.random.PRNGKey(0)
  images = jax.random.uniform(key, (batch_size, *SHAPE))
  labels = jax.random.randint(jax.random.fold_in(key, 1), (batch_size,), 0, NUM_CLASSES)
  return images, labels


def _em_program(config, pgd_steps: int):
  kind, settings = perturb.minmin_settings(config, "em")
  settings = {**copy.deepcopy(settings), "pgd_steps": pgd_steps}
  return minmin.program(kind, settings, NUM_CLASSES, False)


def perturb_cases(config, batch_size: int) -> list[Case]:
  prog = _em_program(config, pgd_steps=1)
  images, labels = _data(batch_size)
  params, model_state = jax.jit(lambda k: minmin.nets.init(prog.model, k, jnp.zeros((1, *SHAPE))))(
    jax.random.PRNGKey(1)
  )
  state = TrainState.create(
    params=params, tx=prog.tx, rng=jax.random.PRNGKey(2), model_state=model_state
  )
  idx = jnp.arange(batch_size)
  delta = jnp.zeros_like(images)
  eps = float(config.eps)
  em = config.em
  n = 50_000
  meta = {
    "model": config.surrogate,
    "dtype": _dtype(config),
    "em_recipe": f"{em.max_rounds} rounds x ({em.train_steps} surrogate + "
    f"{n // batch_size} x {em.pgd_steps} PGD) steps",
  }
  eps_arr = jnp.float32(eps)
  key = jax.random.PRNGKey(3)

  def abstract(b, *tree):
    ims, labs = _data(b)
    return jax.eval_shape(lambda: (ims, labs, jnp.arange(b), *tree))

  def pgd_flops(b):
    ims, labs, ix, st, d = abstract(b, state, jnp.zeros((b, *SHAPE)))
    args = (d, ims, labs, st.params, st.model_state, ix, key, (), eps_arr)
    return prog._sweep_batch_fn, jax.eval_shape(lambda: args)

  def train_flops(b):
    ims, labs, ix, st, d = abstract(b, state, jnp.zeros((b, *SHAPE)))
    return prog._train_step_fn, (st, ims, labs, d, ix)

  pgd = Case(
    name="unlearnable/em_pgd_step",
    step=prog.sweep_batch,
    args=(delta, images, labels, state.params, state.model_state, idx, key, (), eps_arr),
    examples=batch_size,
    batch_size=batch_size,
    flops_fn=pgd_flops,
    meta=meta,
  )
  train = Case(
    name="unlearnable/em_surrogate_step",
    step=prog.train_step,
    # Own copies: the PGD case donates its delta, this one donates its state.
    args=(jax.tree.map(jnp.copy, state), images, labels, jnp.zeros_like(images), idx),
    examples=batch_size,
    batch_size=batch_size,
    flops_fn=train_flops,
    meta=meta,
  )

  return [pgd, train]


def _dtype(config) -> str:
  return config.models[config.surrogate].get("dtype", "float32")


def victim_case(config, batch_size: int) -> Case:
  recipe = evaluate.supervised_recipe(config, "supervised")  # no defence: the plain victim
  with recipe.unlocked():
    recipe.batch_size = batch_size
  spec = config.models.to_dict()[config.surrogate]
  prog = victims.program("supervised", spec, NUM_CLASSES, recipe, 1000, SHAPE)
  state = prog.create(jax.random.PRNGKey(0))
  images, labels = _data(batch_size)
  batch = jax.device_put({"image": images, "label": labels}, prog.data_sharding)
  raw_step = train_lib.loss_step(prog._supervised_loss)

  def flops_fn(b):
    ims, labs = _data(b)
    return raw_step, jax.eval_shape(lambda: (state, {"image": ims, "label": labs}))

  return Case(
    name="unlearnable/victim_train_step",
    step=prog.step,
    args=(state, batch),
    examples=batch_size,
    batch_size=batch_size,
    flops_fn=flops_fn,
    meta={"model": config.surrogate, "dtype": _dtype(config)},
  )


def summarize(config, rows: list[dict]) -> list[dict]:
  """Adds the projected wall time to protect 50,000 images to the PGD row.

  EM: max_rounds x (one PGD sweep of every image with em.pgd_steps steps + em.train_steps
  surrogate steps); TUE: the same with the TUE recipe's counts, timed with EM's (supervised)
  step as a lower bound, since TUE's SimCLR step runs two views. Upper bounds in rounds: EM stops
  early once the surrogate reaches 99% on the perturbed set.
  """
  by = {r["case"]: r for r in rows}
  pgd, train = by.get("unlearnable/em_pgd_step"), by.get("unlearnable/em_surrogate_step")
  if not (pgd and train):
    return rows
  n, b = 50_000, pgd["batch_size"]
  pgd_s, train_s = pgd["step_ms_median"] / 1e3, train["step_ms_median"] / 1e3
  for name, r in (("em", config.em), ("tue", config.tue)):
    pgd[f"{name}_50k_wall_s"] = r.max_rounds * (
      n / b * r.pgd_steps * pgd_s + r.train_steps * train_s
    )
  return rows


def cases(config, what: str, batch_size: int | None) -> list[Case]:
  if what == "perturb":
    return perturb_cases(config, batch_size or 512)
  if what == "train_step":
    return [victim_case(config, batch_size or 512)]
  raise ConfigError(f"unlearnable has --what=perturb|train_step, not {what!r}")
