"""Streaming input (grain, ArrayRecord): round trip, process shards, exact resume, checkpoints."""

import json
import os
import subprocess
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from shared import config_utils, train_lib
from shared.data import streaming
from shared.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, CLASSES = 64, 4


def uint8_split(n=N, seed=0):
  """n 8x8x3 uint8 images whose mean brightness gives the label: learnable by a linear model."""
  rng = np.random.default_rng(seed)
  label = (np.arange(n) % CLASSES).astype(np.int32)
  image = rng.integers(0, 64, (n, 8, 8, 3)) + 48 * label[:, None, None, None]
  return {"image": image.astype(np.uint8), "label": label}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  arrays = uint8_split()
  path = str(tmp_path_factory.mktemp("ar") / "train.array_record")
  paths = streaming.write_array_record(arrays, path, num_shards=3)
  return arrays, path, paths


def take(it, k):
  return [next(it) for _ in range(k)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b, strict=True):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_write_and_read_back_equal_and_uint8(written, tmp_path):
  arrays, prefix, paths = written
  assert [os.path.basename(p) for p in paths] == [
    f"train.array_record-0000{i}-of-00003" for i in range(3)
  ]
  assert not [f for f in os.listdir(os.path.dirname(prefix)) if ".tmp-" in f]  # renamed, atomic
  source = streaming.ArrayRecordSource(prefix)  # the prefix finds all three shards
  assert len(source) == N and source.paths == paths
  rows = source.__getitems__(list(range(N)))
  assert rows[5].keys() == {"image", "label"}
  assert rows[5]["image"].dtype == np.uint8 and rows[5]["image"].shape == (8, 8, 3)
  np.testing.assert_array_equal(np.stack([r["image"] for r in rows]), arrays["image"])
  np.testing.assert_array_equal([int(r["label"]) for r in rows], arrays["label"])
  np.testing.assert_array_equal(source[63]["image"], arrays["image"][63])
  # One file, and fixed-width strings (captions) survive too.
  text = {"caption": np.array(["a red cube", "two spheres"]), "x": np.float32([1.5, -2])}
  one = streaming.write_array_record(text, str(tmp_path / "text.array_record"))
  back = streaming.ArrayRecordSource(one[0])
  assert str(back[1]["caption"]) == "two spheres" and back[0]["x"].dtype == np.float32
  with pytest.raises(DataError, match=r"no ArrayRecord file .*missing\.array_record"):
    streaming.ArrayRecordSource(str(tmp_path / "missing.array_record"))
  os.symlink(paths[0], str(tmp_path / "p-00000-of-00002"))  # shard 1 of 2 is missing
  with pytest.raises(DataError, match="incomplete"):
    streaming.ArrayRecordSource(str(tmp_path / "p"))


def test_two_processes_read_disjoint_rows_that_form_the_global_batch(written):
  _, prefix, _ = written
  split = streaming.StreamingSplit.open(prefix)
  one = take(streaming.batches(split, 16, seed=1, process_index=0, process_count=1), 8)
  p0 = take(streaming.batches(split, 16, seed=1, process_index=0, process_count=2), 8)
  p1 = take(streaming.batches(split, 16, seed=1, process_index=1, process_count=2), 8)
  for g, a, b in zip(one, p0, p1, strict=True):
    assert a["image"].shape == (8, 8, 8, 3) and a["image"].dtype == np.uint8
    np.testing.assert_array_equal(np.concatenate([a["label"], b["label"]]), g["label"])
    np.testing.assert_array_equal(np.concatenate([a["image"], b["image"]]), g["image"])
  # Over an epoch (4 steps) the two shards are disjoint and cover the split; epochs differ.
  ids = lambda bs: [r for b in bs for r in _row_ids(b)]
  first0, first1 = ids(p0[:4]), ids(p1[:4])
  assert not set(first0) & set(first1) and sorted(first0 + first1) == list(range(N))
  assert ids(one[:4]) != ids(one[4:]) and sorted(ids(one[4:])) == list(range(N))


def _row_ids(batch):
  """Which rows a batch holds: every image of `uint8_split` is distinct, its first bytes say."""
  arrays = uint8_split()
  keys = {arrays["image"][i].tobytes(): i for i in range(N)}
  return [keys[im.tobytes()] for im in batch["image"]]


TWO_PROCESS_SCRIPT = """
import json, sys
import jax
import numpy as np
jax.config.update("jax_cpu_collectives_implementation", "gloo")
port, pid, prefix, ckdir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
from shared import train_lib
from shared.data import streaming
it = streaming.batches(streaming.StreamingSplit.open(prefix), 16, seed=7)  # jax's process
rows = np.concatenate([next(it)["image"] for _ in range(4)])  # one epoch: 4 steps of 8 rows here
with train_lib.Checkpointer(ckdir, every=1) as ckpt:
  ckpt.save(4, {"w": np.arange(3.0)}, data_state=it.get_state())
  restored = ckpt.restore_data(4)
out = {"process": jax.process_index(), "count": jax.process_count(), "step": restored["step"]}
out["rows"] = rows.reshape(len(rows), -1).tolist()
out["state_ok"] = restored == it.get_state()
print(json.dumps(out))
"""


@pytest.mark.slow
def test_two_real_processes_read_disjoint_shards_and_checkpoint_their_own_state(written, tmp_path):
  _, prefix, _ = written
  port = _free_port()
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", TWO_PROCESS_SCRIPT, str(port), str(i), prefix, str(tmp_path / "ck")],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  outs = []
  for p in procs:
    out, err = p.communicate(timeout=240)
    assert p.returncode == 0, err[-3000:]
    outs.append(json.loads(out.strip().splitlines()[-1]))
  assert [o["process"] for o in outs] == [0, 1] and all(o["count"] == 2 for o in outs)
  arrays = uint8_split()
  keys = {arrays["image"][i].tobytes(): i for i in range(N)}
  seen = [[keys[np.uint8(r).tobytes()] for r in o["rows"]] for o in outs]
  assert len(seen[0]) == len(seen[1]) == N // 2
  assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(N))
  assert all(o["state_ok"] and o["step"] == 4 for o in outs)
  files = sorted(os.listdir(tmp_path / "ck" / "4" / "data"))
  assert [f for f in files if f.endswith(".json")] == ["process_0-of-2.json", "process_1-of-2.json"]


def _free_port():
  import socket

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_resume_mid_epoch_from_state_or_start_step(written, drop_remainder):
  _, prefix, _ = written
  split = streaming.StreamingSplit.open(prefix)
  # 64 rows in batches of 24: 2 steps an epoch (3 with the smaller last batch of 16).
  opts = dict(seed=3, drop_remainder=drop_remainder, process_index=0, process_count=1)
  straight = take(streaming.batches(split, 24, **opts), 9)
  assert streaming.steps_per_epoch(split, 24, drop_remainder=drop_remainder) == (
    2 if drop_remainder else 3
  )
  if not drop_remainder:
    assert [len(b["label"]) for b in straight[:3]] == [24, 24, 16]
  k = 4  # mid-epoch for drop_remainder=False, and past the first epochs either way
  it = streaming.batches(split, 24, **opts)
  take(it, k)
  state = json.loads(json.dumps(it.get_state()))  # what a checkpoint holds
  assert state["step"] == k
  fresh = streaming.batches(split, 24, **opts)
  fresh.set_state(state)
  assert_batches_equal(take(fresh, 5), straight[k:])
  assert_batches_equal(take(streaming.batches(split, 24, start_step=k, **opts), 5), straight[k:])
  # A state from a start_step iterator restores the same stream.
  late = streaming.batches(split, 24, start_step=2, **opts)
  take(late, 2)
  again = streaming.batches(split, 24, **opts)
  again.set_state(late.get_state())
  assert_batches_equal(take(again, 5), straight[k:])
  other = streaming.batches(split, 16, **opts)
  with pytest.raises(DataError, match=r"batch_size=24 \(now 16\)"):
    other.set_state(state)


def test_worker_processes_give_the_same_stream_and_states_cross_worker_counts(written):
  _, prefix, _ = written
  split = streaming.StreamingSplit.open(prefix)
  opts = dict(seed=5, process_index=0, process_count=1)
  straight = take(streaming.batches(split, 16, **opts), 6)
  it = streaming.batches(split, 16, worker_count=1, **opts)
  try:
    assert_batches_equal(take(it, 3), straight[:3])
    state = json.loads(json.dumps(it.get_state()))
  finally:
    it.close()
  inline = streaming.batches(split, 16, **opts)  # 0 workers: reopens at the saved step
  inline.set_state(state)
  assert_batches_equal(take(inline, 3), straight[3:])


# train_loop + Checkpointer end to end.


class Linear(nn.Module):
  @nn.compact
  def __call__(self, image):
    x = image.astype(jnp.float32).reshape(image.shape[0], -1) / 255.0  # uint8 -> float on device
    return nn.Dense(CLASSES)(x)


def loss_fn(params, model_state, batch, rng):
  del rng
  logits = Linear().apply({"params": params}, batch["image"])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
  return loss, ({}, model_state)


def setup():
  mesh = train_lib.make_mesh(1)
  tx = train_lib.make_optimizer(config_utils.optimizer_config(lr=0.1, warmup_steps=2), 12)
  init = lambda k: (Linear().init(k, jnp.zeros((1, 8, 8, 3), jnp.uint8))["params"], {})
  state, sharding = train_lib.init_state(init, tx, jax.random.PRNGKey(0), mesh)
  data_sharding = train_lib.batch_sharding(mesh)
  step = train_lib.make_step(train_lib.loss_step(loss_fn), sharding, data_sharding)
  return state, step, data_sharding


def loop(ckdir, num_steps, batches, every=3):
  state, step, data_sharding = setup()
  with train_lib.Checkpointer(ckdir, keep=5, every=every) as ckpt:
    return train_lib.train_loop(
      state=state,
      step_fn=step,
      batches=batches,
      num_steps=num_steps,
      data_sharding=data_sharding,
      checkpointer=ckpt,
      log_every=3,
      progress=False,
    )


def test_train_loop_resumes_the_stream_from_the_checkpointed_iterator_state(written, tmp_path):
  _, prefix, _ = written
  split = streaming.StreamingSplit.open(prefix)
  stream = lambda s: streaming.batches(split, 16, seed=2, start_step=s)
  straight = loop(str(tmp_path / "a"), 12, stream)
  # "Killed" after step 6, then resumed to 12. The resumed factory ignores start_step, so only
  # the iterator state restored from the checkpoint can put the stream at step 6.
  loop(str(tmp_path / "b"), 6, stream)
  data_file = tmp_path / "b" / "6" / "data" / "process_0-of-1.json"
  assert json.loads(data_file.read_text())["step"] == 6
  resumed = loop(str(tmp_path / "b"), 12, lambda s: streaming.batches(split, 16, seed=2))
  assert int(resumed.step) == 12
  chex.assert_trees_all_equal(jax.device_get(straight.params), jax.device_get(resumed.params))
  chex.assert_trees_all_equal(jax.device_get(straight.opt_state), jax.device_get(resumed.opt_state))
  # Without the restored state the ignoring factory would have replayed steps 0..5: different.
  replayed = loop(str(tmp_path / "c"), 6, stream)
  assert not np.array_equal(
    jax.device_get(replayed.params["Dense_0"]["kernel"]),
    jax.device_get(resumed.params["Dense_0"]["kernel"]),
  )


def test_old_state_only_checkpoint_still_restores_and_resumes(written, tmp_path):
  import orbax.checkpoint as ocp

  _, prefix, _ = written
  split = streaming.StreamingSplit.open(prefix)
  stream = lambda s: streaming.batches(split, 16, seed=2, start_step=s)
  straight = loop(str(tmp_path / "a"), 12, stream)
  at6 = loop(str(tmp_path / "tmp"), 6, stream)
  # A checkpoint as Checkpointer wrote them before the data item: StandardSave of the state only.
  options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
  with ocp.CheckpointManager(str(tmp_path / "old"), options=options) as mngr:
    mngr.save(6, args=ocp.args.StandardSave(at6), force=True)
    mngr.wait_until_finished()
  assert sorted(os.listdir(tmp_path / "old" / "6")) == [
    "_CHECKPOINT_METADATA",
    "commit_success.txt",
    "default",
  ]
  with train_lib.Checkpointer(str(tmp_path / "old")) as ckpt:
    state = ckpt.restore(6, setup()[0])
    assert ckpt.restore_data(6) is None
  chex.assert_trees_all_equal(jax.device_get(state.params), jax.device_get(at6.params))
  # train_loop resumes from it (the stream from start_step), and adds its data item from then on.
  resumed = loop(str(tmp_path / "old"), 12, stream)
  chex.assert_trees_all_equal(jax.device_get(straight.params), jax.device_get(resumed.params))
  assert (tmp_path / "old" / "9" / "data").is_dir()
  # A checkpoint with the data item is still what a plain StandardRestore reads.
  with ocp.CheckpointManager(str(tmp_path / "old"), options=options) as mngr:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, setup()[0])
    plain = mngr.restore(12, args=ocp.args.StandardRestore(abstract))
  chex.assert_trees_all_equal(jax.device_get(plain.params), jax.device_get(resumed.params))


def test_bad_input_is_a_clear_data_error(written):
  _, prefix, _ = written
  split = streaming.StreamingSplit.open(prefix)
  with pytest.raises(DataError, match="batch_size 15 must be positive and divisible by the 2"):
    streaming.batches(split, 15, seed=0, process_index=0, process_count=2)
  with pytest.raises(DataError, match=r"batch_size 128 is larger than the split \(64 rows\)"):
    streaming.batches(split, 128, seed=0, process_index=0, process_count=1)
  with pytest.raises(DataError, match="does not stream"):
    streaming.open_source("shapes", "train")


def test_tfds_source_under_mock_data(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=20):
    split = streaming.open_source("tfds:mnist", "train", data_dir=str(tmp_path))
    assert len(split) == 20
    batch = next(streaming.batches(split, 8, seed=0, process_index=1, process_count=2))
  assert batch["image"].shape == (4, 28, 28, 1) and batch["image"].dtype == np.uint8
  assert batch["label"].dtype == np.int32
