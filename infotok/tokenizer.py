"""The shared visual tokenizer and its information-regularised training objective.

  image x --ConvEncoder--> (mu, logvar) per latent cell --z = mu + noise * sigma * eps--> quantizer
        --> zq (straight-through) --ConvDecoder--> reconstruction of the target (`image` by default)

One objective covers every variant; the variants differ only in the weights `w` (traced arrays, so
that all of them share one compiled step):

  L = ||x_hat - target||^2 + VQ(z)                                    reconstruction, VQ-VAE eq. 3
      + w.vib * KL(q(z|x) || N(0, I)) / (N D)                            I(X; Z) upper bound (VIB)
      + w.hsic_beta_x * HSIC(X, Z) - w.hsic_lambda_y * HSIC(Z, Y)        HSIC bottleneck
      - w.consistency * I_NCE(f(zq), g(caption))                         I(Z; Y) lower bound
      + w.entropy * MaskGIT codebook entropy loss                        baseline, raises usage
      + w.align * CLIP(f'(zq), g'(caption))                              semantic-aligned style

`w.noise` switches the posterior sampling on (1, the VIB variants) or off (0: z = mu). At
evaluation and when tokenizing data for the unified models, z = mu (the posterior mean).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from infotok import quantizers as qz
from infotok import regularizers as reg
from infotok import text as text_lib
from shared import train_lib
from shared.errors import ConfigError
from shared.models.conv import ConvDecoder, ConvEncoder, grid_size

WEIGHT_NAMES = (
  "noise",
  "vib",
  "entropy",
  "hsic_beta_x",
  "hsic_lambda_y",
  "consistency",
  "align",
)


class TextEncoder(nn.Module):
  """Caption ids [B, L] -> embedding [B, E]: mean of token + position embeddings, then an MLP."""

  vocab_size: int
  length: int
  width: int = 64
  out_dim: int = 64

  @nn.compact
  def __call__(self, ids_BxL):
    tok = nn.Embed(self.vocab_size, self.width, name="tok")(ids_BxL)
    pos = self.param("pos", nn.initializers.normal(0.02), (self.length, self.width))
    h = jnp.mean(tok + pos[None, : ids_BxL.shape[1]], axis=1)
    return nn.Dense(self.out_dim)(nn.gelu(nn.Dense(self.width)(h)))


class ImageHead(nn.Module):
  """Tokens [B, N, D] -> image-level embedding [B, E] (flatten, MLP): keeps where things are."""

  width: int = 64
  out_dim: int = 64

  @nn.compact
  def __call__(self, zq_BxNxD):
    h = zq_BxNxD.reshape(zq_BxNxD.shape[0], -1)
    return nn.Dense(self.out_dim)(nn.gelu(nn.Dense(self.width)(h)))


class Tokenizer(nn.Module):
  """Encoder -> Gaussian posterior -> quantizer -> decoder, plus the heads of the text terms.

  Attributes:
    widths, patch_size, patch_hidden, blocks_per_stage, latent_blocks: of the conv encoder /
      decoder (shared.models.conv).
    quantizer: 'vq', 'fsq' or 'continuous'.
    codebook_size, code_dim, commitment: VQ.
    fsq_levels: FSQ (the latent then has len(fsq_levels) channels).
    text_vocab_size, text_length: captions fed to the text heads.
    embed_dim: width of the image / text embeddings of the contrastive terms.
  """

  widths: tuple[int, ...] = (64,)
  patch_size: int = 8
  patch_hidden: int = 0
  blocks_per_stage: int = 0
  latent_blocks: int = 1
  quantizer: str = "vq"
  codebook_size: int = 256
  code_dim: int = 8
  commitment: float = 0.25
  normalize_codes: bool = True
  fsq_levels: tuple[int, ...] = (8, 5, 5, 5)
  text_vocab_size: int = 64
  text_length: int = 20
  embed_dim: int = 64

  @property
  def latent_dim(self) -> int:
    return len(self.fsq_levels) if self.quantizer == "fsq" else self.code_dim

  def setup(self):
    d = self.latent_dim
    arch = dict(
      widths=self.widths,
      patch_size=self.patch_size,
      patch_hidden=self.patch_hidden,
      blocks_per_stage=self.blocks_per_stage,
      latent_blocks=self.latent_blocks,
    )
    self.encoder = ConvEncoder(out_channels=2 * d, **arch)
    self.decoder = ConvDecoder(out_channels=3, **arch)
    if self.quantizer == "vq":
      self.quant = qz.VectorQuantizer(self.codebook_size, d, self.commitment, self.normalize_codes)
    elif self.quantizer == "fsq":
      self.quant = qz.FSQ(tuple(self.fsq_levels))
    elif self.quantizer == "continuous":
      self.quant = qz.Continuous(d)
    else:
      raise ConfigError(f"tokenizer.quantizer={self.quantizer!r}; known: vq, fsq, continuous")
    self.image_head = ImageHead(self.embed_dim, self.embed_dim)
    self.text_head = TextEncoder(
      self.text_vocab_size, self.text_length, self.embed_dim, self.embed_dim
    )
    self.align_image_head = ImageHead(self.embed_dim, self.embed_dim)
    self.align_text_head = TextEncoder(
      self.text_vocab_size, self.text_length, self.embed_dim, self.embed_dim
    )
    self.log_scale = self.param("log_scale", nn.initializers.constant(jnp.log(10.0)), ())
    self.align_log_scale = self.param(
      "align_log_scale", nn.initializers.constant(jnp.log(10.0)), ()
    )

  def posterior(self, images_BxHxWxC):
    """(mu, logvar) [B, N, D], N = latent cells in reading order."""
    h = self.encoder(images_BxHxWxC)
    b, gh, gw, _ = h.shape
    h = h.reshape(b, gh * gw, -1)
    mu, logvar = jnp.split(h, 2, axis=-1)
    return mu, jnp.clip(logvar, -12.0, 6.0)

  def decode(self, zq_BxNxD):
    b, n, d = zq_BxNxD.shape
    side = int(round(n**0.5))
    return self.decoder(zq_BxNxD.reshape(b, side, side, d))

  def decode_indices(self, indices_BxN):
    return self.decode(self.quant.decode(indices_BxN))

  def tokens(self, images_BxHxWxC):
    """Deterministic code indices [B, N] (posterior mean, no noise)."""
    mu, _ = self.posterior(images_BxHxWxC)
    return self.quant(mu)[1]

  def reconstruct(self, images_BxHxWxC):
    mu, _ = self.posterior(images_BxHxWxC)
    return self.decode(self.quant(mu)[0])

  def __call__(self, images_BxHxWxC, captions_BxL, key, noise):
    mu, logvar = self.posterior(images_BxHxWxC)
    eps = jax.random.normal(key, mu.shape)
    z = mu + noise * jnp.exp(0.5 * logvar) * eps
    zq, indices, aux = self.quant(z)
    return {
      "recon": self.decode(zq),
      "mu": mu,
      "logvar": logvar,
      "zq": zq,
      "indices": indices,
      "aux": aux,
      "image_emb": self.image_head(zq),
      "text_emb": self.text_head(captions_BxL),
      "align_image_emb": self.align_image_head(zq),
      "align_text_emb": self.align_text_head(captions_BxL),
      "log_scale": self.log_scale,
      "align_log_scale": self.align_log_scale,
    }


def make_tokenizer(cfg, text_vocab_size: int, text_length: int) -> Tokenizer:
  return Tokenizer(
    widths=tuple(cfg.widths),
    patch_size=cfg.patch_size,
    patch_hidden=cfg.patch_hidden,
    blocks_per_stage=cfg.blocks_per_stage,
    latent_blocks=cfg.latent_blocks,
    quantizer=cfg.quantizer,
    codebook_size=cfg.codebook_size,
    code_dim=cfg.code_dim,
    commitment=cfg.commitment,
    normalize_codes=cfg.normalize_codes,
    fsq_levels=tuple(cfg.fsq_levels),
    text_vocab_size=text_vocab_size,
    text_length=text_length,
    embed_dim=cfg.embed_dim,
  )


def num_codes(cfg) -> int:
  if cfg.quantizer == "vq":
    return cfg.codebook_size
  if cfg.quantizer == "fsq":
    return qz.fsq_num_codes(cfg.fsq_levels)
  return 0


def objective(
  model: Tokenizer, params, batch, key, w: Mapping[str, jax.Array], *, entropy_temperature
):
  """The loss L above and its parts; batch: 'image' (input), 'target', 'caption' (ids)."""
  out = model.apply({"params": params}, batch["image"], batch["caption"], key, w["noise"])
  b, n, d = out["mu"].shape
  mse = jnp.mean(jnp.square(out["recon"] - batch["target"]))
  rate_B = reg.vib_rate(out["mu"], out["logvar"])
  kl_per_dim = jnp.mean(rate_B) / (n * d)
  vq_loss = out["aux"].get("vq_loss", jnp.zeros(()))
  if "distances" in out["aux"]:
    ent = qz.entropy_loss(out["aux"]["distances"], entropy_temperature)
  else:
    ent = jnp.zeros(())
  hsic_term, hsic_parts = reg.hsic_bottleneck(
    batch["image"].reshape(b, -1),
    out["zq"].reshape(b, -1),
    batch["caption"],
    w["hsic_beta_x"],
    w["hsic_lambda_y"],
  )
  nce = reg.consistency(reg.cosine_scores(out["image_emb"], out["text_emb"], out["log_scale"]))
  align = reg.clip_loss(
    reg.cosine_scores(out["align_image_emb"], out["align_text_emb"], out["align_log_scale"])
  )
  loss = (
    mse
    + vq_loss
    + w["vib"] * kl_per_dim
    + w["entropy"] * ent
    + hsic_term
    - w["consistency"] * nce
    + w["align"] * align
  )
  metrics = {
    "loss": loss,
    "mse": mse,
    "psnr": -10.0 * jnp.log10(mse + 1e-10),
    "vq_loss": vq_loss,
    "kl_nats": jnp.mean(rate_B),
    "entropy_loss": ent,
    "infonce": nce,
    "align_loss": align,
    **hsic_parts,
  }
  return loss, (metrics, out["indices"], out["mu"])


class TokenizerTrainer:
  """Trains tokenizer variants that share one architecture (one compiled step for all of them)."""

  def __init__(self, cfg, text_vocab_size: int, text_length: int, mesh, num_steps: int):
    self.cfg = cfg
    self.model = make_tokenizer(cfg, text_vocab_size, text_length)
    self.mesh = mesh
    self.num_steps = num_steps
    self.tx = train_lib.make_optimizer(cfg.optimizer, num_steps)
    self.num_codes = num_codes(cfg)
    self.data_sharding = train_lib.batch_sharding(mesh)
    self._step = None
    self._init = None
    self._tokens = jax.jit(lambda p, x: self.model.apply({"params": p}, x, method=Tokenizer.tokens))
    self._recon = jax.jit(
      lambda p, x: self.model.apply({"params": p}, x, method=Tokenizer.reconstruct)
    )
    self._decode = jax.jit(
      lambda p, i: self.model.apply({"params": p}, i, method=Tokenizer.decode_indices)
    )
    self._posterior = jax.jit(
      lambda p, x: self.model.apply({"params": p}, x, method=Tokenizer.posterior)
    )

  def init_state(self, seed: int, sample_image, sample_caption):
    """A fresh TrainState (and its sharding); the init function is compiled once per trainer."""

    def init_fn(key):
      params = self.model.init(key, sample_image, sample_caption, key, 0.0)["params"]
      usage = jnp.ones((max(self.num_codes, 1),), jnp.float32)
      return params, {"usage": usage}

    if self._init is None:
      self._init = cached_init(init_fn, self.tx, self.mesh)
    return self._init(seed)

  def _build_step(self, state_sharding):
    cfg = self.cfg
    revive = cfg.quantizer == "vq" and cfg.revive_dead_codes

    def step(state, batch, w):
      key = state.step_rng()
      grad_fn = jax.value_and_grad(
        lambda p: objective(
          self.model, p, batch, key, w, entropy_temperature=cfg.entropy_temperature
        ),
        has_aux=True,
      )
      (_, (metrics, indices, mu)), grads = grad_fn(state.params)
      usage = state.model_state["usage"]
      if self.num_codes:
        counts = jnp.bincount(indices.reshape(-1), length=self.num_codes).astype(jnp.float32)
        usage = cfg.usage_decay * usage + (1 - cfg.usage_decay) * counts
        p = counts / jnp.sum(counts)
        metrics["batch_code_entropy"] = -jnp.sum(jnp.where(p > 0, p * jnp.log(p), 0.0))
      new_state = state.apply_gradients(grads, model_state={"usage": usage})
      if revive:
        params = new_state.params
        codebook = params["quant"]["codebook"]
        fresh = qz.revive_dead_codes(
          jax.random.fold_in(key, 1),
          codebook,
          usage,
          mu.reshape(-1, mu.shape[-1]),
          cfg.revive_threshold,
        )
        params = {**params, "quant": {**params["quant"], "codebook": fresh}}
        new_state = new_state.replace(params=params)
        metrics["dead_codes"] = jnp.mean((usage < cfg.revive_threshold).astype(jnp.float32))
      metrics["grad_norm"] = optax.global_norm(grads)
      return new_state, metrics

    replicated = NamedSharding(self.mesh, P())
    return jax.jit(
      step,
      in_shardings=(state_sharding, self.data_sharding, replicated),
      out_shardings=(state_sharding, replicated),
      donate_argnums=(0,),
    )

  def train(
    self, workdir: str, log_dir: str, stage: str, weights: Mapping[str, float], arrays, seed: int
  ):
    """Trains one variant in `workdir` (resumable) and returns its params.

    Args:
      log_dir: where metrics.jsonl is (rows tagged with `stage`).
      weights: the objective weights (see WEIGHT_NAMES); missing ones are 0.
      arrays: 'image', 'target', 'caption' of the training split ('caption' [N, K, L] holds K
        captions per image, one drawn per step: `text.pick_captions`).
    """
    unknown = set(weights) - set(WEIGHT_NAMES)
    if unknown:
      raise ConfigError(f"unknown tokenizer loss weights {sorted(unknown)}; known: {WEIGHT_NAMES}")
    w = {k: jnp.asarray(float(weights.get(k, 0.0)), jnp.float32) for k in WEIGHT_NAMES}
    first = arrays["caption"][:1]
    first = first[:, 0] if first.ndim == 3 else first  # [N, K, L]: every caption of an image
    state, sharding = self.init_state(seed, arrays["image"][:1], first)
    if self._step is None:
      self._step = self._build_step(sharding)
    from shared import data as data_lib

    cfg = self.cfg
    state = train_stage(
      cfg,
      state,
      lambda s, b: self._step(s, b, w),
      lambda start: text_lib.pick_captions(
        data_lib.batches(arrays, cfg.batch_size, seed=seed, start_step=start), seed, start
      ),
      self.num_steps,
      self.data_sharding,
      workdir,
      log_dir,
      stage,
    )
    return jax.device_get(state.params)

  # -- evaluation-time maps (posterior mean, no noise), batched with one compiled shape ---------

  def _batched(self, fn, params, x, batch: int = 500):
    n = len(x)
    b = min(batch, n)
    out = []
    for i in range(0, n, b):
      chunk = np.asarray(x[i : i + b])
      valid = len(chunk)
      if valid < b:
        chunk = np.concatenate([chunk, np.zeros((b - valid, *chunk.shape[1:]), chunk.dtype)])
      out.append(
        jax.tree.map(lambda a, v=valid: np.asarray(a)[:v], jax.device_get(fn(params, chunk)))
      )
    return jax.tree.map(lambda *xs: np.concatenate(xs), *out)

  def tokens(self, params, images) -> np.ndarray:
    if not self.num_codes:
      raise ConfigError("a continuous tokenizer has no discrete tokens for the unified models")
    return self._batched(self._tokens, params, images).astype(np.int32)

  def reconstruct(self, params, images) -> np.ndarray:
    return np.clip(self._batched(self._recon, params, images), 0.0, 1.0)

  def decode(self, params, indices) -> np.ndarray:
    return np.clip(self._batched(self._decode, params, indices), 0.0, 1.0)

  def posterior(self, params, images):
    return self._batched(self._posterior, params, images)

  def grid(self, image_size: int) -> int:
    return grid_size(image_size, self.cfg.patch_size, len(self.cfg.widths))


def cached_init(init_fn, tx, mesh):
  """`seed -> (TrainState, sharding)`, jitted once (as `train_lib.init_state`, which compiles a
  new closure on every call: with many same-shaped sub-runs that is most of their start-up)."""
  box = {}

  def create(key):
    init_rng, step_rng = jax.random.split(key)
    params, model_state = init_fn(init_rng)
    return train_lib.TrainState.create(params=params, tx=tx, rng=step_rng, model_state=model_state)

  def init(seed: int):
    key = jax.random.PRNGKey(seed)
    if not box:
      sharding = train_lib.state_shardings(jax.eval_shape(create, key), mesh)
      box["sharding"], box["fn"] = sharding, jax.jit(create, out_shardings=sharding)
    return box["fn"](key), box["sharding"]

  return init


def train_stage(cfg, state, step_fn, batches, num_steps, data_sharding, workdir, log_dir, stage):
  """`train_lib.train_loop` for one sub-run of the pipeline (a tokenizer or a unified model):
  resumable from `workdir/checkpoints` (`cfg.checkpoint_every`), metrics rows tagged `stage` in
  `log_dir`'s metrics.jsonl."""
  with (
    train_lib.Checkpointer(
      os.path.join(workdir, "checkpoints"), keep=1, every=cfg.checkpoint_every
    ) as ckpt,
    train_lib.MetricWriter(log_dir, stage=stage) as writer,
  ):
    return train_lib.train_loop(
      state=state,
      step_fn=step_fn,
      batches=batches,
      num_steps=num_steps,
      data_sharding=data_sharding,
      checkpointer=ckpt,
      writer=writer,
      log_every=cfg.log_every,
      progress=False,
      stage=stage,
    )


def log_summary(name: str, metrics: Mapping[str, float]) -> None:
  keys = ("psnr_image", "psnr_clean", "code_perplexity", "rate_nats", "kl_nats", "relevance")
  logging.info(
    "tokenizer %s: %s", name, ", ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics)
  )
