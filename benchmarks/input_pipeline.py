"""Input speed: batches/s of the in-memory stream and the grain (ArrayRecord) stream.

    python -m benchmarks.input_pipeline --what memory --batch 512 --steps 200
    python -m benchmarks.input_pipeline --what grain --batch 512 --steps 200 --workers 0,2
    python -m benchmarks.input_pipeline --data cifar10 --what memory,grain --feed

A CIFAR-shaped uint8 split (--rows x 32x32x3 + int32 labels, synthetic, seeded; or the prepared
train split of --data) is batched as a training run would (shuffled, one process). By default
only the host side is timed; with --feed each batch also goes to the device (uint8, as
`train_lib.global_batch` sends it) and through the unlearnable victim's augmentation there
(`to_float`, then pad-4 crop and flip, jitted), blocking on the result: the whole input side of
a ResNet-18 victim step, to set against that step's own rate.
The grain case first writes the split to ArrayRecord under --dir (a temporary folder by default).
Prints one JSON line per case: batches_per_s, img_per_s, and for grain the time to the first
batch (workers starting) and to write the files.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np


def synthetic_cifar(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {
    "image": rng.integers(0, 256, (rows, 32, 32, 3), dtype=np.uint8),
    "label": rng.integers(0, 10, rows).astype(np.int32),
  }


def time_stream(it, steps: int, warmup: int, consume=None) -> dict[str, float]:
  """Seconds to the first batch, then batches/s over `steps` after `warmup` more.

  `consume(batch)`, when given, is applied to every batch and must block until it is done.
  """
  consume = consume or (lambda batch: batch)
  t0 = time.perf_counter()
  consume(next(it))
  first = time.perf_counter() - t0
  for _ in range(warmup):
    consume(next(it))
  t0 = time.perf_counter()
  for _ in range(steps):
    batch = consume(next(it))
  elapsed = time.perf_counter() - t0
  del batch
  return {"first_batch_s": first, "batches_per_s": steps / elapsed}


def device_feed():
  """`batch -> augmented device images`: uint8 to the device, float and crop+flip there."""
  import jax

  from shared import data as data_lib
  from shared import train_lib
  from unlearnable import augment

  sharding = train_lib.batch_sharding(train_lib.make_mesh())

  @jax.jit
  def prepare(key, images):
    return augment.crop_flip(key, data_lib.to_float(images), pad=4)

  key = jax.random.key(0)

  def consume(batch):
    device = train_lib.global_batch(batch, sharding)
    return prepare(key, device["image"]).block_until_ready()

  return consume


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--what", default="memory,grain", help="memory | grain, comma-separated")
  parser.add_argument("--batch", type=int, default=512)
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--warmup", type=int, default=5)
  parser.add_argument("--rows", type=int, default=50_000)
  parser.add_argument("--workers", default="0", help="grain worker counts, comma-separated")
  parser.add_argument("--threads", type=int, default=2, help="grain read threads per process")
  parser.add_argument("--dir", default="", help="where the ArrayRecord files go")
  parser.add_argument("--data", default="", help="a prepared set (e.g. cifar10) instead of noise")
  parser.add_argument("--feed", action="store_true", help="also send to the device and augment")
  args = parser.parse_args(argv)

  if args.data:
    from shared import data as data_lib

    loaded = data_lib.load(args.data, "train")
    arrays = {"image": loaded["image"], "label": loaded["label"]}
  else:
    arrays = synthetic_cifar(args.rows)
  rows = len(arrays["label"])
  consume = device_feed() if args.feed else None
  common = {"batch": args.batch, "rows": rows, "steps": args.steps, "feed": args.feed}
  if args.data:
    common["data"] = args.data
  for what in args.what.split(","):
    if what == "memory":
      from shared.data.iterators import batches

      it = batches(arrays, args.batch, seed=0, process_index=0, process_count=1)
      timed = time_stream(it, args.steps, args.warmup, consume)
      _print({"case": "memory", **common, **timed}, args)
    elif what == "grain":
      import grain.python as grain

      from shared.data import streaming

      with tempfile.TemporaryDirectory(dir=args.dir or None) as tmp:
        t0 = time.perf_counter()
        paths = streaming.write_array_record(arrays, os.path.join(tmp, "train.array_record"))
        write_s = time.perf_counter() - t0
        split = streaming.StreamingSplit.open(paths)
        read = grain.ReadOptions(num_threads=args.threads, prefetch_buffer_size=2 * args.threads)
        for workers in [int(w) for w in args.workers.split(",")]:
          it = streaming.batches(
            split, args.batch, seed=0, process_index=0, process_count=1,
            worker_count=workers, read_options=read,
          )  # fmt: skip
          try:
            timed = time_stream(it, args.steps, args.warmup, consume)
          finally:
            it.close()
          case = {"case": f"grain/workers={workers}", **common, "workers": workers}
          _print({**case, "threads": args.threads, **timed, "write_s": write_s}, args)
    else:
      raise SystemExit(f"error: --what {what!r}; known: memory, grain")


def _print(row: dict, args) -> None:
  row["img_per_s"] = row["batches_per_s"] * args.batch
  print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))


if __name__ == "__main__":
  main()
