"""The core's sub-run kit: workdir files (atomic JSON, cached results, params, state dicts) and
compiled-once stages / padded batched inference."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shared import stages, train_lib, workdir
from shared.errors import CheckpointError, DataError


def test_write_json_is_atomic_and_numpy_safe(tmp_path, monkeypatch):
  path = tmp_path / "a" / "b.json"
  workdir.write_json(str(path), {"x": np.float32(1.5), "y": np.arange(3)})
  assert json.loads(path.read_text()) == {"x": 1.5, "y": [0, 1, 2]}

  def boom(*_, **__):
    raise KeyboardInterrupt  # killed inside the write

  monkeypatch.setattr(json, "dump", boom)
  with pytest.raises(KeyboardInterrupt):
    workdir.write_json(str(path), {"x": 2})
  monkeypatch.undo()
  assert json.loads(path.read_text())["x"] == 1.5  # the previous file, whole
  assert sorted(p.name for p in path.parent.iterdir()) == ["b.json"]  # no temporary left


def test_read_json_and_cached_result(tmp_path):
  path = str(tmp_path / "r.json")
  assert workdir.read_json(path) is None
  calls = []
  compute = lambda: calls.append(1) or {"v": 3}
  assert workdir.cached_result(path, compute) == {"v": 3}
  assert workdir.cached_result(path, compute) == {"v": 3} and len(calls) == 1
  (tmp_path / "r.json").write_text('{"v": ')
  with pytest.raises(CheckpointError, match=r"r\.json is corrupt.*delete it"):
    workdir.read_json(path)


def test_params_round_trip_and_state_dict_formats(tmp_path):
  params = {"dense": {"kernel": np.ones((2, 3), np.float32), "bias": np.zeros(3, np.float32)}}
  workdir.save_params(str(tmp_path / "p.npz"), params)
  back = workdir.load_params(str(tmp_path / "p.npz"))
  assert jax.tree.map(np.shape, back) == jax.tree.map(np.shape, params)
  from safetensors.numpy import save_file

  save_file({"w": np.arange(4, dtype=np.float32)}, str(tmp_path / "w.safetensors"))
  assert workdir.read_state_dict(str(tmp_path / "w.safetensors"))["w"].tolist() == [0, 1, 2, 3]
  with pytest.raises(DataError, match="not found"):
    workdir.read_state_dict(str(tmp_path / "none.npz"))
  (tmp_path / "bad.safetensors").write_bytes(b"junk")
  with pytest.raises(DataError, match="cannot read"):
    workdir.read_state_dict(str(tmp_path / "bad.safetensors"))
  with pytest.raises(DataError, match="unknown weights format"):
    (tmp_path / "w.h5").write_bytes(b"")
    workdir.read_state_dict(str(tmp_path / "w.h5"))


def test_compiled_builds_once_per_key():
  stages.clear_compiled()
  built = []
  key = stages.stage_key({"width": 4}, jax.ShapeDtypeStruct((2, 3), jnp.float32), "sgd")
  same = stages.stage_key({"width": 4}, np.zeros((2, 3), np.float32), "sgd")
  assert key == same and key != stages.stage_key({"width": 8}, np.zeros((2, 3)), "sgd")
  for _ in range(3):
    stages.compiled(key, lambda: built.append(1) or object())
  assert len(built) == 1


def test_batched_apply_pads_to_one_shape_and_trims():
  shapes = []

  def fn(x, y):
    shapes.append(x.shape)
    return {"sum": x.sum(axis=1) + y, "x": x}

  x = np.arange(22, dtype=np.float32).reshape(11, 2)
  y = np.ones(11, np.float32)
  out = stages.batched_apply(fn, (x, y), 4)
  np.testing.assert_array_equal(out["sum"], x.sum(1) + 1)
  assert set(shapes) == {(4, 2)}
  mesh = train_lib.make_mesh()
  sharded = stages.batched_apply(
    jax.jit(lambda a: a * 2), x, 3, sharding=train_lib.batch_sharding(mesh)
  )
  np.testing.assert_array_equal(sharded, x * 2)  # batch rounded up to the 8 devices
