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
Training and the batched evaluation-time maps: `infotok.tokenizer_trainer`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from infotok import quantizers, regularizers
from shared.errors import ConfigError
from shared.models.conv import ConvDecoder, ConvEncoder

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
    dtype: compute dtype of the encoder and decoder (bfloat16 on accelerators); params, the
      posterior, the quantizer, the heads and every loss stay float32.
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
  dtype: Any = jnp.float32

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
    self.encoder = ConvEncoder(out_channels=2 * d, dtype=self.dtype, **arch)
    self.decoder = ConvDecoder(out_channels=3, dtype=self.dtype, **arch)
    if self.quantizer == "vq":
      self.quant = quantizers.VectorQuantizer(
        self.codebook_size, d, self.commitment, self.normalize_codes
      )
    elif self.quantizer == "fsq":
      self.quant = quantizers.FSQ(tuple(self.fsq_levels))
    elif self.quantizer == "continuous":
      self.quant = quantizers.Continuous(d)
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

  def evaluate(self, images_BxHxWxC):
    """One encoder pass for every evaluation quantity (posterior mean, no noise): 'recon' (as
    `reconstruct`), 'mu', 'logvar' (as `posterior`) and 'indices' (as `tokens`)."""
    mu, logvar = self.posterior(images_BxHxWxC)
    zq, indices, _ = self.quant(mu)
    return {"recon": self.decode(zq), "mu": mu, "logvar": logvar, "indices": indices}

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
    dtype=jnp.dtype(cfg.get("compute_dtype", "float32")),
  )


def num_codes(cfg) -> int:
  if cfg.quantizer == "vq":
    return cfg.codebook_size
  if cfg.quantizer == "fsq":
    return quantizers.fsq_num_codes(cfg.fsq_levels)
  return 0


def objective(
  model: Tokenizer, params, batch, key, w: Mapping[str, jax.Array], *, entropy_temperature
):
  """The loss L above and its parts; batch: 'image' (input), 'target', 'caption' (ids)."""
  out = model.apply({"params": params}, batch["image"], batch["caption"], key, w["noise"])
  b, n, d = out["mu"].shape
  mse = jnp.mean(jnp.square(out["recon"] - batch["target"]))
  rate_B = regularizers.vib_rate(out["mu"], out["logvar"])
  kl_per_dim = jnp.mean(rate_B) / (n * d)
  vq_loss = out["aux"].get("vq_loss", jnp.zeros(()))
  if "distances" in out["aux"]:
    ent = quantizers.entropy_loss(out["aux"]["distances"], entropy_temperature)
  else:
    ent = jnp.zeros(())
  hsic_term, hsic_parts = regularizers.hsic_bottleneck(
    batch["image"].reshape(b, -1),
    out["zq"].reshape(b, -1),
    batch["caption"],
    w["hsic_beta_x"],
    w["hsic_lambda_y"],
  )
  nce = regularizers.consistency(
    regularizers.cosine_scores(out["image_emb"], out["text_emb"], out["log_scale"])
  )
  align = regularizers.clip_loss(
    regularizers.cosine_scores(
      out["align_image_emb"], out["align_text_emb"], out["align_log_scale"]
    )
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
