"""Unified multimodal models on top of a frozen tokenizer: one decoder over words + image codes.

Vocabulary: [text ids of the `transformers` tokenizer (V_t)] + [image codes (K)] + 6 specials
(<t2i>, <i2t>, <vqa>, <boi>, <eoi>, <mask>): V = V_t + K + 6. Three tasks, each a fixed layout
(positions never move, so a small model need not learn to find them):

  t2i   <t2i> caption(L_c) <boi> image(N) <eoi>                     targets: the image codes
  i2t   <i2t> <boi> image(N) <eoi> caption(L_c)                     targets: caption words, <eos>
  vqa   <vqa> <boi> image(N) <eoi> question(L_q) answer(L_a)        targets: answer words, <eos>

Styles (`shared.models.transformer.TransformerLM` in each):
  ar        Chameleon / LlamaGen / Emu3: causal attention, next-token prediction everywhere;
            images are sampled code by code.
  masked    Show-o (Xie et al. 2024): causal attention over text, bidirectional inside the image
            span (`span_bidirectional_mask`); text by next-token prediction, t2i images by masked
            token prediction (MaskGIT: mask ratio cos(pi/2 r), r ~ U(0, 1)) and sampled by
            iterative parallel decoding with `shared.masks.num_masked` / confidence re-masking.
  semantic  VILA-U / UniTok: the AR model, on a tokenizer trained with an image-text contrastive
            term (the difference lives in the tokenizer's loss weights:
            `tokenizer_sweep.semantic_weights`).
Training and sampling: `infotok.unified_trainer`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from shared import masks
from shared.errors import ConfigError
from shared.models.transformer import TransformerLM, span_bidirectional_mask

STYLES = ("ar", "masked", "semantic")
TASKS = ("t2i", "i2t", "vqa")
SPECIALS = ("<t2i>", "<i2t>", "<vqa>", "<boi>", "<eoi>", "<mask>")


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where everything sits in the shared vocabulary and in the three sequence layouts."""

  text_vocab: int
  num_codes: int
  num_image_tokens: int
  caption_len: int
  question_len: int
  answer_len: int
  pad_id: int
  bos_id: int
  eos_id: int

  @property
  def code_offset(self) -> int:
    return self.text_vocab

  def special(self, name: str) -> int:
    return self.text_vocab + self.num_codes + SPECIALS.index(name)

  @property
  def vocab_size(self) -> int:
    return self.text_vocab + self.num_codes + len(SPECIALS)

  @property
  def seq_len(self) -> int:
    n = self.num_image_tokens
    return max(3 + n + self.caption_len, 3 + n + self.question_len + self.answer_len)

  # Start positions of each segment, per task.
  def image_start(self, task: str) -> int:
    return self.caption_len + 2 if task == "t2i" else 2

  @property
  def caption_start(self) -> int:  # i2t
    return self.num_image_tokens + 3

  @property
  def question_start(self) -> int:  # vqa
    return self.num_image_tokens + 3

  @property
  def answer_start(self) -> int:  # vqa
    return self.num_image_tokens + 3 + self.question_len


def build_sequences(
  layout: Layout,
  task: str,
  image_BxN: np.ndarray,
  caption_BxLc: np.ndarray | None = None,
  question_BxLq: np.ndarray | None = None,
  answer_BxLa: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
  """Token rows of one task, with the masks the losses and decoders need.

  Args:
    image_BxN: code indices (0..K-1), or any placeholder where they are to be generated.

  Returns:
    'tokens' [B, L] int32; 'target' [B, L] bool, positions predicted from the previous one
    (AR) — for t2i the image positions; 'image' [B, L] bool, the image span.
  """
  lay = layout
  b, n = image_BxN.shape
  length = lay.seq_len
  tokens = np.full((b, length), lay.pad_id, np.int32)
  target = np.zeros((b, length), bool)
  img = lay.image_start(task)
  tokens[:, 0] = lay.special(f"<{task}>")
  if task == "t2i":
    tokens[:, 1 : 1 + lay.caption_len] = caption_BxLc
  tokens[:, img - 1] = lay.special("<boi>")
  tokens[:, img : img + n] = np.asarray(image_BxN) + lay.code_offset
  tokens[:, img + n] = lay.special("<eoi>")
  if task == "t2i":
    target[:, img : img + n] = True
  elif task == "i2t":
    s = lay.caption_start
    tokens[:, s : s + lay.caption_len] = caption_BxLc
    target[:, s + 1 : s + lay.caption_len] = _through_eos(caption_BxLc[:, 1:], lay)
  elif task == "vqa":
    q, a = lay.question_start, lay.answer_start
    tokens[:, q : q + lay.question_len] = question_BxLq
    tokens[:, a : a + lay.answer_len] = answer_BxLa
    target[:, a + 1 : a + lay.answer_len] = _through_eos(answer_BxLa[:, 1:], lay)
  else:
    raise ConfigError(f"unknown task {task!r}; known: {TASKS}")
  image = np.zeros((b, length), bool)
  image[:, img : img + n] = True
  return {"tokens": tokens, "target": target, "image": image}


def _through_eos(ids_BxL: np.ndarray, lay: Layout) -> np.ndarray:
  """True up to and including the first <eos> (the words to predict, not the padding after)."""
  is_eos = ids_BxL == lay.eos_id
  after = np.cumsum(is_eos, axis=1) - is_eos > 0
  return ~after & (ids_BxL != lay.pad_id)


def mixed_batch(layout: Layout, raw: Mapping[str, np.ndarray], fractions) -> dict[str, np.ndarray]:
  """A training batch whose rows are split among the tasks in `fractions` (t2i, i2t, vqa)."""
  b = len(raw["image_tokens"])
  counts = np.floor(np.asarray(fractions, np.float64) / np.sum(fractions) * b).astype(int)
  counts[0] += b - counts.sum()
  parts, start = [], 0
  for task_id, (task, c) in enumerate(zip(TASKS, counts, strict=True)):
    rows = slice(start, start + c)
    start += c
    if c == 0:
      continue
    seq = build_sequences(
      layout,
      task,
      raw["image_tokens"][rows],
      raw["caption"][rows],
      raw["question"][rows] if "question" in raw else None,
      raw["answer"][rows] if "answer" in raw else None,
    )
    seq["task"] = np.full((c,), task_id, np.int32)
    parts.append(seq)
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def make_model(cfg, layout: Layout) -> TransformerLM:
  return TransformerLM(
    vocab_size=layout.vocab_size,
    width=cfg.width,
    depth=cfg.depth,
    num_heads=cfg.num_heads,
    max_len=layout.seq_len,
    mlp_ratio=cfg.mlp_ratio,
    dropout_rate=cfg.dropout,
    dtype=jnp.dtype(cfg.get("compute_dtype", "float32")),  # params stay float32, logits too
  )


def attention_mask(style: str, image_BxL):
  """None (plain causal) for AR styles; Show-o's omni-attention for the masked style."""
  if style == "masked":
    return span_bidirectional_mask(image_BxL)
  return None


def _picked(logits_BxLxV, ids_BxL):
  """logits[b, l, ids[b, l]]."""
  return jnp.take_along_axis(logits_BxLxV, ids_BxL[..., None], axis=-1)[..., 0]


def loss_fn(model, style: str, layout: Layout, params, batch, key):
  """Per-task mean cross-entropy, averaged over the tasks in the batch.

  AR styles: next-token CE at 'target' positions. Masked style: t2i image codes are replaced by
  <mask> at a MaskGIT-schedule ratio and predicted at their own positions; text as AR.
  """
  tokens, target, image = batch["tokens"], batch["target"], batch["image"]
  b, length = tokens.shape
  inputs = tokens
  same_pos = jnp.zeros_like(target)
  if style == "masked":
    k_ratio, k_pick, k_drop = jax.random.split(key, 3)
    is_t2i = (batch["task"] == 0)[:, None]
    n = layout.num_image_tokens
    ratio_B = masks.maskgit_schedule(jax.random.uniform(k_ratio, (b,)))
    n_mask_B = jnp.clip(jnp.ceil(ratio_B * n), 1, n)
    # Random ranks among the image positions; the n_mask lowest are masked.
    noise = jnp.where(image, jax.random.uniform(k_pick, (b, length)), 2.0)
    rank = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)
    same_pos = is_t2i & image & (rank < n_mask_B[:, None])
    inputs = jnp.where(same_pos, layout.special("<mask>"), tokens)
    target = target & ~(is_t2i & image)
  else:
    k_drop = key
  logits = model.apply(
    {"params": params},
    inputs,
    attention_mask(style, image),
    train=model.dropout_rate > 0,
    rngs={"dropout": k_drop},
  )
  # Cross-entropy as log-normaliser - picked logit (optax's softmax_cross_entropy_with_integer_
  # labels, written out): the masked style's two terms (the next token from position l - 1, the
  # token in place at a <mask>) share the one logsumexp pass over the 114K-word vocabulary, the
  # largest elementwise work of the step.
  lse_BxL = jax.nn.logsumexp(logits, axis=-1)
  ce_next = lse_BxL[:, :-1] - _picked(logits[:, :-1], tokens[:, 1:])
  ce_next = jnp.pad(ce_next, ((0, 0), (1, 0)))  # aligned with the predicted position
  per_pos = jnp.where(target, ce_next, 0.0)
  if style == "masked":
    per_pos += jnp.where(same_pos, lse_BxL - _picked(logits, tokens), 0.0)
  counted = (target | same_pos).astype(jnp.float32)
  metrics, losses = {}, []
  for task_id, task in enumerate(TASKS):
    rows = (batch["task"] == task_id)[:, None]
    denom = jnp.sum(counted * rows)
    task_loss = jnp.sum(per_pos * rows) / jnp.maximum(denom, 1.0)
    metrics[f"loss_{task}"] = task_loss
    losses.append(jnp.where(denom > 0, task_loss, jnp.nan))
  loss = jnp.nanmean(jnp.stack(losses))
  return loss, metrics
