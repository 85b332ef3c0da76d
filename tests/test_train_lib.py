"""The functional core: sharded steps, optimizer, checkpoints, resume, NaN guard, metrics."""

import json
import os
import signal
import subprocess
import sys
import time

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from shared import config_utils, train_lib
from shared.errors import CheckpointError, ConfigError, DivergenceError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_CLASSES, DIM, BATCH = 4, 16, 64


class Toy(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(N_CLASSES)(nn.tanh(nn.Dense(32)(x)))


def blobs(n=2048, seed=0):
  """Four Gaussian blobs: learnable, but not at step 0."""
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(N_CLASSES, DIM)) * 1.5
  y = rng.integers(0, N_CLASSES, n)
  x = centers[y] + rng.normal(size=(n, DIM))
  return {"x": x.astype(np.float32), "y": y.astype(np.int32)}


def stream(data, start):
  """Deterministic batch k for any start (what shared.data.batches guarantees)."""
  k = start
  n = len(data["y"])
  while True:
    idx = np.random.default_rng(k).permutation(n)[:BATCH]
    yield {"x": data["x"][idx], "y": data["y"][idx]}
    k += 1


def loss_fn(params, model_state, batch, rng):
  logits = Toy().apply({"params": params}, batch["x"])
  # A little dropout-like noise from the step rng, so the rng path is exercised too.
  logits = logits + 1e-3 * jax.random.normal(rng, logits.shape)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
  acc = (logits.argmax(-1) == batch["y"]).mean()
  return loss, ({"accuracy": acc}, model_state)


def setup(devices, ema=0.0, fsdp=False, lr=0.05, steps=40):
  mesh = train_lib.make_mesh(1, devices=devices)
  cfg = config_utils.optimizer_config(lr=lr, warmup_steps=5, grad_clip=1.0, ema_decay=ema)
  tx = train_lib.make_optimizer(cfg, steps)
  state, sharding = train_lib.init_state(
    lambda k: (Toy().init(k, jnp.zeros((1, DIM)))["params"], {}),
    tx,
    jax.random.PRNGKey(0),
    mesh,
    fsdp=fsdp,
    ema_decay=ema,
  )
  data_sharding = train_lib.batch_sharding(mesh)
  step = train_lib.make_step(train_lib.loss_step(loss_fn), sharding, data_sharding)
  return state, step, data_sharding


def run_steps(state, step, data_sharding, data, n, start=0):
  it = stream(data, start)
  history = []
  for _ in range(n):
    state, m = step(state, train_lib.global_batch(next(it), data_sharding))
    history.append(jax.device_get(m))
  return state, history


def test_eight_devices_match_one_device_and_the_model_learns():
  assert jax.device_count() == 8
  data = blobs()
  s1, step1, sh1 = setup(jax.devices()[:1], ema=0.9)
  s8, step8, sh8 = setup(jax.devices(), ema=0.9)
  s1, h1 = run_steps(s1, step1, sh1, data, 40)
  s8, h8 = run_steps(s8, step8, sh8, data, 40)
  chex.assert_trees_all_close(s1.params, s8.params, atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(s1.ema_params, s8.ema_params, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose([m["loss"] for m in h1], [m["loss"] for m in h8], rtol=1e-5)
  # It really learns: loss falls by a lot, accuracy rises well above chance.
  assert np.mean([m["loss"] for m in h1[-5:]]) < 0.5 * np.mean([m["loss"] for m in h1[:3]])
  assert np.mean([m["accuracy"] for m in h1[-5:]]) > 0.85
  assert int(s8.step) == 40
  # The batch really is split over the 8 devices.
  b = train_lib.global_batch(next(stream(data, 0)), sh8)
  assert len(b["x"].sharding.device_set) == 8


def test_fsdp_sharding_matches_replicated():
  data = blobs()
  s_rep, step_rep, sh = setup(jax.devices())
  s_fsdp, step_fsdp, sh2 = setup(jax.devices(), fsdp=True)
  s_rep, _ = run_steps(s_rep, step_rep, sh, data, 10)
  s_fsdp, _ = run_steps(s_fsdp, step_fsdp, sh2, data, 10)
  chex.assert_trees_all_close(s_rep.params, s_fsdp.params, atol=1e-5, rtol=1e-5)


def test_fsdp_spec_shards_the_largest_divisible_axis():
  mesh = train_lib.make_mesh(1)
  tree = {"w": jax.ShapeDtypeStruct((64, 1024), jnp.float32), "b": jnp.zeros(8)}
  sh = train_lib.state_shardings(tree, mesh, fsdp=True)
  assert sh["w"].spec == jax.sharding.PartitionSpec(None, "data")
  assert sh["b"].spec == jax.sharding.PartitionSpec()


def test_optimizer_schedule_clip_and_decay_mask():
  cfg = config_utils.optimizer_config(lr=1.0, warmup_steps=10, schedule="cosine")
  sched = train_lib.learning_rate_schedule(cfg, 100)
  assert float(sched(0)) == 0.0 and float(sched(10)) == pytest.approx(1.0)
  assert float(sched(100)) == pytest.approx(0.0, abs=1e-6)
  assert float(sched(55)) == pytest.approx(0.5, abs=1e-6)
  # Warmup as long as the run (tiny runs): still a valid, finite schedule that peaks at lr.
  sched = train_lib.learning_rate_schedule(cfg, 10)
  assert float(sched(10)) == pytest.approx(1.0) and np.isfinite(float(sched(5)))
  # Weight decay skips vectors (biases, norms) but decays matrices: with zero gradients and
  # lr=1, plain SGD's update is exactly -wd * w for matrices and 0 for vectors.
  cfg = config_utils.optimizer_config(
    lr=1.0, weight_decay=0.5, name="sgd", momentum=0.0, schedule="constant"
  )
  tx = train_lib.make_optimizer(cfg, 10)
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
  zeros = jax.tree.map(jnp.zeros_like, params)
  upd, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(upd["w"], -0.5 * np.ones((2, 2)))
  np.testing.assert_allclose(upd["b"], np.zeros(2))
  # Global-norm clipping bounds the update's norm (lr=1, no decay).
  cfg.weight_decay, cfg.grad_clip = 0.0, 1.0
  tx = train_lib.make_optimizer(cfg, 10)
  big = {"w": 100 * jnp.ones((2, 2)), "b": jnp.zeros(2)}
  upd, _ = tx.update(big, tx.init(params), params)
  assert float(optax.tree.norm(upd)) == pytest.approx(1.0, rel=1e-5)
  cfg.name = "lamb"
  with pytest.raises(ConfigError, match="lamb"):
    train_lib.make_optimizer(cfg, 10)


def _loop(workdir, n_steps, data, ckpt_every=5, keep=3):
  state, step, sh = setup(jax.devices(), ema=0.5)
  ckpt = train_lib.Checkpointer(os.path.join(workdir, "ckpt"), keep=keep, every=ckpt_every)
  writer = train_lib.MetricWriter(workdir, tensorboard=False)
  state = train_lib.train_loop(
    state=state,
    step_fn=step,
    batches=lambda s: stream(data, s),
    num_steps=n_steps,
    data_sharding=sh,
    checkpointer=ckpt,
    writer=writer,
    log_every=5,
    progress=False,
  )
  writer.close()
  ckpt.close()
  return state


def test_resume_is_bit_identical(tmp_path):
  data = blobs()
  straight = _loop(str(tmp_path / "a"), 20, data)
  # "Killed" at step 10 (the loop simply ends there), then a new loop resumes to 20.
  _loop(str(tmp_path / "b"), 10, data)
  resumed = _loop(str(tmp_path / "b"), 20, data)
  chex.assert_trees_all_equal(jax.device_get(straight.params), jax.device_get(resumed.params))
  chex.assert_trees_all_equal(jax.device_get(straight.opt_state), jax.device_get(resumed.opt_state))
  chex.assert_trees_all_equal(
    jax.device_get(straight.ema_params), jax.device_get(resumed.ema_params)
  )
  assert int(resumed.step) == 20
  rows = train_lib.read_metrics(str(tmp_path / "b"))
  assert [r["step"] for r in rows] == [5, 10, 15, 20]
  assert all(np.isfinite(r["loss"]) for r in rows)
  ckpts = sorted(int(d) for d in os.listdir(tmp_path / "b" / "ckpt") if d.isdigit())
  assert ckpts == [10, 15, 20]  # keep=3


def test_corrupt_checkpoint_is_refused_and_older_ones_kept(tmp_path):
  data = blobs()
  _loop(str(tmp_path), 10, data)
  latest = tmp_path / "ckpt" / "10"
  for root, _, files in os.walk(latest):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"not a checkpoint")
  with pytest.raises(CheckpointError, match=r"/10 cannot be restored.*older checkpoints kept"):
    _loop(str(tmp_path), 20, data)
  assert (tmp_path / "ckpt" / "5").exists()  # nothing was deleted


def test_nan_loss_stops_with_the_last_good_checkpoint_intact(tmp_path):
  data = blobs()
  _loop(str(tmp_path), 10, data)
  good = jax.device_get(_loop(str(tmp_path), 10, data).params)
  bad = {"x": np.full_like(data["x"], np.nan), "y": data["y"]}
  with pytest.raises(DivergenceError, match=r"non-finite loss \(nan\) at step 11"):
    _loop(str(tmp_path), 20, bad)
  ckpts = sorted(int(d) for d in os.listdir(tmp_path / "ckpt") if d.isdigit())
  assert max(ckpts) == 10
  again = _loop(str(tmp_path), 10, data)  # restores step 10, which is still the good state
  chex.assert_trees_all_equal(jax.device_get(again.params), good)


def test_metric_writer_jsonl(tmp_path):
  w = train_lib.MetricWriter(str(tmp_path), tensorboard=False, stage="pretrain")
  w.write(3, {"loss": np.float32(1.5), "acc": jnp.array(0.25)})
  w.close()
  with open(tmp_path / "metrics.jsonl") as f:
    (row,) = [json.loads(line) for line in f]
  assert row == {"step": 3, "stage": "pretrain", "loss": 1.5, "acc": 0.25}
  assert train_lib.read_metrics(str(tmp_path), stage="other") == []


def test_init_state_eager_and_jitted_agree():
  mesh = train_lib.make_mesh(1)
  tx = train_lib.make_optimizer(config_utils.optimizer_config(), 10)
  init = lambda k: (Toy().init(k, jnp.zeros((1, DIM)))["params"], {})
  eager, sh1 = train_lib.init_state(init, tx, jax.random.PRNGKey(3), mesh, jit=False)
  jitted, sh2 = train_lib.init_state(init, tx, jax.random.PRNGKey(3), mesh, jit=True)
  chex.assert_trees_all_close(jax.device_get(eager.params), jax.device_get(jitted.params))
  assert jax.tree.map(lambda a, b: a == b, sh1, sh2)
  leaf = jax.tree.leaves(eager.params)[0]
  assert leaf.sharding == jax.tree.leaves(sh1.params)[0]


# One of two processes (2 CPU devices each, gloo) trains a tiny regression through train_loop;
# `batches` records the step it starts from and, past step 5, touches a file so the test knows when
# to send SIGTERM. Preempted -> exit 143 like shared.app; the line printed says where it stopped.
TWO_PROCESS_SCRIPT = """
import json, os, sys, time
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
port, pid, workdir, num_steps, service = sys.argv[1:6]
pid, num_steps = int(pid), int(num_steps)
jax.config.update("jax_enable_preemption_service", service == "on")
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
import jax.numpy as jnp
import numpy as np
from shared import config_utils, train_lib

def loss_fn(params, model_state, batch, rng):
  loss = jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)
  return loss, ({}, model_state)

mesh = train_lib.make_mesh(1)
tx = train_lib.make_optimizer(config_utils.optimizer_config(lr=0.01, warmup_steps=0), num_steps)
state, sharding = train_lib.init_state(
  lambda k: ({"w": jax.random.normal(k, (4, 1))}, {}), tx, jax.random.PRNGKey(0), mesh
)
data_sharding = train_lib.batch_sharding(mesh)
step_fn = train_lib.make_step(train_lib.loss_step(loss_fn), sharding, data_sharding)
starts = []

def batches(start):
  starts.append(start)
  k = start
  while True:
    rng = np.random.default_rng(1000 * k + pid)  # this process's half of global batch k
    x = rng.normal(size=(4, 4)).astype(np.float32)
    yield {"x": x, "y": x.sum(1, keepdims=True)}
    k += 1
    if k == start + 5:
      open(os.path.join(workdir, f"running_{pid}"), "w").close()
    time.sleep(0.05)

ckpt = train_lib.Checkpointer(os.path.join(workdir, "ckpt"), every=1000)
out = {"process": pid}
try:
  state = train_lib.train_loop(
    state=state, step_fn=step_fn, batches=batches, num_steps=num_steps,
    data_sharding=data_sharding, checkpointer=ckpt, log_every=10, progress=False,
  )
  code, out["step"] = 0, int(jax.device_get(state.step))
except train_lib.Preempted:
  code = 143  # `state` was donated to the step: the checkpoint says where it stopped
out.update(start=starts[0], saved=ckpt.latest_step())
ckpt.close()
print(json.dumps(out), flush=True)
sys.exit(code)
"""


def _free_port():
  import socket

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_processes(workdir, num_steps, service, sigterm_to=None, timeout=240):
  env = {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
  }
  port = _free_port()
  args = [str(workdir), str(num_steps), service]
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", TWO_PROCESS_SCRIPT, str(port), str(i), *args],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  try:
    if sigterm_to is not None:
      deadline = time.time() + timeout
      flag = workdir / f"running_{sigterm_to}"
      while not flag.exists() and time.time() < deadline:
        assert all(p.poll() is None for p in procs), "a process ended before the SIGTERM"
        time.sleep(0.05)
      procs[sigterm_to].send_signal(signal.SIGTERM)
    results = []
    for p in procs:
      out, err = p.communicate(timeout=timeout)  # the old per-process flag hangs here
      results.append((p.returncode, out, err))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  # gloo prints its own lines to stdout; ours is the last JSON one.
  lines = lambda out: [line for line in out.splitlines() if line.startswith("{")]
  return [
    (code, json.loads(lines(out)[-1]) if lines(out) else None, err + out[-2000:])
    for code, out, err in results
  ]


@pytest.mark.slow
@pytest.mark.parametrize("service", ["on", "off"])
def test_sigterm_to_one_of_two_processes_saves_the_same_step_on_both(tmp_path, service):
  """'on': JAX's preemption sync manager picks the step; 'off': the flag is all-gathered at the
  loop's boundaries (every 10 steps here). Either way both save one step, stop, and resume it."""
  results = _two_processes(tmp_path, 1000, service, sigterm_to=1)
  for code, _, err in results:
    assert code == 143, err[-3000:]
  (_, a, _), (_, b, _) = results
  stopped = a["saved"]
  assert b["saved"] == stopped
  assert 5 < stopped < 1000
  if service == "off":
    assert stopped % 10 == 0
  steps = sorted(int(d) for d in os.listdir(tmp_path / "ckpt") if d.isdigit())
  assert steps == [stopped]
  # The same command again (a shorter run here) resumes both processes from that step.
  resumed = _two_processes(tmp_path, stopped + 3, service)
  for code, out, err in resumed:
    assert code == 0, err[-3000:]
    assert out["start"] == stopped and out["step"] == out["saved"] == stopped + 3
