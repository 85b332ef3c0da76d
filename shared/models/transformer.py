"""Pre-norm transformer blocks and a decoder-only language model.

The blocks (`SelfAttention`, `MlpBlock`, `Block`) are shared with `shared.models.vit`. The LM is
GPT-style (Radford et al. 2019; nanodo `model.py`): token + learned position embeddings, pre-norm
blocks, final LayerNorm, tied or untied output head. Attention takes an explicit boolean mask
[B, 1 or H, L, L] (True = may attend), so callers can build Show-o style "omni-attention" masks
(Xie et al. 2024, arXiv 2408.12528: causal over text, bidirectional among image tokens) with
`span_bidirectional_mask`; without one it is causal by default.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from shared.errors import ConfigError

Dtype = Any

# Xavier-uniform for projections, as in MAE / timm ViTs and big_vision.
_dense_init = nn.initializers.xavier_uniform()


# ------------------------------------------------------------------------------------------------
# Masks (boolean, True = query may attend to key, shape [B or 1, 1, L, L]).


def causal_mask(length: int) -> jax.Array:
  """Lower-triangular mask [1, 1, L, L]: position t attends to positions <= t."""
  idx_L = jnp.arange(length)
  return (idx_L[None, :] <= idx_L[:, None])[None, None]


def prefix_causal_mask(prefix_len: int | jax.Array, length: int) -> jax.Array:
  """Prefix-LM mask (T5 / UniLM): bidirectional inside the first `prefix_len`, causal after.

  Args:
    prefix_len: an int, or per-example lengths [B].
    length: sequence length L.

  Returns:
    Boolean mask [1 or B, 1, L, L].
  """
  prefix_B = jnp.atleast_1d(jnp.asarray(prefix_len))
  idx_L = jnp.arange(length)
  causal_LxL = idx_L[None, :] <= idx_L[:, None]
  in_prefix_BxL = idx_L[None, :] < prefix_B[:, None]
  both_in_prefix_BxLxL = in_prefix_BxL[:, :, None] & in_prefix_BxL[:, None, :]
  return (causal_LxL[None] | both_in_prefix_BxLxL)[:, None]


def span_bidirectional_mask(bidirectional_BxL: jax.Array) -> jax.Array:
  """Causal mask where each contiguous run of `bidirectional` tokens also sees itself in full.

  This is Show-o's omni-attention: text tokens (False) attend causally; the tokens of one image
  (a contiguous True run) attend to each other in both directions and to everything before them.

  Args:
    bidirectional_BxL: bool [B, L], True for tokens in a bidirectional span (image tokens).

  Returns:
    Boolean mask [B, 1, L, L].
  """
  bidir_BxL = jnp.asarray(bidirectional_BxL, bool)
  length = bidir_BxL.shape[-1]
  # A span starts where a True follows a False (or at position 0); number the spans.
  prev_BxL = jnp.pad(bidir_BxL[:, :-1], ((0, 0), (1, 0)))
  span_id_BxL = jnp.cumsum(bidir_BxL & ~prev_BxL, axis=-1)
  same_span_BxLxL = (span_id_BxL[:, :, None] == span_id_BxL[:, None, :]) & (
    bidir_BxL[:, :, None] & bidir_BxL[:, None, :]
  )
  return (causal_mask(length)[:, 0] | same_span_BxLxL)[:, None]


def padding_mask(valid_BxL: jax.Array) -> jax.Array:
  """Key-padding mask [B, 1, 1, L]: no query attends to a padding key. Combine with `&`."""
  return jnp.asarray(valid_BxL, bool)[:, None, None, :]


# ------------------------------------------------------------------------------------------------
# Blocks.


def padded_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, implementation=None, multiple: int = 8):
  """Unmasked attention with the sequence zero-padded to a multiple of `multiple`.

  cuDNN's fused attention refuses some lengths in training (ViT-B/16's 197 = 196 patches + cls:
  "Unsupported sequence length Q 197, KV 197" with jax 0.11.2 on an H200); padding and passing
  the true lengths (`query_seq_lengths`, `key_value_seq_lengths`) keeps the padded keys out of
  every softmax, and the padded queries are sliced off, so the result equals unpadded attention.
  """
  b, length = q_BxLxHxK.shape[:2]
  pad = -length % multiple
  if pad:
    widths = ((0, 0), (0, pad), (0, 0), (0, 0))
    q_BxLxHxK, k_BxLxHxK, v_BxLxHxK = (
      jnp.pad(t, widths) for t in (q_BxLxHxK, k_BxLxHxK, v_BxLxHxK)
    )
  lengths_B = jnp.full((b,), length, jnp.int32)
  out_BxLxHxK = jax.nn.dot_product_attention(
    q_BxLxHxK,
    k_BxLxHxK,
    v_BxLxHxK,
    query_seq_lengths=lengths_B,
    key_value_seq_lengths=lengths_B,
    implementation=implementation,
  )
  return out_BxLxHxK[:, :length]


class SelfAttention(nn.Module):
  """Multi-head self-attention with one fused QKV projection and `jax.nn.dot_product_attention`.

  Attributes:
    num_heads: number of heads H; the width D must be divisible by it.
    dtype: compute dtype (params stay `param_dtype`).
    attention_impl: passed to `jax.nn.dot_product_attention` (None = XLA, or 'cudnn'). With
      'cudnn' and no mask, the sequence is padded to a multiple of 8 (`padded_attention`): on an
      H200 with jax 0.11.2, cuDNN rejected MAE's unpadded ViT-B/16 length 197 in training.
  """

  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x_BxLxD, mask=None, is_causal: bool = False, cache=None):
    """Attention over x; with `cache` = (k_BxTxHxK, v_BxTxHxK, start), the keys / values of x
    are written at positions start .. start + L - 1 of the cache, the queries attend over all T
    cached positions through `mask` [B, 1, L, T] (which must hide the unwritten ones), and the
    result is (output, (k, v)) with the updated cache (incremental decoding)."""
    width = x_BxLxD.shape[-1]
    if width % self.num_heads:
      raise ConfigError(f"width {width} is not divisible by num_heads {self.num_heads}")
    head_dim = width // self.num_heads
    qkv_BxLx3xHxK = nn.DenseGeneral(
      (3, self.num_heads, head_dim),
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=_dense_init,
      name="qkv",
    )(x_BxLxD)
    q_BxLxHxK, k_BxLxHxK, v_BxLxHxK = (qkv_BxLx3xHxK[:, :, i] for i in range(3))
    if cache is not None:
      k_BxTxHxK, v_BxTxHxK, start = cache
      at = (0, start, 0, 0)
      k_BxTxHxK = jax.lax.dynamic_update_slice(k_BxTxHxK, k_BxLxHxK.astype(k_BxTxHxK.dtype), at)
      v_BxTxHxK = jax.lax.dynamic_update_slice(v_BxTxHxK, v_BxLxHxK.astype(v_BxTxHxK.dtype), at)
      out_BxLxHxK = jax.nn.dot_product_attention(
        q_BxLxHxK, k_BxTxHxK.astype(q_BxLxHxK.dtype), v_BxTxHxK.astype(q_BxLxHxK.dtype), mask=mask
      )
    elif self.attention_impl == "cudnn" and mask is None and not is_causal:
      out_BxLxHxK = padded_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, "cudnn")
    else:
      out_BxLxHxK = jax.nn.dot_product_attention(
        q_BxLxHxK,
        k_BxLxHxK,
        v_BxLxHxK,
        mask=mask,
        is_causal=is_causal,
        implementation=self.attention_impl,
      )
    out_BxLxD = nn.DenseGeneral(
      width,
      axis=(-2, -1),
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=_dense_init,
      name="out",
    )(out_BxLxHxK)
    return out_BxLxD if cache is None else (out_BxLxD, (k_BxTxHxK, v_BxTxHxK))


class MlpBlock(nn.Module):
  """Two-layer MLP with GELU (tanh approximation off, as in PyTorch's nn.GELU default)."""

  mlp_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxLxD):
    width = x_BxLxD.shape[-1]
    dense = lambda n, name: nn.Dense(
      n, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=_dense_init, name=name
    )
    h_BxLxF = nn.gelu(dense(self.mlp_dim, "fc1")(x_BxLxD), approximate=False)
    return dense(width, "fc2")(h_BxLxF)


class Block(nn.Module):
  """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)) (Vaswani et al.; ViT)."""

  num_heads: int
  mlp_ratio: float = 4.0
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str | None = None
  layer_norm_eps: float = 1e-6

  @nn.compact
  def __call__(
    self, x_BxLxD, mask=None, is_causal: bool = False, deterministic: bool = True, cache=None
  ):
    """x -> x'; with a `cache` (see SelfAttention), (x', updated (k, v))."""
    width = x_BxLxD.shape[-1]
    norm = lambda name: nn.LayerNorm(
      epsilon=self.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype, name=name
    )
    drop = nn.Dropout(self.dropout_rate)
    attn = SelfAttention(
      self.num_heads,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      attention_impl=self.attention_impl,
      name="attn",
    )(norm("norm1")(x_BxLxD), mask, is_causal, cache)
    h_BxLxD, kv = attn if cache is not None else (attn, None)
    x_BxLxD = x_BxLxD + drop(h_BxLxD, deterministic=deterministic)
    h_BxLxD = MlpBlock(
      int(width * self.mlp_ratio), dtype=self.dtype, param_dtype=self.param_dtype, name="mlp"
    )(norm("norm2")(x_BxLxD))
    x_BxLxD = x_BxLxD + drop(h_BxLxD, deterministic=deterministic)
    return x_BxLxD if cache is None else (x_BxLxD, kv)


def block_class(remat: bool) -> Callable[..., nn.Module]:
  """`Block`, or its rematerialised version (activations recomputed in the backward pass).

  `is_causal` and `deterministic` are Python bools, so they are static arguments of the remat
  (indices count `self` as 0); callers must pass them positionally.
  """
  return nn.remat(Block, static_argnums=(3, 4)) if remat else Block


# ------------------------------------------------------------------------------------------------
# Decoder-only language model.


class TransformerLM(nn.Module):
  """Decoder-only transformer LM (GPT-2 layout; nanodo `TransformerDecoder`).

  Attributes:
    vocab_size: V.
    width, depth, num_heads: D, number of blocks, H.
    max_len: number of learned position embeddings; longer inputs are a ConfigError.
    mlp_ratio: MLP hidden size / D.
    tie_embeddings: output logits use the token-embedding matrix (x @ E^T) instead of a head.
    dropout_rate: residual and embedding dropout (needs a 'dropout' rng when training).
    dtype: compute dtype; params are `param_dtype` (f32). Logits are returned in f32.
    remat: rematerialise each block.
    attention_impl: passed to `jax.nn.dot_product_attention`.
  """

  vocab_size: int
  width: int = 256
  depth: int = 4
  num_heads: int = 4
  max_len: int = 256
  mlp_ratio: float = 4.0
  tie_embeddings: bool = True
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: bool = False
  attention_impl: str | None = None

  def setup(self):
    embed_init = nn.initializers.normal(stddev=0.02)
    self.token_embed = nn.Embed(
      self.vocab_size,
      self.width,
      embedding_init=embed_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )
    self.pos_embed = self.param(
      "pos_embed", embed_init, (self.max_len, self.width), self.param_dtype
    )
    block = block_class(self.remat)
    self.blocks = [
      block(
        self.num_heads,
        mlp_ratio=self.mlp_ratio,
        dropout_rate=self.dropout_rate,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        attention_impl=self.attention_impl,
        layer_norm_eps=1e-5,
        name=f"block_{i}",
      )
      for i in range(self.depth)
    ]
    self.final_norm = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, param_dtype=self.param_dtype)
    if not self.tie_embeddings:
      self.head = nn.Dense(
        self.vocab_size,
        use_bias=False,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=_dense_init,
      )
    self.dropout = nn.Dropout(self.dropout_rate)

  def __call__(self, tokens_BxL, mask=None, *, causal: bool = True, train: bool = False):
    """Logits for every position.

    Args:
      tokens_BxL: int token ids.
      mask: optional bool [B or 1, 1 or H, L, L], True = may attend; used as given (it replaces
        the causal default, so it must itself be causal where causality is wanted).
      causal: without `mask`, causal (True) or full bidirectional (False) attention.
      train: enables dropout.

    Returns:
      logits_BxLxV in float32.
    """
    return self.logits(self.hidden(tokens_BxL, mask, causal=causal, train=train))

  def hidden(self, tokens_BxL, mask=None, *, causal: bool = True, train: bool = False):
    """Final-norm hidden states h_BxLxD (the features under the output head)."""
    length = tokens_BxL.shape[-1]
    if length > self.max_len:
      raise ConfigError(f"sequence length {length} exceeds max_len {self.max_len}")
    x_BxLxD = self.token_embed(tokens_BxL) + self.pos_embed[:length].astype(self.dtype)
    x_BxLxD = self.dropout(x_BxLxD, deterministic=not train)
    if mask is not None:
      mask = jnp.asarray(mask, bool)
    is_causal = mask is None and causal
    for block in self.blocks:
      x_BxLxD = block(x_BxLxD, mask, is_causal, not train)
    return self.final_norm(x_BxLxD)

  def init_cache(self, batch: int, length: int | None = None, dtype=None):
    """Zero keys / values for `decode`: per block (k, v), each [B, T, H, D / H], T = max_len."""
    length = length or self.max_len
    shape = (batch, length, self.num_heads, self.width // self.num_heads)
    zeros = jnp.zeros(shape, dtype or self.dtype)
    return [(zeros, zeros) for _ in range(self.depth)]

  def decode(self, tokens_BxS, start, cache, mask_BxSxT):
    """Incremental decoding: logits of the S tokens at positions start .. start + S - 1, given
    the keys / values of the earlier positions in `cache` (`init_cache`); returns (logits
    [B, S, V], updated cache). `mask_BxSxT` [B, 1 or H, S, T] says which cached positions each
    new token attends to (True = may attend); it must hide positions not written yet. Equal to
    the matching rows of `__call__` with the full mask (no dropout: inference only).
    """
    s = tokens_BxS.shape[-1]
    pos_SxD = jax.lax.dynamic_slice_in_dim(self.pos_embed, start, s)
    x_BxSxD = self.token_embed(tokens_BxS) + pos_SxD.astype(self.dtype)
    mask = jnp.asarray(mask_BxSxT, bool)
    new_cache = []
    for block, (k, v) in zip(self.blocks, cache, strict=True):
      x_BxSxD, kv = block(x_BxSxD, mask, False, True, (k, v, start))
      new_cache.append(kv)
    return self.logits(self.final_norm(x_BxSxD)), new_cache

  def logits(self, h_BxLxD):
    """Output head on hidden states: tied (h @ E^T) or a separate projection; float32."""
    if self.tie_embeddings:
      logits_BxLxV = self.token_embed.attend(h_BxLxD)
    else:
      logits_BxLxV = self.head(h_BxLxD)
    return logits_BxLxV.astype(jnp.float32)
