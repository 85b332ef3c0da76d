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
"""

from __future__ import annotations

import zlib

import jax
import numpy as np

from shared.errors import ConfigError
from unlearnable import countermeasures, perturb, transfer, victims

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
