"""`cifar_grid`: CIFAR-10 objects in a 2x2 grid, built from a fake prepared cifar10 (and the real
one where it is prepared)."""

import itertools
import os

import numpy as np
import pytest

from shared import data
from shared.data import cifar_grid as cg
from shared.data import real_sets
from shared.errors import DataError
from tests.fake_cifar10 import write_prepared_cifar10

N_TRAIN, N_TEST = 300, 100  # Fake CIFAR-10: 30 / 10 images a class; 'val' pools the last 30.
FIRST_VAL = N_TRAIN - N_TRAIN // 10
SIZES = dict(num_train=200, num_val=40, num_test=40, num_heldout=40)


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
  """A data dir with a prepared cifar10 entry of random (so distinct) images, and its arrays."""
  root = tmp_path_factory.mktemp("data")
  return str(root), write_prepared_cifar10(root, N_TRAIN, N_TEST)


def _load(fake, split, **options):
  return data.load("cifar_grid", split, data_dir=fake[0], **{**SIZES, **options})


def _cells(image):
  """[N, 64, 64, 3] -> [N, 4, 32, 32, 3], cells in reading order."""
  n = len(image)
  return image.reshape(n, 2, 32, 2, 32, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, 4, 32, 32, 3)


def _scene_objects(arrays, i):
  k = arrays["n_objects"][i]
  return list(zip(arrays["cls"][i, :k].tolist(), arrays["pos"][i, :k].tolist(), strict=True))


def test_fields_shapes_and_dtypes(fake):
  info = data.info("cifar_grid", **SIZES)
  assert info["num_classes"] == 10 and info["image_shape"] == (64, 64, 3)
  assert info["class_names"] == list(real_sets.CIFAR10_CLASSES)
  assert set(info["class_names"]) <= set(info["vocab"])
  assert info["position_names"] == ["top left", "top right", "bottom left", "bottom right"]
  assert info["sizes"] == {"train": 200, "val": 40, "test": 40, "heldout": 40}
  for split in cg.SPLITS:
    a = _load(fake, split)
    n = info["sizes"][split]
    assert a["image"].shape == (n, 64, 64, 3) and a["image"].dtype == np.uint8
    np.testing.assert_array_equal(a["clean"], a["image"])
    expected = {
      "cls": (n, 2), "pos": (n, 2), "source": (n, 2), "label": (n,), "n_objects": (n,),
      "caption": (n, info["caption_length"]), "question": (n, info["question_length"]),
      "answer": (n, info["answer_length"]), "question_type": (n,),
    }  # fmt: skip
    for key, shape in expected.items():
      assert a[key].shape == shape and a[key].dtype == np.int32, key
    present = np.arange(2)[None] < a["n_objects"][:, None]
    assert set(a["n_objects"].tolist()) == ({2} if split == "heldout" else {1, 2})
    for key in ("cls", "pos", "source"):
      assert np.all((a[key] >= 0) == present), key
    np.testing.assert_array_equal(a["label"], a["cls"][:, 0])
    two = a["n_objects"] == 2
    assert np.all(a["pos"][two, 0] < a["pos"][two, 1])  # distinct cells, reading order
    assert a["pos"].max() <= 3 and a["cls"].max() <= 9
    assert np.all(a["question_type"] < len(info["question_types"]))


def test_object_cells_are_whole_images_of_the_right_cifar_split(fake):
  _, cifar = fake
  index = {
    name: {img.tobytes(): r for r, img in zip(rows, cifar[src]["image"][rows], strict=True)}
    for name, src, rows in (
      ("train", "train", range(FIRST_VAL)),
      ("val", "train", range(FIRST_VAL, N_TRAIN)),
      ("test", "test", range(N_TEST)),
    )
  }
  used = {}
  for split in cg.SPLITS:
    a = _load(fake, split)
    pool = {"heldout": "test"}.get(split, split)
    src = "train" if pool in ("train", "val") else "test"
    cells = _cells(a["image"])
    used[split] = set()
    for i in range(len(cells)):
      sources = a["source"][i]
      objects = {p: (c, s) for (c, p), s in zip(_scene_objects(a, i), sources, strict=False)}
      for cell in range(4):
        if cell not in objects:
          assert np.all(cells[i, cell] == 128), (split, i, cell)
          continue
        row = index[pool].get(cells[i, cell].tobytes())
        assert row is not None, f"{split} scene {i} cell {cell} is not an image of its pool"
        assert row == objects[cell][1]
        assert cifar[src]["label"][row] == objects[cell][0]
        used[split].add(row)
  assert used["train"].isdisjoint(used["val"])
  # Each class's pool is used in a seeded order before any image repeats.
  a = _load(fake, "test")
  for c in range(10):
    taken = a["source"][a["cls"] == c]
    assert len(set(taken.tolist())) == min(len(taken), 10)


def test_text_describes_the_objects(fake):
  names, positions = cg.CLASSES, cg.POSITIONS
  for split in cg.SPLITS:
    a = _load(fake, split)
    for i in range(len(a["image"])):
      objects = _scene_objects(a, i)
      caption = cg.decode(a["caption"][i])
      assert cg.UNK_ID not in a["caption"][i]
      assert cg.parse_caption(caption) == [(names[c], positions[p]) for c, p in objects]
      assert cg.parse_caption(a["caption"][i]) == cg.parse_caption(caption)
      question, answer = cg.decode(a["question"][i]), cg.decode(a["answer"][i])
      kind = cg.QUESTION_TYPES[a["question_type"][i]]
      classes = [names[c] for c, _ in objects]
      where = {positions[p]: names[c] for c, p in objects}
      if kind == "where":
        asked = question.removeprefix("where is the ").removesuffix(" ?")
        assert classes.count(asked) == 1 and where[answer] == asked
      elif kind == "what":
        cell = question.removeprefix("what is at the ").removesuffix(" ?")
        assert cell in positions and answer == where.get(cell, "nothing")
      elif kind == "count":
        assert question == "how many objects are there ?"
        assert answer == ("one", "two")[len(objects) - 1]
      else:
        article, asked = question.removeprefix("is there ").removesuffix(" ?").split()
        assert asked in names and article == ("an" if asked[0] in "aeiou" else "a")
        assert answer == ("yes" if asked in classes else "no")
  a = _load(fake, "train")
  assert set(a["question_type"].tolist()) == {0, 1, 2, 3}
  answers = cg.decode(a["answer"])
  assert "nothing" in answers and "yes" in answers and "no" in answers


def test_caption_example_and_parse_rejects_malformed():
  text = cg.caption_text([(3, 0), (8, 3)])
  assert text == "a cat at the top left and a ship at the bottom right ."
  assert cg.parse_caption(text) == [("cat", "top left"), ("ship", "bottom right")]
  assert cg.parse_caption(cg.encode(text, 16)) == [("cat", "top left"), ("ship", "bottom right")]
  assert cg.parse_caption("an airplane at the bottom left .") == [("airplane", "bottom left")]
  for bad in (
    "",
    "a cat at the top left",  # no full stop
    "a lion at the top left .",
    "a cat at the middle .",
    "a cat on the top left .",
    "a cat at the top left and .",
  ):
    assert cg.parse_caption(bad) is None, bad


def test_heldout_pairs_never_in_train_val_test_and_always_in_heldout(fake):
  for fraction in (0.1, 0.3):
    pairs = cg.heldout_pairs(0, fraction)
    assert len(pairs) == round(fraction * 45) and len(set(pairs)) == len(pairs)
    assert all(a < b for a, b in pairs)
    names = data.info("cifar_grid", heldout_fraction=fraction)["heldout_pairs"]
    assert names == [(cg.CLASSES[a], cg.CLASSES[b]) for a, b in pairs]
    for split in cg.SPLITS:
      a = _load(fake, split, heldout_fraction=fraction)
      scene_pairs = [
        tuple(sorted((x, y)))
        for i in range(len(a["cls"]))
        for (x, _), (y, _) in itertools.combinations(_scene_objects(a, i), 2)
      ]
      if split == "heldout":
        assert len(scene_pairs) == len(a["cls"]) and set(scene_pairs) <= set(pairs)
        assert len(set(scene_pairs)) > 1
        assert np.any(a["cls"][:, 0] < a["cls"][:, 1]) and np.any(a["cls"][:, 0] > a["cls"][:, 1])
      else:
        assert not set(scene_pairs) & set(pairs), split
        assert any(x != y for x, y in scene_pairs)  # two-object scenes of other pairs do occur
  first = cg.heldout_pairs(0)
  assert len({c for p in first for c in p}) == 2 * len(first)  # no class in two held-out pairs
  assert first == cg.heldout_pairs(0) and first != cg.heldout_pairs(1)


def test_deterministic_from_seed_and_cached_per_options(fake):
  a = _load(fake, "train")
  cache = os.path.join(fake[0], "cifar_grid")
  files = set(os.listdir(cache))
  b = _load(fake, "train")  # from the cache
  assert set(os.listdir(cache)) == files
  direct = cg.build("train", fake[0], **SIZES)  # built again, no cache
  for key in direct:
    np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(a[key], direct[key])
  other = _load(fake, "train", seed=1)
  assert not np.array_equal(other["image"], a["image"])
  assert not np.array_equal(other["caption"], a["caption"])
  _load(fake, "train", background=0)
  assert len(set(os.listdir(cache)) - files) == 2  # seed and background are in the cache key


def test_options_background_and_object_counts(fake):
  a = _load(fake, "test", background=(255, 0, 0))
  empty = a["n_objects"] == 1
  cells = _cells(a["image"])
  for i in np.flatnonzero(empty):
    for cell in set(range(4)) - {int(a["pos"][i, 0])}:
      assert np.all(cells[i, cell] == (255, 0, 0))
  four = _load(fake, "train", min_objects=3, max_objects=4)
  assert set(four["n_objects"].tolist()) == {3, 4} and four["cls"].shape == (200, 4)
  assert four["caption"].shape[1] == cg.caption_length(4)
  pairs = set(cg.heldout_pairs(0))
  for i in range(len(four["cls"])):
    objects = _scene_objects(four, i)
    assert len({p for _, p in objects}) == len(objects)
    assert (
      not {tuple(sorted((x, y))) for (x, _), (y, _) in itertools.combinations(objects, 2)} & pairs
    )
    assert cg.parse_caption(four["caption"][i]) == [
      (cg.CLASSES[c], cg.POSITIONS[p]) for c, p in objects
    ]
  assert set(_load(fake, "train", min_objects=1, max_objects=1)["n_objects"].tolist()) == {1}
  with pytest.raises(DataError, match="heldout"):
    _load(fake, "heldout", max_objects=1)
  with pytest.raises(DataError, match="heldout"):
    _load(fake, "heldout", heldout_fraction=0.0)
  with pytest.raises(DataError, match="min_objects"):
    _load(fake, "train", max_objects=5)
  with pytest.raises(DataError, match="background"):
    _load(fake, "train", background=300)
  with pytest.raises(DataError, match="heldout_fraction"):
    _load(fake, "train", heldout_fraction=1.0)


def test_unprepared_cifar10_is_the_one_line_cifar10_error(tmp_path):
  with pytest.raises(DataError) as theirs:
    data.load("cifar10", "train", data_dir=str(tmp_path))
  for split in ("train", "heldout"):
    with pytest.raises(DataError) as ours:
      data.load("cifar_grid", split, data_dir=str(tmp_path), num_heldout=4)
    assert "\n" not in str(ours.value)
    assert str(ours.value) == str(theirs.value)
    assert "python -m shared.data.prepare cifar10" in str(ours.value)
  assert not (tmp_path / "cifar_grid").exists()


@pytest.mark.real_data
def test_real_cifar10_tiny(tmp_path):
  """On the prepared CIFAR-10 (skipped where it is not): cells are its images, labels its own."""
  real = data.default_data_dir()
  if not real_sets.is_prepared("cifar10", real):
    pytest.skip("cifar10 is not prepared (python -m shared.data.prepare cifar10)")
  os.symlink(os.path.join(real, "cifar10"), tmp_path / "cifar10")  # cache in tmp, not in $HOME
  for split, src in (("val", "train"), ("heldout", "test")):
    a = data.load("cifar_grid", split, data_dir=str(tmp_path), num_val=16, num_heldout=16)
    cifar = data.load("cifar10", src, data_dir=real)
    cells = _cells(a["image"])
    for i in range(16):
      for (c, p), s in zip(_scene_objects(a, i), a["source"][i], strict=False):
        np.testing.assert_array_equal(cells[i, p], cifar["image"][s])
        assert cifar["label"][s] == c
    if split == "val":
      assert a["source"][a["source"] >= 0].min() >= 45_000
