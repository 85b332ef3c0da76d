"""A fake prepared `cifar10` entry (the layout `shared.data.prepare` writes) of random images, for
tests of what is built from CIFAR-10 where the real set is not prepared (CI)."""

import numpy as np


def write_prepared_cifar10(root, n_train: int = 300, n_test: int = 100, seed: int = 0) -> dict:
  """Writes `root/cifar10/prepared-v1/` (random, hence distinct, uint8 images; each class n / 10
  times, shuffled) and returns its arrays {split: {'image', 'label'}}."""
  entry = root / "cifar10" / "prepared-v1"
  entry.mkdir(parents=True)
  rng = np.random.default_rng(seed)
  arrays = {}
  for split, n in (("train", n_train), ("test", n_test)):
    arrays[split] = {
      "image": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
      "label": rng.permutation(np.arange(n) % 10).astype(np.int32),
    }
    for key, value in arrays[split].items():
      np.save(entry / f"{split}_{key}.npy", value)
  (entry / "manifest.json").write_text("{}")
  return arrays
