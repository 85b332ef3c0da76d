"""Tests for shared.data: built-in sets, registry and cache, batch streams, TFDS, no-TF import."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from shared import data
from shared.data import registry, shapes, shapes_text
from shared.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {"num_train": 600, "num_val": 50, "num_test": 50, "num_heldout": 200}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def shapes_splits(data_dir):
  return {s: data.load("shapes", s, data_dir=data_dir, **SMALL) for s in shapes.SPLITS}


# Built-in sets.


@pytest.mark.parametrize(
  "name, sizes, image_shape",
  [("digits", (1500, 297), (8, 8, 1)), ("mnist5k", (4000, 1000), (28, 28, 1))],
)
def test_builtin_loads_with_shapes_dtypes_ranges(data_dir, name, sizes, image_shape):
  info = data.info(name)
  assert info["image_shape"] == image_shape and info["num_classes"] == 10
  for split, size in zip(("train", "test"), sizes, strict=True):
    arrays = data.load(name, split, data_dir=data_dir)
    assert arrays["image"].shape == (size, *image_shape)
    # Held as uint8 on the host; float only on the device (`data.to_float`).
    assert arrays["image"].dtype == np.uint8 and arrays["label"].dtype == np.int32
    assert arrays["image"].max() == 255  # Scaled to the full range, not left in 0..16.
    assert data.to_float(arrays["image"]).max() == 1.0
    assert set(np.unique(arrays["label"])) == set(range(10))


def test_builtin_train_and_test_are_disjoint(data_dir):
  train = data.load("digits", "train", data_dir=data_dir)["image"].reshape(-1, 64)
  test = data.load("digits", "test", data_dir=data_dir)["image"].reshape(-1, 64)
  rows = {r.tobytes() for r in train}
  # The digits set has a few exact duplicates; a leak would show as many more.
  assert sum(r.tobytes() in rows for r in test) <= 3


def test_mnist5k_pad_resize_and_channels(data_dir):
  padded = data.load("mnist5k", "test", data_dir=data_dir, image_size=32, channels=3)
  plain = data.load("mnist5k", "test", data_dir=data_dir)
  assert padded["image"].shape == (1000, 32, 32, 3)
  np.testing.assert_array_equal(padded["image"][:, 2:30, 2:30, 0], plain["image"][..., 0])
  assert padded["image"][:, :2].max() == 0.0
  resized = data.load("mnist5k", "test", data_dir=data_dir, image_size=32, resize="resize")
  assert resized["image"].shape == (1000, 32, 32, 1)
  assert data.info("mnist5k", image_size=32, channels=3)["image_shape"] == (32, 32, 3)


def test_mnist5k_missing_file_names_the_path(tmp_path):
  missing = str(tmp_path / "nowhere" / "mnist_5k.csv.gz")
  with pytest.raises(DataError, match="nowhere/mnist_5k.csv.gz"):
    data.load("mnist5k", "train", data_dir=str(tmp_path), path=missing)


def test_same_seed_same_arrays_and_cache_hit_identical(tmp_path, monkeypatch):
  first = data.load("shapes", "val", data_dir=str(tmp_path / "a"), **SMALL)
  again = data.load("shapes", "val", data_dir=str(tmp_path / "b"), **SMALL)
  for k in first:
    np.testing.assert_array_equal(first[k], again[k])
  other_seed = data.load("shapes", "val", data_dir=str(tmp_path / "a"), seed=1, **SMALL)
  assert not np.array_equal(first["image"], other_seed["image"])

  def no_build(*args, **kwargs):
    raise AssertionError("rebuilt instead of reading the cache")

  monkeypatch.setattr(shapes, "sample_attributes", no_build)
  cached = data.load("shapes", "val", data_dir=str(tmp_path / "a"), **SMALL)
  assert set(cached) == set(first)
  for k in first:
    assert cached[k].dtype == first[k].dtype
    np.testing.assert_array_equal(cached[k], first[k])


# shapes.


def test_shapes_fields(shapes_splits):
  info = data.info("shapes")
  arrays = shapes_splits["train"]
  n, k = SMALL["num_train"], info["max_objects"]
  expected = {
    "image": ((n, 32, 32, 3), np.uint8),
    "clean": ((n, 32, 32, 3), np.uint8),
    "label": ((n,), np.int32),
    "shape": ((n, k), np.int32),
    "colour": ((n, k), np.int32),
    "size": ((n, k), np.int32),
    "pos": ((n, k), np.int32),
    "offset": ((n, k, 2), np.float32),
    "n_objects": ((n,), np.int32),
    "caption": ((n, info["caption_length"]), np.int32),
    "question": ((n, info["question_length"]), np.int32),
    "answer": ((n, info["answer_length"]), np.int32),
    "question_type": ((n,), np.int32),
  }
  assert {key: (v.shape, v.dtype) for key, v in arrays.items()} == expected
  present = np.arange(k)[None] < arrays["n_objects"][:, None]
  for key in ("shape", "colour", "size", "pos"):
    assert ((arrays[key] >= 0) == present).all()
  assert set(np.unique(arrays["n_objects"])) == {1, 2}
  label = arrays["shape"][:, 0] * len(info["colour_names"]) + arrays["colour"][:, 0]
  np.testing.assert_array_equal(arrays["label"], label)
  assert info["vocab"][:3] == ["<pad>", "<bos>", "<eos>"]
  assert (info["pad_id"], info["bos_id"], info["eos_id"]) == (0, 1, 2)


def test_shapes_pixels_are_mid_range_not_saturated(shapes_splits):
  for key in ("image", "clean"):
    pixels = data.to_float(shapes_splits["train"][key])
    assert pixels.min() >= 0.03 and pixels.max() <= 0.97, key
  lo, hi = np.percentile(data.to_float(shapes_splits["train"]["image"]), [1, 99])
  assert 0.1 < lo < 0.3 and 0.7 < hi < 0.9
  # The nuisance is there: the noisy image differs from the clean one well beyond 8-bit steps.
  diff = shapes_splits["train"]["image"] - shapes_splits["train"]["clean"]
  assert diff.std() > 0.05


def test_shapes_heldout_combinations_disjoint_from_train(shapes_splits):
  info = data.info("shapes")
  heldout = {
    (info["shape_names"].index(s), info["colour_names"].index(c))
    for s, c in info["heldout_combinations"]
  }
  assert len(heldout) == 3  # 10% of 5 shapes x 6 colours.

  def combos(arrays):
    present = arrays["shape"] >= 0
    return set(
      zip(arrays["shape"][present].tolist(), arrays["colour"][present].tolist(), strict=True)
    )

  for split in ("train", "val", "test"):
    assert not combos(shapes_splits[split]) & heldout, split
  assert combos(shapes_splits["heldout"]) == heldout
  # Every shape and every colour is still seen in training.
  train = combos(shapes_splits["train"])
  assert {s for s, _ in train} == set(range(5)) and {c for _, c in train} == set(range(6))


def test_shapes_captions_name_the_attributes(shapes_splits):
  info = data.info("shapes")
  arrays = shapes_splits["test"]
  for i in range(len(arrays["label"])):
    text = shapes.decode(arrays["caption"][i])
    expected = [
      (
        info["shape_names"][arrays["shape"][i, j]],
        info["colour_names"][arrays["colour"][i, j]],
        info["size_names"][arrays["size"][i, j]],
        info["position_names"][arrays["pos"][i, j]],
      )
      for j in range(arrays["n_objects"][i])
    ]
    assert shapes.parse_caption(text) == expected, text
    for shape_name, colour_name, size_name, _ in expected:
      assert f"{size_name} {colour_name} {shape_name}" in text
  assert shapes.parse_caption("a blue circle .") is None


def test_shapes_answers_are_right(shapes_splits):
  info = data.info("shapes")
  arrays = shapes_splits["train"]
  kinds = info["question_types"]
  seen = set()
  for i in range(len(arrays["label"])):
    q, a = shapes.decode(arrays["question"][i]), shapes.decode(arrays["answer"][i])
    n = arrays["n_objects"][i]
    names = {
      "shape": [info["shape_names"][s] for s in arrays["shape"][i, :n]],
      "colour": [info["colour_names"][c] for c in arrays["colour"][i, :n]],
      "size": [info["size_names"][s] for s in arrays["size"][i, :n]],
      "pos": [info["position_names"][p] for p in arrays["pos"][i, :n]],
    }
    kind = kinds[arrays["question_type"][i]]
    seen.add(kind)
    if kind == "count":
      assert a == ["zero", "one", "two"][n]
    elif kind == "shape":
      assert a == names["shape"][names["pos"].index(q.split(" at the ")[1][:-2])]
    elif kind in ("colour", "size", "where"):
      assert a in names[{"colour": "colour", "size": "size", "where": "pos"}[kind]], (q, a)
    else:
      colour, shape = q.split()[3:5]
      present = any(
        s == shape and c == colour for s, c in zip(names["shape"], names["colour"], strict=True)
      )
      assert a == ("yes" if present else "no"), (q, a)
  assert seen == set(kinds)


def test_shapes_render_reproduces_clean(shapes_splits):
  arrays = shapes_splits["val"]
  attributes = {k: arrays[k] for k in ("shape", "colour", "size", "pos", "offset")}
  np.testing.assert_array_equal(shapes.render(attributes), data.to_float(arrays["clean"]))
  scenes = [[("circle", "red", "large", "center")], [(1, 2, 0, 0), ("cross", "cyan", "small", 8)]]
  images = shapes.render(scenes)
  assert images.shape == (2, 32, 32, 3) and images.dtype == np.float32
  red = np.array([0.85, 0.18, 0.15])
  assert np.abs(images[0, 16, 16] - red).max() < 0.01  # The centre of the centre cell.
  assert np.abs(images[0, 2, 2] - 0.5).max() < 0.01  # Background elsewhere.
  with pytest.raises(DataError, match="hexagon"):
    shapes.render([[("hexagon", "red", "large", "center")]])


def test_shapes_options(data_dir, shapes_splits):
  small = {**SMALL, "num_val": 20}
  by_shape = data.load("shapes", "val", data_dir=data_dir, label="shape", **small)
  np.testing.assert_array_equal(by_shape["label"], by_shape["shape"][:, 0])
  assert data.info("shapes", label="colour")["num_classes"] == 6
  big = data.load("shapes", "val", data_dir=data_dir, resolution=64, **small)
  base = data.load("shapes", "val", data_dir=data_dir, **small)
  assert big["image"].shape == (20, 64, 64, 3)
  np.testing.assert_array_equal(big["caption"], base["caption"])  # Same scenes, more pixels.
  single = data.load("shapes", "val", data_dir=data_dir, max_objects=1, grid=2, **small)
  assert single["shape"].shape == (20, 1) and single["pos"].max() < 4
  with pytest.raises(DataError, match="label"):
    data.load("shapes", "val", data_dir=data_dir, label="texture", **small)


def test_shapes_full_size_builds_in_seconds(tmp_path):
  import time

  start = time.perf_counter()
  arrays = shapes.build("test", str(tmp_path))  # Default sizes: 2,000 images.
  assert len(arrays["image"]) == 2000
  assert time.perf_counter() - start < 10  # ~0.4 s here; 26K images take a few seconds.


def test_text_round_trip():
  ids = shapes_text.encode("what colour is the circle ?", shapes_text.QUESTION_LENGTH)
  assert ids[0] == shapes_text.BOS_ID and shapes_text.EOS_ID in ids
  assert shapes.decode(ids) == "what colour is the circle ?"
  assert shapes.decode(ids[None])[0] == "what colour is the circle ?"


# Registry and errors.


def test_unknown_name_lists_builtins():
  with pytest.raises(DataError, match=r"digits.*mnist5k.*shapes"):
    data.load("imagenet", "train")
  with pytest.raises(DataError, match="nosuch"):
    data.load("digits", "nosuch")
  with pytest.raises(DataError, match="colour_count"):
    data.load("digits", "train", colour_count=3)


def test_empty_split_is_an_error(data_dir):
  with pytest.raises(DataError, match=r"'digits' split 'val' is empty"):
    data.load("digits", "val", data_dir=data_dir)
  with pytest.raises(DataError, match="empty"):
    data.load("shapes", "test", data_dir=data_dir, **{**SMALL, "num_test": 0})


def test_registered_builder_is_validated(tmp_path, monkeypatch):
  monkeypatch.setattr(registry, "REGISTRY", dict(registry.REGISTRY))

  @data.register("toy", splits=("train",), info={"num_classes": 2, "image_shape": (2, 2, 1)})
  def toy(split, data_dir, *, bad_label=False):
    label = np.array([0, 1, 2 if bad_label else 1], np.int32)
    return {"image": np.zeros((3, 2, 2, 1), np.uint8), "label": label}

  arrays = data.load("toy", "train", data_dir=str(tmp_path))
  assert arrays["image"].dtype == np.uint8
  assert data.info("toy") == {
    "name": "toy",
    "splits": ["train"],
    "num_classes": 2,
    "image_shape": (2, 2, 1),
  }
  with pytest.raises(DataError, match="'label' outside the 2 classes"):
    data.load("toy", "train", data_dir=str(tmp_path), bad_label=True)
  with pytest.raises(ValueError, match="already registered"):
    data.register("toy")(toy)


# Batches.


def _rows(n=103):
  return {"x": np.arange(n), "y": np.arange(n) * 10}


def test_batches_deterministic_and_resumable():
  def take(stream, k):
    return [next(stream)["x"] for _ in range(k)]

  full = take(data.batches(_rows(), 16, seed=3, process_index=0, process_count=1), 20)
  again = take(data.batches(_rows(), 16, seed=3, process_index=0, process_count=1), 20)
  np.testing.assert_array_equal(full, again)
  for k in (1, 6, 7, 13):  # 6 steps per epoch: resume inside and at the edge of epochs.
    tail = take(
      data.batches(_rows(), 16, seed=3, start_step=k, process_index=0, process_count=1), 20 - k
    )
    np.testing.assert_array_equal(full[k:], tail)
  epoch0 = np.concatenate(full[:6])
  assert len(set(epoch0.tolist())) == 96  # No row twice within an epoch.
  assert not np.array_equal(full[0], full[6])  # A new permutation each epoch.
  batch = next(data.batches(_rows(), 16, seed=3, process_index=0, process_count=1))
  np.testing.assert_array_equal(batch["y"], batch["x"] * 10)  # Fields stay aligned.
  in_order = next(
    data.batches(_rows(), 16, seed=3, shuffle=False, process_index=0, process_count=1)
  )
  np.testing.assert_array_equal(in_order["x"], np.arange(16))


def test_batches_default_to_jax_process_layout():
  implicit = next(data.batches(_rows(), 16, seed=2))  # One process in tests.
  explicit = next(data.batches(_rows(), 16, seed=2, process_index=0, process_count=1))
  np.testing.assert_array_equal(implicit["x"], explicit["x"])


def test_batches_keep_the_remainder_when_asked():
  stream = data.batches(
    _rows(20), 8, seed=0, drop_remainder=False, process_index=0, process_count=1
  )
  sizes = [len(next(stream)["x"]) for _ in range(6)]
  assert sizes == [8, 8, 4, 8, 8, 4]


def test_batches_shard_the_global_batch_across_processes():
  global_stream = data.batches(_rows(), 16, seed=5, process_index=0, process_count=1)
  shards = [data.batches(_rows(), 16, seed=5, process_index=p, process_count=2) for p in range(2)]
  for _ in range(10):
    whole = next(global_stream)["x"]
    halves = [next(s)["x"] for s in shards]
    assert all(len(h) == 8 for h in halves)
    assert not set(halves[0]) & set(halves[1])
    np.testing.assert_array_equal(np.concatenate(halves), whole)


def test_batches_of_process_local_data_draw_from_the_local_part():
  part = data.Split(_rows(40))
  part.process_local = True
  batch = next(data.batches(part, 16, seed=0, process_index=1, process_count=2))
  assert len(batch["x"]) == 8
  assert data.steps_per_epoch(part, 16, process_count=2) == 5


def test_batch_errors():
  with pytest.raises(DataError, match="larger than the split"):
    data.batches(_rows(10), 16, seed=0, process_index=0, process_count=1)
  with pytest.raises(DataError, match="divisible"):
    data.batches(_rows(), 15, seed=0, process_index=0, process_count=2)


def test_eval_batches_cover_every_row_once():
  batches = list(data.eval_batches(_rows(), 16, process_index=0, process_count=1))
  assert len(batches) == 7 and all(len(b["x"]) == 16 for b in batches)
  real = np.concatenate([b["x"][b["mask"]] for b in batches])
  np.testing.assert_array_equal(real, np.arange(103))
  assert batches[-1]["mask"].sum() == 103 - 96
  shards = [list(data.eval_batches(_rows(), 16, process_index=p, process_count=2)) for p in (0, 1)]
  assert len(shards[0]) == len(shards[1]) == 7
  for whole, a, b in zip(batches, *shards, strict=True):
    np.testing.assert_array_equal(np.concatenate([a["x"], b["x"]]), whole["x"])
    np.testing.assert_array_equal(np.concatenate([a["mask"], b["mask"]]), whole["mask"])


def test_eval_batches_pad_process_local_parts_to_the_same_count():
  parts = [data.Split(_rows(n)) for n in (17, 16)]  # Uneven parts, as TFDS gives.
  for p in parts:
    p.process_local, p.shard_size = True, 17
  counts = [
    len(list(data.eval_batches(p, 16, process_index=i, process_count=2)))
    for i, p in enumerate(parts)
  ]
  assert counts == [3, 3]


# TFDS.


def test_tfds_under_mock_data(tmp_path, monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  calls = []
  real_load = tfds.load

  def spy(name, **kwargs):
    calls.append((name, kwargs["split"], kwargs["data_dir"]))
    return real_load(name, **kwargs)

  monkeypatch.setattr(tfds, "load", spy)
  with tfds.testing.mock_data(num_examples=12):
    arrays = data.load(
      "tfds:mnist:3.0.1", "train", data_dir=str(tmp_path), process_index=1, process_count=2
    )
    info = data.info("tfds:mnist", data_dir=str(tmp_path))
    resized = data.load("tfds:mnist", "test", data_dir=str(tmp_path), image_size=32)
  assert arrays["image"].shape == (12, 28, 28, 1) and arrays["image"].dtype == np.uint8
  assert arrays["label"].dtype == np.int32 and arrays["label"].max() < 10
  assert arrays.process_local
  expected_split = tfds.split_for_jax_process("train", process_index=1, process_count=2)
  assert calls[0] == ("mnist:3.0.1", expected_split, str(tmp_path))
  assert info["num_classes"] == 10 and info["image_shape"] == (28, 28, 1)
  assert resized["image"].shape == (12, 32, 32, 1)
  with pytest.raises(DataError, match="bad options"):
    data.load("tfds:mnist", "train", shuffle_seed=1)


def test_tfds_keeps_named_features_and_text(tmp_path):
  """coco_captions has ragged boxes and 5+ captions per image: `features` keeps the image and
  the captions (joined by TEXT_SEPARATOR) and drops the rest before batching."""
  tfds = pytest.importorskip("tensorflow_datasets")
  from shared.data import tfds_source

  opts = dict(data_dir=str(tmp_path), image_size=16, process_index=0, process_count=1)
  with tfds.testing.mock_data(num_examples=5):
    arrays = data.load("tfds:coco_captions", "val", features=("image", "captions/text"), **opts)
    raw = tfds.load("coco_captions", split="val", data_dir=str(tmp_path))
    first = [t.decode() for t in next(iter(tfds.as_numpy(raw)))["captions"]["text"]]
    with pytest.raises(DataError, match=r"no features \['caption'\].*captions/text"):
      data.load("tfds:coco_captions", "val", features=("image", "caption"), **opts)
  assert set(arrays) == {"image", "captions/text"}
  assert arrays["image"].shape == (5, 16, 16, 3)
  assert arrays["captions/text"].dtype.kind == "U"
  assert arrays["captions/text"][0].split(tfds_source.TEXT_SEPARATOR) == first


def test_tfds_set_not_prepared_says_how_to_prepare_it(tmp_path, monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")

  def failing_load(*args, **kwargs):
    raise ModuleNotFoundError("No module named 'some_preparation_dependency'")

  monkeypatch.setattr(tfds, "load", failing_load)
  opts = dict(data_dir=str(tmp_path), process_index=0, process_count=1)
  with pytest.raises(DataError, match=r"not prepared in .*tfds build mnist --data_dir"):
    data.load("tfds:mnist", "train", **opts)


def test_import_without_tensorflow(tmp_path):
  script = textwrap.dedent(
    """
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
      def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
          raise ModuleNotFoundError(f"No module named {name!r} (blocked)")

    sys.meta_path.insert(0, Block())
    import shared.data as data
    from shared.errors import DataError

    arrays = data.load("digits", "test", data_dir=sys.argv[1])
    assert arrays["image"].shape == (297, 8, 8, 1)
    try:
      data.load("tfds:mnist", "train")
    except DataError as e:
      assert "pip install '.[data]'" in str(e), e
    else:
      raise AssertionError("no DataError without TFDS")
    assert not any(m.startswith("tensorflow") for m in sys.modules)
    print("ok")
    """
  )
  result = subprocess.run(
    [sys.executable, "-c", script, str(tmp_path)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
