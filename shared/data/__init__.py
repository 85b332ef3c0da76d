"""Data: built-in sets (made or shipped, no download), any TFDS set, and batch streams.

  arrays = data.load("shapes", "train")            # or "digits", "mnist5k", "tfds:cifar10"
  for batch in data.batches(arrays, 128, seed=0, start_step=step): ...
  data.info("shapes")["vocab"]

A new set registers a builder `fn(split, data_dir, **options) -> dict of arrays` with
`@data.register(name, splits=..., info=...)`; importing its module makes it loadable.
"""

from shared.data import digits, fas_json, fas_proxy, mnist5k, shapes  # noqa: F401  (registers the built-in sets)
from shared.data.iterators import batches, epoch_order, eval_batches, steps_per_epoch
from shared.data.registry import REGISTRY, Split, default_data_dir, info, load, names, register

__all__ = [
  "REGISTRY",
  "Split",
  "batches",
  "default_data_dir",
  "epoch_order",
  "eval_batches",
  "info",
  "load",
  "names",
  "register",
  "shapes",
  "steps_per_epoch",
]
