"""The protection protocol: train victims from scratch on protected data, score them on clean data.

Victims (config `victims`, columns of the results table):
  supervised        the surrogate's architecture, cross-entropy, crop + flip of x + delta
  supervised_other  the same recipe on another architecture (`config.other_arch`)
  simclr            SimCLR on x + delta (encoder `simclr_victim.model`), then a linear probe
                    (fitted on `simclr_victim.probe`); a kNN monitor beside each probe
  simclr_clean_probe  the same encoder, probe fitted on the clean training images (a derived
                    column: it tells whether the encoder or the probe latched onto delta)
  grayscale         supervised on grayscale(x + delta) (test images greyed the same way)
  jpeg              supervised on JPEG-compressed x + delta (quality `defences.jpeg_quality`;
                    test images compressed too when `defences.jpeg_test`)
  jpeg_mild         the same at `defences.jpeg_mild_quality`
  adversarial       supervised with PGD adversarial training of radius `defences.adv_eps`
  mixup             supervised with mixup (alpha `defences.mixup_alpha`)
  cutout            supervised with cutout (`defences.cutout_size` pixels)
  datawise          supervised on the second data set, protected by perturbations made on the
                    first and transferred class by class (`transfer.rule`)
Lower clean-test accuracy = better protection; chance is 1 / num_classes.

`evaluate_victim` is one such cell on arrays (the released uint8 images), for the Python API.
"""

from __future__ import annotations

import zlib

import jax
import numpy as np

from shared import data as data_lib
from shared.errors import ConfigError, DataError
from unlearnable import countermeasures, perturb, release, transfer, victims

VICTIMS = {  # name -> column label
  "supervised": "sup. (surrogate arch)",
  "supervised_other": "sup. (other arch)",
  "simclr": "SimCLR probe",
  "simclr_clean_probe": "SimCLR, clean probe",
  "grayscale": "grayscale",
  "jpeg": "JPEG-10",
  "jpeg_mild": "JPEG mild",
  "adversarial": "adv. training",
  "mixup": "mixup",
  "cutout": "cutout",
  "datawise": "data-wise",
}


# Columns computed inside another victim's run: name -> (victim, the cell's keys to read).
DERIVED = {"simclr_clean_probe": ("simclr", "final_alt", "peak_alt")}


# The gate (`config.gates` key) a column's verdicts need: its own learner's clean-data gate. The
# defence columns train the surrogate-architecture supervised victim, so they need its gate;
# `datawise` judges another data set and has none.
GATE_OF = {
  "supervised": "supervised",
  "supervised_other": "supervised_other",
  "simclr": "simclr",
  "simclr_clean_probe": "simclr",
  **{d: "supervised" for d in ("grayscale", "jpeg", "jpeg_mild", "adversarial", "mixup", "cutout")},
}


def columns_of(victims) -> list[str]:
  """Table columns of `victims`: each victim, followed by the columns derived from its run."""
  return [c for v in victims for c in (v, *(n for n, (src, *_) in DERIVED.items() if src == v))]


def derived_cells(victim: str, cell: dict) -> dict[str, dict]:
  """{column: {final, peak}} that the cell of `victim` also gives (`DERIVED`)."""
  return {
    name: {"final": cell[final], "peak": cell[peak]}
    for name, (source, final, peak) in DERIVED.items()
    if source == victim and final in cell
  }


def victim_key(seed_key, victim: str):
  """The same victim initialisation and data order for every protection method (paired)."""
  return jax.random.fold_in(seed_key, zlib.crc32(victim.encode()) & 0x7FFFFFFF)


def supervised_recipe(config, victim: str):
  r = config.victim.copy_and_resolve_references()
  d = config.defences
  with r.unlocked():
    r.cutout = int(d.cutout_size) if victim == "cutout" else 0
    r.mixup = float(d.mixup_alpha) if victim == "mixup" else 0.0
    adv = victim == "adversarial"
    r.adv_eps = float(d.adv_eps) if adv else 0.0
    r.adv_steps = int(d.adv_steps) if adv else 0
    r.adv_step_size = float(d.adv_step_size) if adv else 0.0
  return r


def model_spec(config, name: str) -> dict:
  models = config.models.to_dict()
  if name not in models:
    raise ConfigError(f"model {name!r} is not in config.models ({sorted(models)})")
  return models[name]


def run_victim(
  config,
  victim: str,
  method: str,
  sets: dict,
  delta: np.ndarray,
  seed_key,
  num_classes: int,
  workdir: str | None = None,
) -> dict:
  """One cell of the table: the victim trained on data protected by `method`'s delta.

  Args:
    sets: {'train', 'test'} (and 'transfer_train', 'transfer_test' for datawise), each
      {'image', 'label'} clean.
    delta: the perturbations of sets['train'] (same order).
  """
  if victim not in VICTIMS or victim in DERIVED:
    known = ", ".join(v for v in VICTIMS if v not in DERIVED)
    raise ConfigError(f"unknown victim {victim!r}; known: {known}")
  train, test = sets["train"], sets["test"]
  protected = np.clip(train["image"] + delta, 0.0, 1.0)
  key = victim_key(seed_key, victim)
  kw = dict(workdir=workdir, stage=f"{method}/{victim}", run_cfg=config.run)
  spec = model_spec(config, config.surrogate)
  if victim == "simclr":
    spec = model_spec(config, config.simclr_victim.get("model") or config.surrogate)
    probe_images = protected if config.simclr_victim.probe == "protected" else train["image"]
    if config.simclr_victim.probe not in ("protected", "clean"):
      raise ConfigError(
        f"simclr_victim.probe={config.simclr_victim.probe!r}; known: protected, clean"
      )
    return victims.train_victim(
      "simclr",
      spec,
      config.simclr_victim,
      {"image": protected, "label": train["label"]},
      test,
      num_classes,
      key,
      probe={"image": probe_images, "label": train["label"]},
      alt_probe=train,
      **kw,
    )
  recipe = supervised_recipe(config, victim)
  train_images, test_images, labels = protected, test["image"], train["label"]
  if victim == "supervised_other":
    spec = model_spec(config, config.other_arch)
  elif victim == "grayscale":
    train_images = countermeasures.grayscale(protected)
    if config.defences.grayscale_test:
      test_images = countermeasures.grayscale(test["image"])
  elif victim in ("jpeg", "jpeg_mild"):
    d = config.defences
    quality = d.jpeg_quality if victim == "jpeg" else d.jpeg_mild_quality
    train_images = countermeasures.jpeg(protected, quality)
    if d.jpeg_test:
      test_images = countermeasures.jpeg(test["image"], quality)
  elif victim == "datawise":
    src_key = perturb.method_key(seed_key, f"transfer/{method}")
    rng = np.random.default_rng(
      np.asarray(jax.random.randint(src_key, (4,), 0, 2**31 - 1)).tolist()
    )
    target = sets["transfer_train"]
    moved = transfer.transfer(
      delta,
      train["image"],
      train["label"],
      target["image"],
      target["label"],
      float(config.eps),
      config.transfer.rule,
      rng,
      l0=method in perturb.L0_METHODS,
    )
    train_images = np.clip(target["image"] + moved, 0.0, 1.0)
    labels, test_images = target["label"], sets["transfer_test"]["image"]
    test = sets["transfer_test"]
  return victims.train_victim(
    "supervised",
    spec,
    recipe,
    {"image": train_images, "label": labels},
    {"image": test_images, "label": test["label"]},
    num_classes,
    key,
    **kw,
  )


def _images(name: str, images, *, uint8: bool) -> np.ndarray:
  """[N, H, W, C] float32 in [0, 1] from uint8 (or, unless `uint8`, float [0, 1]) images."""
  x = np.asarray(images)
  if x.ndim == 3:  # [N, H, W]: one channel
    x = x[..., None]
  if x.ndim != 4 or not len(x):
    raise DataError(f"{name} must be [N, H, W(, C)] images with N >= 1, got shape {x.shape}")
  if x.dtype != np.uint8:
    if uint8:
      raise DataError(f"{name} must be uint8 (the released images), got {x.dtype}")
    if not np.issubdtype(x.dtype, np.floating) or x.min() < 0 or x.max() > 1:
      raise DataError(f"{name} must be uint8 or float in [0, 1], got {x.dtype}")
  return data_lib.to_float(x)


def _labels(name: str, labels, n: int) -> np.ndarray:
  y = np.asarray(labels)
  if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer) or (n and y.min() < 0):
    raise DataError(f"{name} must be {n} non-negative integers, got {y.dtype} {y.shape}")
  return y.astype(np.int32)


def evaluate_victim(
  protected_uint8,
  labels,
  test_images,
  test_labels,
  *,
  victim: str = "supervised",
  arch: str | None = None,
  epochs: int | None = None,
  clean_images=None,
  config=None,
  seed: int = 0,
  num_classes: int | None = None,
) -> dict:
  """Trains `victim` from scratch on protected images; its accuracy on the clean test set.

      protected = unlearnable.protect(train_uint8, labels, method="em")       # [N, H, W, C] uint8
      out = unlearnable.evaluate_victim(protected, labels, test_uint8, test_labels)
      out["final"], out["peak"], out["chance"]   # clean-test accuracy: last epoch, best; 1 / K

  The same call as a cell of `python -m unlearnable` (`run_victim`): with the same config, seed
  and `clean_images` (the unprotected training images) it returns the CLI's numbers.

  Args:
    protected_uint8: [N, H, W(, C)] uint8, the released training images.
    labels: [N] ints.
    test_images: [M, H, W(, C)] uint8 (or float in [0, 1]) clean test images; test_labels [M].
    victim: a trained victim of `unlearnable.VICTIMS` (supervised, supervised_other, simclr,
      grayscale, jpeg, jpeg_mild, adversarial, mixup, cutout); 'datawise' needs a second data
      set and runs in the CLI only.
    arch: the victim's network, a name in `config.models` (small_cnn, mlp, resnet18); default
      the config's (`surrogate`; `other_arch` for supervised_other; `simclr_victim.model`).
    epochs: training epochs (default the config's `victim` / `simclr_victim` recipe).
    clean_images: [N, H, W(, C)] the unprotected training images, when known: the victim then
      trains on clean + (protected - clean) as the CLI does, and simclr also reports the probe
      fitted on clean images (`final_alt`, `peak_alt`).
    config: a configs/unlearnable.py config (None: its default variant); not modified.
    seed: the victim's initialisation and data order are those of the CLI's seed `seed`.
    num_classes: default max(label) + 1 over both label arrays.

  Returns:
    {'victim', 'final', 'peak', 'curve': [(step, accuracy)], 'train_s', 'num_classes', 'chance'}
    (+ 'knn_final' for simclr); accuracies in [0, 1] on the clean test set.
  """
  trained = [v for v in VICTIMS if v not in DERIVED and v != "datawise"]
  if victim not in trained:
    raise ConfigError(f"unknown victim {victim!r} for evaluate_victim; known: {', '.join(trained)}")
  train01 = _images("protected_uint8", protected_uint8, uint8=True)
  test01 = _images("test_images", test_images, uint8=False)
  if test01.shape[1:] != train01.shape[1:]:
    raise DataError(
      f"test images are {test01.shape[1:]}, the protected ones {train01.shape[1:]} (H, W, C)"
    )
  y = _labels("labels", labels, len(train01))
  y_test = _labels("test_labels", test_labels, len(test01))
  k = int(num_classes or max(y.max(), y_test.max()) + 1)
  if max(y.max(), y_test.max()) >= k:
    raise DataError(f"labels reach {max(y.max(), y_test.max())}, outside {k} classes")
  config = release.resolved_config(config)
  if arch is not None:
    model_spec(config, arch)  # a ConfigError naming the known models
    if victim == "simclr":
      config.simclr_victim.model = arch
    elif victim == "supervised_other":
      config.other_arch = arch
    else:
      config.surrogate = arch
  if epochs is not None:
    if int(epochs) < 1:
      raise ConfigError(f"epochs must be >= 1, got {epochs}")
    (config.simclr_victim if victim == "simclr" else config.victim).epochs = int(epochs)
  if clean_images is None:  # the victim sees exactly the released images
    clean01, delta = train01, np.zeros_like(train01)
  else:
    clean01 = _images("clean_images", clean_images, uint8=False)
    if clean01.shape != train01.shape:
      raise DataError(f"clean_images are {clean01.shape}, the protected ones {train01.shape}")
    delta = release.as_delta(np.asarray(protected_uint8).reshape(train01.shape), clean01)
  sets = {"train": {"image": clean01, "label": y}, "test": {"image": test01, "label": y_test}}
  cell = run_victim(config, victim, "api", sets, delta, jax.random.PRNGKey(seed), k)
  if clean_images is None:
    cell = {a: b for a, b in cell.items() if a not in ("final_alt", "peak_alt")}
  return {"victim": victim, **cell, "num_classes": k, "chance": 1.0 / k}
