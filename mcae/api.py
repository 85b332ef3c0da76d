"""MCAE's Python API: pre-train, fine-tune and score on arrays, no command line or workdir.

  cfg = configs.mcae.get_config("tiny")                              # any variant, any overrides
  encoder = pretrain(images, labels, domains, config=cfg, key=0)    # MAE + lambda * SupCon
  clf = finetune(encoder, images, labels, val=(val_images, val_labels), config=cfg)
  scores = score(clf, test_images)                                  # float64 [N], higher = live
  shared.metrics.fas_metrics(scores, test_labels)                   # hter, eer, auc, ...

These train through `mcae.fit`, the code the CLI's sub-runs train through (with a folder there,
in memory here), on the stages `mcae.stage_builders` compiles once per shape and config; so an
int `key=s` with the CLI's config reproduces the CLI's sub-run of seed s exactly
(tests/test_mcae_api.py checks it). Arrays: images uint8 [N, H, W, C] (or float in [0, 1]), H and
W multiples of `config.model.patch_size`; labels 1 = live, 0 = spoof; domains int ids >= 0;
attacks int ids, 0 = live (default: 0 for live, 1 for every spoof).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from mcae import evaluate, fit, methods
from mcae.mechanism import feature_fn
from mcae.subrun import RunContext
from shared import train_lib, validate
from shared.errors import ConfigError, DataError

PyTree = Any
Key = int | jax.Array
# Stage offsets folded into the key, as `mcae.subrun` does: 1 pre-training, 2 the classifier.
_PRETRAIN, _CLASSIFIER = 1, 2


@dataclasses.dataclass(frozen=True)
class Encoder:
  """A pre-trained ViT encoder (`shared.models.vit.ViTEncoder`): what fine-tuning starts from.

  Attributes:
    params: the encoder's params tree (numpy): patch_embed, cls_token, block_<i>, norm.
    model: the `config.model` fields that build it (size, patch_size, width, depth, ...).
    image_shape: (H, W, C) it was pre-trained on (its fixed sin-cos position grid).
    info: provenance: the method spec and its pre-training config.
  """

  params: PyTree
  model: dict
  image_shape: tuple[int, int, int]
  info: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Classifier:
  """A trained live/spoof classifier: two logits, score = logit_live - logit_spoof.

  Attributes:
    params, model_state: the selected params (best source-val AUC when `finetune` had `val`,
      else the last); model_state holds a ResNet's batch statistics ({} for a ViT).
    method: the method spec it was trained as ("mcae", "mae_ft", "vit_scratch", ...).
    image_shape: (H, W, C) it takes.
    steps: steps run (the cap, or where early stopping ended); selected_step: the kept params'.
    val: {"step", "val_auc", "val_eer"} of the selection, or None without `val`.
  """

  params: PyTree
  model_state: PyTree
  method: str
  image_shape: tuple[int, int, int]
  steps: int
  selected_step: int
  val: dict | None
  scorer: Callable = dataclasses.field(repr=False)  # jitted (params, model_state, images) -> scores
  data_sharding: Any = dataclasses.field(repr=False)
  eval_batch_size: int = 256


def pretrain(
  images,
  labels,
  domains,
  attacks=None,
  *,
  config: ml_collections.ConfigDict | None = None,
  method: str = "mcae",
  key: Key = 0,
) -> Encoder:
  """Pre-trains a ViT encoder: L = mae_weight * L_MAE + lambda * L_SupCon (`mcae.pretrain`).

  `config.pretrain` with method "mcae" is MCAE (lambda = `pretrain.supcon_weight`); lambda = 0
  (`config.pretrain.supcon_weight = 0.0`, or method "mae_ft") is MAE alone; "supcon_ft" is SupCon
  alone. Any method spec of `mcae.methods` with a pre-training works, overrides included
  ("mcae:pretrain.mask_ratio=0.9"). Runs `pretrain.num_steps` steps of `pretrain.batch_size`.

  Args:
    images: uint8 [N, H, W, C] (or float in [0, 1]).
    labels: [N], 1 = live, 0 = spoof.
    domains: [N] int domain ids >= 0 (SupCon's positive sets read them).
    attacks: [N] int attack ids (0 = live); None = 0 for live, 1 for every spoof.
    config: the mcae config (`configs.mcae.get_config(variant)`); None = the CPU default.
    method: the method spec whose pre-training runs.
    key: an int s = the CLI's sub-run seed s (same params as `python -m mcae` with this config),
      or a PRNG key (init and batch order drawn from it).

  Returns:
    The `Encoder` (its params on the host).

  Raises:
    ConfigError: a method without pre-training, a mask ratio of 0 or 1 with the MAE term on, a
      batch not divisible by the devices, an image side not a multiple of the patch size.
    DataError: mismatched lengths, labels other than 0/1, a batch larger than N.
  """
  cfg = _method_config(config, method)
  name, _ = methods.parse_method(method)
  pre_cfg = methods.pretrain_config(cfg, name)
  arrays = _arrays("pretrain", images, labels, domains=domains, attacks=attacks)
  _check_patches(cfg, arrays["image"].shape[1:])
  ctx = _context(
    cfg,
    arrays["image"].shape[1:],
    num_domains=int(arrays["domain"].max()) + 1,
    num_attacks=int(arrays["attack"].max()) + 1,
  )
  init_key, seed = _stage_seeds(cfg, key, _PRETRAIN)
  params = fit.pretrain(ctx, cfg, pre_cfg, arrays, init_key, seed, None, f"pretrain[{method}]")
  return Encoder(
    params=jax.device_get(params["backbone"]["encoder"]),
    model=cfg.model.to_dict(),
    image_shape=tuple(int(s) for s in arrays["image"].shape[1:]),
    info={"method": method, "pretrain": pre_cfg.to_dict()},
  )


def finetune(
  encoder: Encoder | None,
  images,
  labels,
  *,
  val=None,
  config: ml_collections.ConfigDict | None = None,
  method: str | None = None,
  key: Key = 0,
) -> Classifier:
  """Trains a live/spoof classifier, from `encoder` (fine-tuning) or, with None, from scratch.

  From an encoder: the ViT classifier (mean-pooled tokens, zero-initialised 2-way head) takes
  its weights and trains `finetune.train_blocks` of them for at most `finetune.num_steps` steps
  with `classifiers.optimizer`; the model config is the encoder's. From scratch (None, method
  "vit_scratch", or a "resnet18_w<k>"): `baselines.scratch_optimizer` (ResNet: `resnet.*`) for
  at most `baselines.supervised_steps`. With `val`, training runs to convergence as the CLI's
  does: every `convergence.eval_every` steps val is scored, the params with the best AUC kept,
  stopping after `convergence.patience` evaluations without a better one.

  Args:
    encoder: from `pretrain` or `load_encoder`, or None.
    images, labels: uint8 [N, H, W, C] and [N] (1 = live), both classes present.
    val: (images, labels) to select on (the sources' val split), or None (keep the last params).
    config: the mcae config; None = the CPU default.
    method: the spec whose classifier config applies; None = "mcae" with an encoder, else
      "vit_scratch".
    key: as `pretrain`'s (an int s = the CLI's sub-run seed s).

  Returns:
    The `Classifier`, for `score`.
  """
  method = method or ("mcae" if encoder is not None else "vit_scratch")
  cfg = _method_config(config, method)
  name, _ = methods.parse_method(method)
  pretrained = cfg.method_table[name].pretrain is not None
  if pretrained and encoder is None:
    raise ConfigError(
      f"finetune: method {method!r} fine-tunes a pre-trained encoder; pass one (mcae.pretrain, "
      "mcae.load_encoder) or use method 'vit_scratch'"
    )
  if encoder is not None and not pretrained:
    raise ConfigError(f"finetune: method {method!r} trains from scratch; pass encoder=None")
  arrays = _arrays("finetune", images, labels, both_classes=True)
  shape = tuple(int(s) for s in arrays["image"].shape[1:])
  backbone = None
  if encoder is not None:
    if shape != tuple(encoder.image_shape):
      raise DataError(
        f"finetune: images are {shape}, the encoder was pre-trained on {tuple(encoder.image_shape)}"
      )
    cfg.model.update(encoder.model)
    backbone = {"encoder": jax.device_get(encoder.params)}  # fresh device buffers below
  if cfg.method_table[name].classifier == "vit":
    _check_patches(cfg, shape)
  source_val = None
  if val is not None:
    if not isinstance(val, tuple | list) or len(val) != 2:
      raise DataError("finetune: val must be (images, labels)")
    source_val = _arrays("finetune val", *val, both_classes=True)
    if source_val["image"].shape[1:] != arrays["image"].shape[1:]:
      raise DataError(
        f"finetune: val images are {source_val['image'].shape[1:]}, the training images {shape}"
      )
  ctx = _context(cfg, shape)
  init_key, seed = _stage_seeds(cfg, key, _CLASSIFIER)
  trained = fit.classifier(
    ctx, cfg, name, backbone, arrays, source_val, init_key, seed, None, f"finetune[{method}]"
  )
  return Classifier(
    params=trained.params,
    model_state=trained.model_state,
    method=method,
    image_shape=shape,
    steps=int(trained.steps_run),
    selected_step=int(trained.selected_step),
    val=trained.best,
    scorer=trained.plan.stage.score,
    data_sharding=ctx.data_sharding,
    eval_batch_size=int(cfg.eval_batch_size),
  )


def score(classifier: Classifier, images, *, batch_size: int | None = None) -> np.ndarray:
  """Liveness scores, float64 [N] (logit_live - logit_spoof; higher = more live), in order.

  `shared.metrics.fas_metrics(scores, labels)` turns them into HTER / EER / AUC; pass a threshold
  fixed on val scores (`fas_metrics(val_scores, val_labels)["threshold"]`) for the honest HTER.
  """
  images = _images("score", images)
  if tuple(images.shape[1:]) != tuple(classifier.image_shape):
    raise DataError(
      f"score: images are {tuple(images.shape[1:])}, the classifier takes "
      f"{tuple(classifier.image_shape)}"
    )
  return evaluate.predict(
    classifier.scorer,
    classifier.params,
    classifier.model_state,
    {"image": images},
    _eval_batch(batch_size or classifier.eval_batch_size, classifier.data_sharding),
    classifier.data_sharding,
  )


def features(encoder: Encoder, images, *, batch_size: int = 256, dtype: str = "float32"):
  """The frozen encoder's mean-pooled patch tokens, float64 [N, D], over all patches (no mask):
  what `mcae.mechanism.separability` measures the domain gap of."""
  images = _images("features", images)
  if tuple(images.shape[1:]) != tuple(encoder.image_shape):
    raise DataError(
      f"features: images are {tuple(images.shape[1:])}, the encoder takes "
      f"{tuple(encoder.image_shape)}"
    )
  model = ml_collections.ConfigDict(encoder.model)
  mesh = train_lib.make_mesh()
  sharding = train_lib.batch_sharding(mesh)
  fn = feature_fn(model, train_lib.compute_dtype(dtype))
  params = jax.device_put(encoder.params, train_lib.replicated(mesh))
  return evaluate.predict(fn, params, {}, {"image": images}, _eval_batch(batch_size, sharding),
                          sharding)  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Checks and the pieces the CLI's sub-run gets from `mcae.train`.


def _method_config(config, method: str) -> ml_collections.ConfigDict:
  """The method's config (a copy), checked as `mcae.train` checks it before a run."""
  if config is None:
    from configs.mcae import get_config  # noqa: PLC0415

    config = get_config()
  if config.get("method") != "mcae":
    raise ConfigError(f"config.method is {config.get('method')!r}; pass an mcae config")
  if not isinstance(method, str):
    raise ConfigError(f"method must be a method spec string, not {method!r}")
  cfg = methods.method_config(config, method)  # a copy
  validate.check_config(cfg)
  methods.check_method(cfg, method)
  return cfg


def _images(what: str, images) -> np.ndarray:
  images = np.asarray(images)
  if images.ndim != 4:
    raise DataError(f"{what}: images must be [N, H, W, C], got shape {images.shape}")
  if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
    raise DataError(f"{what}: images must be uint8 or float in [0, 1], not {images.dtype}")
  if len(images) == 0:
    raise DataError(f"{what}: no images")
  return images


def _ids(what: str, name: str, values, n: int) -> np.ndarray:
  values = np.asarray(values)
  if values.shape != (n,):
    raise DataError(f"{what}: {name} has shape {values.shape}, expected ({n},) for {n} images")
  if not np.issubdtype(values.dtype, np.integer) and not np.all(values == np.round(values)):
    raise DataError(f"{what}: {name} must be integers")
  if values.min() < 0:
    raise DataError(f"{what}: {name} must be >= 0, got {values.min()}")
  return values.astype(np.int32)


def _arrays(what, images, labels, *, domains=None, attacks=None, both_classes=False) -> dict:
  images = _images(what, images)
  n = len(images)
  labels = _ids(what, "labels", labels, n)
  if labels.max() > 1:
    raise DataError(f"{what}: labels must be 1 (live) or 0 (spoof), got {labels.max()}")
  if both_classes and labels.min() == labels.max():
    raise DataError(f"{what}: needs both live and spoof examples, got only label {labels[0]}")
  out = {"image": images, "label": labels}
  if domains is not None:
    out["domain"] = _ids(what, "domains", domains, n)
    if attacks is None:
      attacks = np.where(labels == 1, 0, 1)
    out["attack"] = _ids(what, "attacks", attacks, n)
  return out


def _check_patches(cfg, image_shape) -> None:
  p = cfg.model.patch_size
  if image_shape[0] % p or image_shape[1] % p:
    raise ConfigError(
      f"images are {image_shape[0]}x{image_shape[1]}, not a multiple of model.patch_size={p}"
    )


def _context(cfg, image_shape, num_domains: int = 1, num_attacks: int = 2) -> RunContext:
  mesh = train_lib.make_mesh(cfg.run.model_axis)
  return RunContext(
    config=cfg,
    workdir="",
    mesh=mesh,
    data_sharding=train_lib.batch_sharding(mesh),
    image_shape=tuple(int(s) for s in image_shape),
    num_domains=num_domains,
    num_attacks=num_attacks,
  )


def _stage_seeds(cfg, key: Key, offset: int) -> tuple[jax.Array, int]:
  """(init key, batch-order seed) of a stage. An int s: what `mcae.subrun` uses for seed s
  (fold_in(fold_in(PRNGKey(config.seed), s), offset), s * 1000 + offset); a key: both from it."""
  if isinstance(key, int | np.integer):
    root = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), int(key))
    return jax.random.fold_in(root, offset), int(key) * 1000 + offset
  draw = jax.random.randint(jax.random.fold_in(key, 1000 + offset), (), 0, 2**31 - 1)
  return jax.random.fold_in(key, offset), int(draw)


def _eval_batch(batch_size: int, sharding) -> int:
  """Rounded up to a multiple of the devices (each takes the same share of a padded batch)."""
  devices = sharding.num_devices
  return -(-int(batch_size) // devices) * devices
