"""The training state and what builds it: TrainState, the optimizer, the sharded initial state.

Pieces:
  TrainState        a flax.struct pytree: step, params, opt_state, model_state, ema_params, rng
  make_optimizer    optax chain from a config (adamw/sgd, warmup+cosine, clipping, wd mask)
  compute_dtype     a config's dtype name -> jnp dtype
  init_state        a TrainState built straight into its shardings
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from shared.errors import ConfigError
from shared.sharding import state_shardings

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes. A pytree; `tx` is static.

  Attributes:
    step: int32 scalar, the number of optimizer updates done.
    params: the trainable parameters (float32).
    opt_state: the optax state of `tx`.
    model_state: non-trained collections (e.g. BatchNorm's batch_stats); {} when unused.
    ema_params: exponential moving average of params, or None when `ema_decay == 0`.
    rng: a raw uint32 PRNG key; steps use `fold_in(rng, step)` so runs are reproducible.
  """

  step: jax.Array
  params: PyTree
  opt_state: PyTree
  model_state: PyTree
  ema_params: PyTree | None
  rng: jax.Array
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  ema_decay: float = flax.struct.field(pytree_node=False, default=0.0)

  @classmethod
  def create(
    cls,
    *,
    params: PyTree,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    model_state: PyTree | None = None,
    ema_decay: float = 0.0,
  ) -> TrainState:
    return cls(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=tx.init(params),
      model_state={} if model_state is None else model_state,
      ema_params=jax.tree.map(jnp.copy, params) if ema_decay > 0 else None,
      rng=rng,
      tx=tx,
      ema_decay=ema_decay,
    )

  def apply_gradients(self, grads: PyTree, **replace) -> TrainState:
    """One optimizer update; also advances the EMA: ema <- d * ema + (1 - d) * params.

    Under the name scope "optimizer", so a profile (`benchmarks.profile`) can tell its kernels
    from the step's other elementwise work."""
    with jax.named_scope("optimizer"):
      updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
      params = optax.apply_updates(self.params, updates)
      ema = self.ema_params
      if ema is not None:
        d = self.ema_decay
        ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)
    return self.replace(
      step=self.step + 1, params=params, opt_state=opt_state, ema_params=ema, **replace
    )

  def step_rng(self) -> jax.Array:
    """The key for this step: fold_in(rng, step), independent of how the run was resumed."""
    return jax.random.fold_in(self.rng, self.step)


def _decay_mask(params: PyTree, rule: str) -> PyTree:
  if rule == "all":
    return jax.tree.map(lambda _: True, params)
  if rule == "no_bias_norm":
    # Biases, norm scales and other vectors are not decayed (MAE / timm convention: ndim <= 1).
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)
  raise ConfigError(f"optimizer.decay_mask={rule!r}; known: all, no_bias_norm")


def learning_rate_schedule(cfg, total_steps: int) -> optax.Schedule:
  """Linear warmup to cfg.lr, then cosine decay to cfg.lr * end_lr_factor, or constant."""
  total_steps = max(int(total_steps), 1)
  warmup = min(int(cfg.warmup_steps), total_steps)
  if cfg.schedule == "constant":
    if warmup == 0:
      return optax.constant_schedule(cfg.lr)
    return optax.join_schedules(
      [optax.linear_schedule(0.0, cfg.lr, warmup), optax.constant_schedule(cfg.lr)], [warmup]
    )
  if cfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
      init_value=0.0 if warmup else cfg.lr,
      peak_value=cfg.lr,
      warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1),  # optax needs a non-empty decay phase
      end_value=cfg.lr * cfg.end_lr_factor,
    )
  raise ConfigError(f"optimizer.schedule={cfg.schedule!r}; known: cosine, constant")


def make_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
  """An optax chain from an `optimizer_config()`: clip -> adamw | sgd (+ masked weight decay)."""
  lr = learning_rate_schedule(cfg, total_steps)
  mask = lambda params: _decay_mask(params, cfg.decay_mask)
  if cfg.name == "adamw":
    opt = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=mask)
  elif cfg.name == "sgd":
    parts = []
    if cfg.weight_decay:
      parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=mask))
    parts.append(optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
    opt = optax.chain(*parts)
  else:
    raise ConfigError(f"optimizer.name={cfg.name!r}; known: adamw, sgd")
  if cfg.grad_clip:
    opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt)
  return opt


def compute_dtype(name: str):
  """'float32' | 'bfloat16' | 'float16' -> jnp dtype, or a ConfigError."""
  try:
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]
  except KeyError:
    raise ConfigError(f"dtype={name!r}; known: float32, bfloat16, float16") from None


def init_state(
  init_fn: Callable[[jax.Array], tuple[PyTree, PyTree]],
  tx: optax.GradientTransformation,
  rng: jax.Array,
  mesh,
  *,
  fsdp: bool = False,
  ema_decay: float = 0.0,
  jit: bool | None = None,
) -> tuple[TrainState, PyTree]:
  """Initialises a TrainState in its shardings.

  Args:
    init_fn: key -> (params, model_state).
    tx: the optimizer.
    rng: the run's root key; split into an init key and the state's step key.
    mesh: from `make_mesh`.
    fsdp: shard large leaves over "data".
    ema_decay: > 0 keeps an EMA of params.
    jit: build the state under `jax.jit` straight into its shardings (no host round trip; what
      large models on accelerators need). None = jit unless the backend is the CPU, where
      compiling an initialiser costs tens of seconds (measured: 27 s for ResNet-18 on 2 cores)
      against well under a second op by op; the values are the same either way.

  Returns:
    (state, state_sharding).
  """
  init_rng, step_rng = jax.random.split(rng)

  def create(key):
    params, model_state = init_fn(key)
    return TrainState.create(
      params=params, tx=tx, rng=step_rng, model_state=model_state, ema_decay=ema_decay
    )

  abstract = jax.eval_shape(create, init_rng)
  sharding = state_shardings(abstract, mesh, fsdp=fsdp)
  if jit is None:
    jit = jax.default_backend() != "cpu"
  if jit:
    return jax.jit(create, out_shardings=sharding)(init_rng), sharding
  return jax.device_put(create(init_rng), sharding), sharding
