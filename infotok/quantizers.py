"""Quantizers for the shared visual tokenizer: VQ, FSQ, and a continuous (identity) bottleneck.

Each maps latents z_BxNxD to (zq_BxNxD, indices_BxN, losses) with a straight-through gradient
(zq = z + stop_gradient(q - z): the forward pass sees the code, the backward pass the identity),
and has `decode(indices_BxN) -> zq_BxNxD`. Written from the papers:
  VQ:  van den Oord et al. 2017 (VQ-VAE), eq. 3: ||sg(z) - e||^2 + beta ||z - sg(e)||^2.
  FSQ: Mentzer et al. 2023 (Finite Scalar Quantization), Sec. 3 and App. A: bound each channel
       to L_i levels with tanh, round with a straight-through estimator; the code index is the
       mixed-radix number of the levels.
Code-usage statistics (`code_usage`) and MaskGIT's codebook entropy loss (`entropy_loss`, Chang
et al. 2022's `libml/losses.py` idea: low per-token entropy, high batch-average entropy) live here
because they only need distances / indices.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from shared.errors import ConfigError


def straight_through(z: jax.Array, q: jax.Array) -> jax.Array:
  """q in the forward pass, identity gradient to z in the backward pass."""
  return z + jax.lax.stop_gradient(q - z)


def squared_distances(z_MxD: jax.Array, codebook_KxD: jax.Array) -> jax.Array:
  """||z_m - e_k||^2 for all pairs, via |z|^2 - 2 z.e + |e|^2 (one matmul)."""
  z_sq_M = jnp.sum(jnp.square(z_MxD), axis=-1)
  e_sq_K = jnp.sum(jnp.square(codebook_KxD), axis=-1)
  return jnp.maximum(z_sq_M[:, None] - 2.0 * z_MxD @ codebook_KxD.T + e_sq_K[None, :], 0.0)


class VectorQuantizer(nn.Module):
  """Nearest-neighbour VQ with a learned codebook, straight-through, commitment loss.

  Attributes:
    codebook_size: K.
    code_dim: D.
    commitment: beta of VQ-VAE eq. 3 (0.25 in the paper).
    normalize: l2-normalise latents and codes before the lookup (cosine similarity; Yu et al.
      2022, ViT-VQGAN, Sec. 3.2): keeps codes on the sphere where the latents are, which
      avoids the codebook collapse that plain Euclidean VQ shows at this scale.
  """

  codebook_size: int
  code_dim: int
  commitment: float = 0.25
  normalize: bool = True

  def setup(self):
    # N(0, 1) codes sit where a VIB posterior's prior puts the latents (KL to N(0, I)).
    self.codebook = self.param(
      "codebook", nn.initializers.normal(1.0), (self.codebook_size, self.code_dim)
    )

  def __call__(self, z_BxNxD: jax.Array):
    """Returns (zq_BxNxD straight-through, indices_BxN int32, aux dict).

    aux: 'codebook_loss' ||sg(z) - e||^2, 'commit_loss' ||z - sg(e)||^2 (means over B, N, D;
    the total VQ loss is codebook_loss + commitment * commit_loss = aux['vq_loss']) and
    'distances' [B, N, K] for the entropy loss.
    """
    b, n, d = z_BxNxD.shape
    if d != self.code_dim:
      raise ConfigError(f"VQ: latents have {d} channels, the codebook {self.code_dim}")
    if self.normalize:
      z_BxNxD = _l2_normalize(z_BxNxD)
    codebook_KxD = self.codes()
    dist_MxK = squared_distances(z_BxNxD.reshape(b * n, d), codebook_KxD)
    idx_M = jnp.argmin(dist_MxK, axis=-1).astype(jnp.int32)
    q_BxNxD = codebook_KxD[idx_M].reshape(b, n, d)
    codebook_loss = jnp.mean(jnp.square(jax.lax.stop_gradient(z_BxNxD) - q_BxNxD))
    commit_loss = jnp.mean(jnp.square(z_BxNxD - jax.lax.stop_gradient(q_BxNxD)))
    aux = {
      "codebook_loss": codebook_loss,
      "commit_loss": commit_loss,
      "vq_loss": codebook_loss + self.commitment * commit_loss,
      "distances": dist_MxK.reshape(b, n, self.codebook_size),
    }
    return straight_through(z_BxNxD, q_BxNxD), idx_M.reshape(b, n), aux

  def codes(self) -> jax.Array:
    """The codebook as used in the lookup (normalised when `normalize`)."""
    return _l2_normalize(self.codebook) if self.normalize else self.codebook

  def decode(self, indices_BxN: jax.Array) -> jax.Array:
    return self.codes()[indices_BxN]

  @property
  def num_codes(self) -> int:
    return self.codebook_size


def _l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  return x / jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + eps)


def fsq_num_codes(levels: Sequence[int]) -> int:
  return int(np.prod(levels))


class FSQ(nn.Module):
  """Finite scalar quantization (Mentzer et al. 2023); no parameters, no auxiliary loss.

  aux holds 'distances' [B, N, K] to the K implicit codes (for `entropy_loss`).

  Channel i is squashed to (L_i - 1) / 2 * tanh(.) (shifted for even L_i so that the levels are
  integers after rounding), rounded straight-through and rescaled to [-1, 1]. Indices are
  sum_i digit_i * prod_{j < i} L_j with digit_i in [0, L_i).

  Attributes:
    levels: L_i per channel, e.g. (8, 5, 5, 5) for 1000 codes; the latent has len(levels) channels.
    eps: keeps tanh's range strictly inside the outer levels.
  """

  levels: Sequence[int] = (8, 5, 5, 5)
  eps: float = 1e-3

  def _consts(self):
    levels = jnp.asarray(self.levels, jnp.float32)
    half_l = (levels - 1.0) * (1.0 - self.eps) / 2.0
    offset = jnp.where(jnp.asarray(self.levels) % 2 == 0, 0.5, 0.0)
    shift = jnp.arctanh(offset / half_l)
    half_width = jnp.asarray([lv // 2 for lv in self.levels], jnp.float32)
    basis = jnp.asarray(np.concatenate([[1], np.cumprod(self.levels[:-1])]), jnp.int32)
    return half_l, offset, shift, half_width, basis

  def bound(self, z: jax.Array) -> jax.Array:
    half_l, offset, shift, _, _ = self._consts()
    return jnp.tanh(z + shift) * half_l - offset

  def __call__(self, z_BxNxD: jax.Array):
    if z_BxNxD.shape[-1] != len(self.levels):
      raise ConfigError(
        f"FSQ: latents have {z_BxNxD.shape[-1]} channels, levels {tuple(self.levels)} need "
        f"{len(self.levels)}"
      )
    _, _, _, half_width, _ = self._consts()
    bounded = self.bound(z_BxNxD)
    zq = straight_through(bounded, jnp.round(bounded)) / half_width
    # Distances of the (unrounded) latents to every implicit code, for the entropy-loss baseline.
    b, n, d = z_BxNxD.shape
    all_codes_KxD = self.decode(jnp.arange(self.num_codes))
    dist = squared_distances((bounded / half_width).reshape(b * n, d), all_codes_KxD)
    return zq, self.codes_to_indices(zq), {"distances": dist.reshape(b, n, self.num_codes)}

  def codes_to_indices(self, zq_BxNxD: jax.Array) -> jax.Array:
    _, _, _, half_width, basis = self._consts()
    digits = jnp.round(zq_BxNxD * half_width + half_width).astype(jnp.int32)
    return jnp.sum(digits * basis, axis=-1).astype(jnp.int32)

  def decode(self, indices_BxN: jax.Array) -> jax.Array:
    _, _, _, half_width, basis = self._consts()
    levels = jnp.asarray(self.levels, jnp.int32)
    digits = (indices_BxN[..., None] // basis) % levels
    return (digits.astype(jnp.float32) - half_width) / half_width

  @property
  def num_codes(self) -> int:
    return fsq_num_codes(self.levels)


class Continuous(nn.Module):
  """No quantization (a GIVT-style Gaussian bottleneck): zq = z; indices are all zero.

  Only for tokenizer-level studies (rate / reconstruction): the unified models need discrete codes.
  """

  code_dim: int = 8

  def __call__(self, z_BxNxD: jax.Array):
    return z_BxNxD, jnp.zeros(z_BxNxD.shape[:-1], jnp.int32), {}

  def decode(self, indices_BxN: jax.Array) -> jax.Array:
    raise ConfigError("a continuous tokenizer has no code indices to decode")

  @property
  def num_codes(self) -> int:
    return 0


def entropy_loss(distances_BxNxK: jax.Array, temperature: float = 0.01) -> jax.Array:
  """MaskGIT's codebook entropy loss: E_tokens[H(p_t)] - H(E_tokens[p_t]), p_t = softmax(-d / T).

  Minimising it makes each token's assignment confident and the batch's average assignment spread
  over the codebook (raises code usage, i.e. it raises I(X; code): it fights a rate penalty).
  """
  logits_MxK = -distances_BxNxK.reshape(-1, distances_BxNxK.shape[-1]) / temperature
  probs_MxK = jax.nn.softmax(logits_MxK, axis=-1)
  log_probs_MxK = jax.nn.log_softmax(logits_MxK, axis=-1)
  per_token = -jnp.mean(jnp.sum(probs_MxK * log_probs_MxK, axis=-1))
  avg_K = jnp.mean(probs_MxK, axis=0)
  batch = -jnp.sum(avg_K * jnp.log(avg_K + 1e-10))
  return per_token - batch


def code_usage(indices: jax.Array | np.ndarray, num_codes: int) -> dict[str, float]:
  """Plug-in code entropy (nats/token), perplexity exp(H), used and dead-code fractions.

  Computed on the host from all indices of an evaluation set; H(code) is the discrete rate: for a
  deterministic encoder, I(X; code_t) = H(code_t) <= log K.
  """
  idx = np.asarray(indices).reshape(-1)
  counts = np.bincount(idx, minlength=num_codes).astype(np.float64)
  p = counts / max(counts.sum(), 1.0)
  nz = p[p > 0]
  entropy = float(-np.sum(nz * np.log(nz)))
  used = int(np.sum(counts > 0))
  return {
    "code_entropy": entropy,
    "code_perplexity": float(np.exp(entropy)),
    "codes_used": used,
    "dead_code_fraction": 1.0 - used / num_codes,
  }


def revive_dead_codes(
  key: jax.Array,
  codebook_KxD: jax.Array,
  usage_K: jax.Array,
  z_MxD: jax.Array,
  threshold: float,
) -> jax.Array:
  """Replaces codes whose running usage is below `threshold` by random latents of the batch.

  The restart trick of Dhariwal et al. 2020 (Jukebox) and big_vision's UViM: a dead code is moved
  to where the encoder actually puts latents, so it can win assignments again.
  """
  pick_K = jax.random.randint(key, (codebook_KxD.shape[0],), 0, z_MxD.shape[0])
  dead_K = usage_K < threshold
  return jnp.where(dead_K[:, None], jax.lax.stop_gradient(z_MxD[pick_K]), codebook_KxD)
