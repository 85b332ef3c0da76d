"""InfoTok's Python API on arrays: train a tokenizer, encode / decode with it, save and reload it.

    tok = train_tokenizer(images, captions, weights=variant_weights("vib_kl", 1e-3), config=cfg)
    ids_BxN = tok.encode(images)          # int32 code ids, N = tok.num_tokens (reading order)
    recon_BxHxWx3 = tok.decode(ids_BxN)   # float32 in [0, 1]
    save_tokenizer("runs/tok", tok)       # params.safetensors + tokenizer.json
    tok = load_tokenizer("runs/tok")      # encodes and decodes bit for bit as before

The command line goes through the same calls: `infotok.pipeline.Pipeline.tokenizer` trains every
tokenizer of a sweep with `train_tokenizer` (with a workdir: checkpoints, metrics.jsonl, resumable)
and saves it with `save_tokenizer` in `tokenizers/<name>/tokenizer/`.

Bad input is one line (`shared.errors`): DataError for images or captions of the wrong shape or
dtype, ConfigError for unknown loss weights or variants, CheckpointError for a folder that holds
no tokenizer or whose tensors disagree with its JSON.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from infotok import tokenizer as network
from infotok.tokenizer_sweep import SWEEPS
from infotok.tokenizer_trainer import TokenizerTrainer
from shared import tensor_files, train_lib, workdir
from shared.data import to_float
from shared.errors import CheckpointError, ConfigError, DataError

WEIGHTS_FILE, META_FILE = "params.safetensors", "tokenizer.json"
FORMAT = "infotok.tokenizer/1"
TEXT_WEIGHTS = ("consistency", "align", "hsic_lambda_y")  # the terms that read captions


def default_config() -> ml_collections.ConfigDict:
  """The tokenizer section of configs/infotok.py's default variant (a fresh copy to edit)."""
  from configs import infotok as config_file  # noqa: PLC0415  (the default settings)

  return config_file.get_config().tokenizer


def variant_weights(variant: str, value: float | None = None, config=None) -> dict[str, float]:
  """The loss weights of one tokenizer variant of the factorial at one value of its sweep.

  Args:
    variant: 'baseline' (reconstruction only: {}) or a swept variant of
      `infotok.tokenizer_sweep.SWEEPS` (entropy, vib_kl, vib_nce, infotok_vib, infotok_hsic).
    value: the swept knob (the KL beta of vib_kl / infotok_vib, HSIC's beta_x, ...).
    config: a whole configs/infotok.py config, for the fixed weights some variants add
      (infotok_vib's consistency, infotok_hsic's lambda_y); None takes the default variant's.

  Returns:
    name -> weight (names of `infotok.tokenizer.WEIGHT_NAMES`; missing ones are 0).
  """
  if variant == "baseline":
    return {}
  if variant not in SWEEPS:
    raise ConfigError(f"variant {variant!r}; known here: baseline, {', '.join(SWEEPS)}")
  if value is None:
    raise ConfigError(f"variant {variant!r} needs the value of its knob ({SWEEPS[variant].field})")
  if config is None:
    from configs import infotok as config_file  # noqa: PLC0415

    config = config_file.get_config()
  return {k: float(v) for k, v in SWEEPS[variant].weights(config, float(value)).items()}


def _as_images(images, what: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
  """uint8 or float [B, H, W, 3] -> float32 in [0, 1] (floats are taken as already in range)."""
  x = np.asarray(images)
  if x.ndim != 4 or x.shape[-1] != 3:
    raise DataError(f"{what}: images must be [B, H, W, 3] (RGB), got shape {x.shape}")
  if shape is not None and tuple(x.shape[1:]) != tuple(shape):
    raise DataError(f"{what}: images must be [B, {', '.join(map(str, shape))}], got {x.shape}")
  if x.dtype == np.uint8:
    return to_float(x)
  if not np.issubdtype(x.dtype, np.floating):
    raise DataError(f"{what}: images must be uint8 or float in [0, 1], got {x.dtype}")
  return np.asarray(x, np.float32)


def _check_side(cfg, image_shape) -> None:
  h, w, _ = image_shape
  stride = cfg.patch_size * 2 ** max(len(cfg.widths) - 1, 0)
  if h != w or h % stride:
    raise DataError(
      f"images of {h}x{w}: the tokenizer needs square images whose side is a multiple of "
      f"{stride} (patch_size {cfg.patch_size} x 2^{len(cfg.widths) - 1} stages)"
    )


def _as_captions(captions, n: int, vocab: int | None) -> tuple[np.ndarray, int]:
  ids = np.asarray(captions)
  if ids.ndim not in (2, 3) or len(ids) != n or not np.issubdtype(ids.dtype, np.integer):
    raise DataError(
      f"captions must be integer token ids [N, L] or [N, K, L] with N = {n} images, got "
      f"{ids.dtype} {ids.shape}"
    )
  vocab = int(ids.max()) + 1 if vocab is None else int(vocab)
  if ids.min() < 0 or ids.max() >= vocab:
    raise DataError(f"caption ids must lie in [0, {vocab}), got [{ids.min()}, {ids.max()}]")
  return ids.astype(np.int32, copy=False), vocab


@dataclasses.dataclass(eq=False)  # params are arrays: identity, not elementwise ==
class Tokenizer:
  """A trained tokenizer: its config, params and the shapes it was built for.

  Attributes:
    config: the tokenizer config (the `tokenizer` section of configs/infotok.py).
    params: the params pytree of `infotok.tokenizer.Tokenizer` (the Linen network).
    image_shape: (H, W, 3) of the images it takes.
    text_vocab_size, text_length: of the captions its text heads were built for.
    weights: the loss weights it was trained with (provenance; not needed to encode).
  """

  config: ml_collections.ConfigDict
  params: Any
  image_shape: tuple[int, int, int]
  text_vocab_size: int
  text_length: int
  weights: dict[str, float] = dataclasses.field(default_factory=dict)
  trainer: TokenizerTrainer | None = dataclasses.field(default=None, repr=False, compare=False)

  def __post_init__(self):
    self.image_shape = tuple(int(v) for v in self.image_shape)
    if self.trainer is None:  # its jitted maps, compiled once per process for this config
      cfg = self.config
      vocab, length = self.text_vocab_size, self.text_length
      self.trainer = TokenizerTrainer(cfg, vocab, length, train_lib.make_mesh(), cfg.num_steps)

  @property
  def num_codes(self) -> int:
    """Codebook size (0 for a continuous tokenizer)."""
    return self.trainer.num_codes

  @property
  def num_tokens(self) -> int:
    """Tokens per image: the latent grid's cells, grid x grid."""
    return self.trainer.grid(self.image_shape[0]) ** 2

  def encode(self, images) -> np.ndarray:
    """uint8 or [0, 1] float images [B, H, W, 3] -> int32 code ids [B, N] (posterior mean, no
    noise; N = num_tokens in reading order)."""
    return self.trainer.tokens(self.params, _as_images(images, "encode", self.image_shape))

  def decode(self, ids) -> np.ndarray:
    """Code ids [B, N] -> float32 images [B, H, W, 3] in [0, 1]."""
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.shape[1] != self.num_tokens or not np.issubdtype(ids.dtype, np.integer):
      raise DataError(
        f"decode: ids must be integers [B, {self.num_tokens}], got {ids.dtype} {ids.shape}"
      )
    if ids.size and (ids.min() < 0 or ids.max() >= self.num_codes):
      raise DataError(
        f"decode: ids must lie in [0, {self.num_codes}), got [{ids.min()}, {ids.max()}]"
      )
    return self.trainer.decode(self.params, ids.astype(np.int32))

  def reconstruct(self, images) -> np.ndarray:
    """decode(encode(images)) in one call: float32 [B, H, W, 3] in [0, 1]."""
    return self.trainer.reconstruct(
      self.params, _as_images(images, "reconstruct", self.image_shape)
    )

  def latents(self, images) -> tuple[np.ndarray, np.ndarray]:
    """The Gaussian posterior (mu, logvar), each float32 [B, N, D], before quantization."""
    return self.trainer.posterior(self.params, _as_images(images, "latents", self.image_shape))


def train_tokenizer(
  images,
  captions=None,
  *,
  weights: Mapping[str, float] | None = None,
  targets=None,
  config=None,
  seed: int = 0,
  text_vocab_size: int | None = None,
  workdir: str | None = None,
  log_dir: str | None = None,
  stage: str = "tokenizer",
  mesh=None,
) -> Tokenizer:
  """Trains one tokenizer on arrays (`infotok.tokenizer.objective` with `weights`).

  Args:
    images: uint8 or [0, 1] float [N, H, W, 3] inputs; H = W, a multiple of the encoder's stride.
    captions: int token ids [N, L] (or [N, K, L]: K captions per image, one drawn per step) for
      the terms that read text (consistency, align, hsic_lambda_y); None when no weight needs them.
    weights: loss weights by name (`infotok.tokenizer.WEIGHT_NAMES`, `variant_weights`); None or
      {} is the baseline (reconstruction + quantizer terms only).
    targets: what to reconstruct, images' shape (default: `images`; clean renders = denoising).
    config: the tokenizer config (configs/infotok.py's `tokenizer` section: architecture,
      quantizer, num_steps, batch_size, optimizer); None takes `default_config()`.
    seed: initialisation, batch order and posterior noise.
    text_vocab_size: of the caption ids (default: their largest id + 1).
    workdir: where checkpoints go (the run resumes from them); None keeps none.
    log_dir: where metrics.jsonl gets rows tagged `stage` (default: `workdir`).
    mesh: a ("data", "model") mesh (default: all devices, `shared.train_lib.make_mesh`).

  Returns:
    The trained `Tokenizer`.
  """
  cfg = (default_config() if config is None else config).copy_and_resolve_references()
  x = _as_images(images, "train_tokenizer")
  _check_side(cfg, x.shape[1:])
  y = x if targets is None else _as_images(targets, "train_tokenizer targets", x.shape[1:])
  if len(y) != len(x):
    raise DataError(f"train_tokenizer: {len(y)} targets for {len(x)} images")
  weights = {k: float(v) for k, v in (weights or {}).items()}
  if captions is None:
    text = [k for k in TEXT_WEIGHTS if weights.get(k)]
    if text:
      raise ConfigError(f"train_tokenizer: the weights {text} read captions; pass captions")
    ids, vocab = np.zeros((len(x), 1), np.int32), 1  # the text heads see a constant
  else:
    ids, vocab = _as_captions(captions, len(x), text_vocab_size)
  mesh = train_lib.make_mesh() if mesh is None else mesh
  length = ids.shape[-1]
  trainer = TokenizerTrainer(cfg, vocab, length, mesh, cfg.num_steps)
  arrays = {"image": x, "target": y, "caption": ids}
  params = trainer.train(workdir, log_dir or workdir, stage, weights, arrays, seed)
  return Tokenizer(cfg, params, x.shape[1:], vocab, length, weights, trainer=trainer)


def save_tokenizer(directory: str, tok: Tokenizer) -> None:
  """Writes `directory`/params.safetensors (flat 'a/b/kernel' float32 tensors) and tokenizer.json
  (format, config, image shape, text sizes, weights, num_codes), each atomically, on process 0."""
  meta = {
    "format": FORMAT,
    "config": tok.config.to_dict(),
    "image_shape": list(tok.image_shape),
    "text_vocab_size": tok.text_vocab_size,
    "text_length": tok.text_length,
    "weights": tok.weights,
    "num_codes": tok.num_codes,
    "num_tokens": tok.num_tokens,
  }
  tensor_files.write(directory, WEIGHTS_FILE, tok.params, META_FILE, meta)


def load_tokenizer(directory: str) -> Tokenizer:
  """The tokenizer `save_tokenizer` wrote, ready to encode and decode.

  Raises:
    CheckpointError: no such folder or files, a foreign tokenizer.json, or tensors whose names or
      shapes disagree with its config.
  """
  meta_path, weights_path = (
    os.path.join(directory, META_FILE),
    os.path.join(directory, WEIGHTS_FILE),
  )
  if not (os.path.isfile(meta_path) and os.path.isfile(weights_path)):
    raise CheckpointError(
      f"{directory} holds no saved tokenizer ({META_FILE} + {WEIGHTS_FILE}; infotok.save_tokenizer)"
    )
  meta = workdir.read_json(meta_path)
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise CheckpointError(f"{meta_path} is not an InfoTok tokenizer (format != {FORMAT!r})")
  try:
    cfg = ml_collections.ConfigDict(meta["config"])
    shape, vocab, length = tuple(meta["image_shape"]), meta["text_vocab_size"], meta["text_length"]
    model = network.make_tokenizer(cfg, vocab, length)
    image, caption = np.zeros((1, *shape), np.float32), np.zeros((1, length), np.int32)
    init = lambda k: model.init(k, image, caption, k, 0.0)["params"]
    abstract = jax.eval_shape(init, jax.random.key(0))
  except Exception as e:  # a hand-edited or foreign config: say which file
    raise CheckpointError(f"{meta_path}: its tokenizer config is invalid ({e})") from None
  params = tensor_files.read(weights_path, abstract, described_by=META_FILE)
  return Tokenizer(cfg, params, shape, vocab, length, dict(meta.get("weights") or {}))
