"""Toy training: an MLP on `digits`, through every piece of shared.train_lib."""

import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from shared import data as data_lib
from shared import train_lib


class MLP(nn.Module):
  hidden: int
  classes: int

  @nn.compact
  def __call__(self, x_BxHxWxC):
    x_BxD = x_BxHxWxC.reshape(x_BxHxWxC.shape[0], -1)
    return nn.Dense(self.classes)(nn.relu(nn.Dense(self.hidden)(x_BxD)))


def make_loss(model, nan_at_step):
  def loss_fn(params, model_state, batch, rng):
    del rng
    logits = model.apply({"params": params}, data_lib.to_float(batch["image"]))
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    acc = (logits.argmax(-1) == batch["label"]).mean()
    return loss, ({"accuracy": acc}, model_state)

  if nan_at_step < 0:
    return loss_fn

  def poisoned(params, model_state, batch, rng):
    loss, aux = loss_fn(params, model_state, batch, rng)
    return jnp.where(batch["step"].max() >= nan_at_step, jnp.nan, loss), aux

  return poisoned


def train_and_evaluate(config, workdir):
  train = data_lib.load(config.data.name, "train", data_dir=config.data.data_dir or None)
  test = data_lib.load(config.data.name, "test", data_dir=config.data.data_dir or None)
  classes = int(train["label"].max()) + 1
  model = MLP(config.hidden, classes)
  mesh = train_lib.make_mesh(config.run.model_axis)
  tx = train_lib.make_optimizer(config.optimizer, config.num_steps)
  rng = jax.random.PRNGKey(config.seed)
  sample = jnp.zeros((1, *train["image"].shape[1:]))
  state, state_sharding = train_lib.init_state(
    lambda k: (model.init(k, sample)["params"], {}),
    tx,
    rng,
    mesh,
    fsdp=config.run.fsdp,
    ema_decay=config.optimizer.ema_decay,
  )
  data_sharding = train_lib.batch_sharding(mesh)
  step = train_lib.make_step(
    train_lib.loss_step(make_loss(model, config.nan_at_step)), state_sharding, data_sharding
  )
  arrays = {"image": train["image"], "label": train["label"]}

  def batches(start):
    for k, b in enumerate(
      data_lib.batches(arrays, config.batch_size, seed=config.seed, start_step=start), start
    ):
      if config.slow_data_s:
        time.sleep(config.slow_data_s)
      yield {**b, "step": np.full((len(b["label"]),), k, np.int32)}

  ckpt = train_lib.Checkpointer(
    os.path.join(workdir, "checkpoints"),
    keep=config.run.keep_checkpoints,
    every=config.run.checkpoint_every,
  )
  writer = train_lib.MetricWriter(workdir)
  state = train_lib.train_loop(
    state=state,
    step_fn=step,
    batches=batches,
    num_steps=config.num_steps,
    data_sharding=data_sharding,
    checkpointer=ckpt,
    writer=writer,
    log_every=config.run.log_every,
    progress=config.run.progress,
  )
  ckpt.close()
  writer.close()
  logits = model.apply({"params": state.params}, data_lib.to_float(test["image"]))
  return {"test_accuracy": float((np.asarray(logits).argmax(-1) == test["label"]).mean())}
