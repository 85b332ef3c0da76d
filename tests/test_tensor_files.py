"""`shared.tensor_files`: a params tree round-trips through safetensors + JSON; a file whose
names or shapes differ from the model is one line naming the first difference."""

import json

import jax
import numpy as np
import pytest

from shared import tensor_files
from shared.errors import CheckpointError, DataError


def test_round_trip_and_mismatch(tmp_path):
  params = {"dense": {"kernel": np.ones((3, 2)), "bias": np.zeros(2)}, "scale": np.float32(2.0)}
  tensor_files.write(str(tmp_path), "w.safetensors", params, "w.json", {"what": "toy"})
  assert json.loads((tmp_path / "w.json").read_text()) == {"what": "toy"}
  abstract = jax.tree.map(lambda v: jax.ShapeDtypeStruct(np.shape(v), np.float32), params)
  back = tensor_files.read(str(tmp_path / "w.safetensors"), abstract, described_by="w.json")
  assert back["scale"].shape == () and back["dense"]["kernel"].dtype == np.float32
  jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.float32, params))
  assert tensor_files.mismatch(abstract, tensor_files.flat_float32(params)) is None

  wider = {
    **abstract,
    "dense": {**abstract["dense"], "kernel": jax.ShapeDtypeStruct((3, 4), np.float32)},
  }
  with pytest.raises(DataError, match=r"disagrees with w.json: dense/kernel has shape \(3, 2\), "
                     r"the config says \(3, 4\) \(1 tensor\(s\) differ\)"):  # fmt: skip
    tensor_files.read(
      str(tmp_path / "w.safetensors"), wider, described_by="w.json", error=DataError
    )
  (tmp_path / "w.safetensors").write_bytes(b"not a tensor file")
  with pytest.raises(CheckpointError, match="cannot read"):
    tensor_files.read(str(tmp_path / "w.safetensors"), abstract, described_by="w.json")
