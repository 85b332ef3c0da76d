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
            term (the difference lives in the tokenizer's loss weights, see train.py).
Text is decoded greedily and restricted to words; images are sampled among codes only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from infotok import text as text_lib
from infotok.tokenizer import cached_init, train_stage
from shared import masks, train_lib
from shared.errors import ConfigError
from shared.models.transformer import TransformerLM, causal_mask, span_bidirectional_mask

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
  )


def attention_mask(style: str, image_BxL):
  """None (plain causal) for AR styles; Show-o's omni-attention for the masked style."""
  if style == "masked":
    return span_bidirectional_mask(image_BxL)
  return None


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
  ce_next = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:])
  ce_next = jnp.pad(ce_next, ((0, 0), (1, 0)))  # aligned with the predicted position
  ce_same = optax.softmax_cross_entropy_with_integer_labels(logits, tokens)
  per_pos = jnp.where(target, ce_next, 0.0) + jnp.where(same_pos, ce_same, 0.0)
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


def _restrict(logits_BxV, lo: int, hi: int, also: tuple[int, ...] = ()):
  """-inf outside [lo, hi) (and the ids in `also`)."""
  ids = jnp.arange(logits_BxV.shape[-1])
  ok = (ids >= lo) & (ids < hi)
  for i in also:
    ok = ok | (ids == i)
  return jnp.where(ok, logits_BxV, -jnp.inf)


class UnifiedTrainer:
  """Trains and samples unified models of one style; all variants share the compiled functions."""

  def __init__(self, cfg, style: str, layout: Layout, mesh):
    if style not in STYLES:
      raise ConfigError(f"unknown unified style {style!r}; known: {STYLES}")
    self.cfg = cfg
    self.style = "masked" if style == "masked" else "ar"
    self.layout = layout
    self.mesh = mesh
    self.model = make_model(cfg, layout)
    self.tx = train_lib.make_optimizer(cfg.optimizer, cfg.num_steps)
    self.data_sharding = train_lib.batch_sharding(mesh)
    self._step = None
    self._init = None
    self._fns: dict = {}

  def init_state(self, seed: int):
    if self._init is None:
      sample = jnp.zeros((1, self.layout.seq_len), jnp.int32)
      self._init = cached_init(
        lambda k: (self.model.init(k, sample)["params"], {}), self.tx, self.mesh
      )
    return self._init(seed)

  def _build_step(self, state_sharding):
    def step(state, batch):
      (loss, metrics), grads = jax.value_and_grad(
        lambda p: loss_fn(self.model, self.style, self.layout, p, batch, state.step_rng()),
        has_aux=True,
      )(state.params)
      return state.apply_gradients(grads), {
        "loss": loss,
        "grad_norm": optax.global_norm(grads),
        **metrics,
      }

    return train_lib.make_step(step, state_sharding, self.data_sharding)

  def train(self, workdir: str, log_dir: str, stage: str, arrays, seed: int):
    """Trains one model (resumable in `workdir`) on image_tokens, caption, question, answer."""
    from shared import data as data_lib

    cfg = self.cfg
    state, sharding = self.init_state(seed)
    if self._step is None:
      self._step = self._build_step(sharding)

    def batches(start):
      stream = data_lib.batches(arrays, cfg.batch_size, seed=seed, start_step=start)
      for raw in text_lib.pick_captions(stream, seed, start):
        yield mixed_batch(self.layout, raw, cfg.task_fractions)

    state = train_stage(
      cfg, state, self._step, batches, cfg.num_steps, self.data_sharding, workdir, log_dir, stage
    )
    return jax.device_get(state.params)

  # -- sampling ---------------------------------------------------------------------------------

  def _forward(self, params, tokens, image):
    return self.model.apply({"params": params}, tokens, attention_mask(self.style, image))

  def _decode_loop(self, start: int, steps: int, pick):
    """fn(params, tokens, image, key) filling positions start .. start + steps - 1 one at a time,
    token p = pick(i, logits of position p - 1, key) for i = p - start.

    With `unified.kv_cache` (default) the prefix runs once and every new token attends to cached
    keys / values (`TransformerLM.decode`): O(steps) token passes instead of O(steps) full
    forwards. Without it, every step recomputes the whole sequence (the reference; equal results).
    """
    if not self.cfg.get("kv_cache", True):

      def full(params, tokens, image, key):
        def body(i, toks):
          p = start + i
          logits = self._forward(params, toks, image)[:, p - 1]
          return toks.at[:, p].set(pick(i, logits, key).astype(toks.dtype))

        return jax.lax.fori_loop(0, steps, body, tokens)

      return full

    model = self.model

    def cached(params, tokens, image, key):
      b, length = tokens.shape
      mask = attention_mask(self.style, image)
      mask = jnp.broadcast_to(causal_mask(length) if mask is None else mask, (b, 1, length, length))
      apply = lambda *a: model.apply({"params": params}, *a, method=TransformerLM.decode)
      logits, cache = apply(tokens[:, :start], 0, model.init_cache(b, length), mask[:, :, :start])

      def body(i, carry):
        toks, cache, last = carry
        p = start + i
        toks = toks.at[:, p].set(pick(i, last, key).astype(toks.dtype))
        rows = jax.lax.dynamic_slice_in_dim(mask, p, 1, axis=2)
        new, cache = apply(jax.lax.dynamic_slice_in_dim(toks, p, 1, axis=1), p, cache, rows)
        return toks, cache, new[:, 0]

      return jax.lax.fori_loop(0, steps, body, (tokens, cache, logits[:, -1]))[0]

    return cached

  def _text_fn(self, start: int, steps: int):
    """Greedy decoding of `steps` words at positions start .. start + steps - 1."""
    key = ("text", start, steps)
    if key not in self._fns:
      lay = self.layout
      banned = {lay.pad_id, lay.bos_id}

      def pick(i, logits, key):
        logits = _restrict(logits, 0, lay.text_vocab)
        for t in banned:
          logits = logits.at[:, t].set(-jnp.inf)
        return jnp.argmax(logits, axis=-1)

      loop = self._decode_loop(start, steps, pick)
      self._fns[key] = jax.jit(lambda params, tokens, image: loop(params, tokens, image, None))
    return self._fns[key]

  def _image_ar_fn(self):
    if "image_ar" not in self._fns:
      lay = self.layout
      temp, top_k = self.cfg.temperature, self.cfg.top_k

      def pick(i, logits, key):
        logits = _restrict(logits, lay.code_offset, lay.code_offset + lay.num_codes)
        return _sample(jax.random.fold_in(key, i), logits, temp, top_k)

      loop = self._decode_loop(lay.image_start("t2i"), lay.num_image_tokens, pick)
      self._fns["image_ar"] = jax.jit(loop)
    return self._fns["image_ar"]

  def _image_masked_fn(self):
    """MaskGIT iterative decoding (Chang et al. 2022, Sec. 3.2): sample all masked codes, keep the
    most confident, re-mask the rest down to num_masked(t); confidence noise anneals to 0."""
    if "image_masked" not in self._fns:
      lay = self.layout
      start, n = lay.image_start("t2i"), lay.num_image_tokens
      cfg = self.cfg
      mask_id = lay.special("<mask>")

      def generate(params, tokens, image, key):
        def body(t, toks):
          k_sample, k_choice = jax.random.split(jax.random.fold_in(key, t))
          logits = self._forward(params, toks, image)[:, start : start + n]
          logits = _restrict(logits, lay.code_offset, lay.code_offset + lay.num_codes)
          current = toks[:, start : start + n]
          unknown = current == mask_id
          pick = _sample(k_sample, logits, cfg.temperature, cfg.top_k)
          logp = jax.nn.log_softmax(logits / cfg.temperature, axis=-1)
          conf = jnp.take_along_axis(logp, pick[..., None], axis=-1)[..., 0]
          pick = jnp.where(unknown, pick, current)
          anneal = cfg.choice_temperature * (1.0 - (t + 1.0) / cfg.masked_steps)
          conf = conf + anneal * jax.random.gumbel(k_choice, conf.shape)
          conf = jnp.where(unknown, conf, jnp.inf)
          keep_masked = masks.num_masked(t, cfg.masked_steps, n)
          rank = jnp.argsort(jnp.argsort(conf, axis=1), axis=1)
          new = jnp.where(rank < keep_masked, mask_id, pick)
          return toks.at[:, start : start + n].set(new.astype(toks.dtype))

        return jax.lax.fori_loop(0, cfg.masked_steps, body, tokens)

      self._fns["image_masked"] = jax.jit(generate)
    return self._fns["image_masked"]

  def _batched(self, fn, params, seqs, *extra, batch: int | None = None):
    batch = batch or self.cfg.eval_batch_size
    tokens, image = seqs["tokens"], seqs["image"]
    out = []
    for i in range(0, len(tokens), batch):
      t, im = tokens[i : i + batch], image[i : i + batch]
      valid = len(t)
      if valid < batch:
        t = np.concatenate([t, np.repeat(t[-1:], batch - valid, 0)])
        im = np.concatenate([im, np.repeat(im[-1:], batch - valid, 0)])
      args = [jax.random.fold_in(e, i) if isinstance(e, jax.Array) else e for e in extra]
      out.append(np.asarray(fn(params, t, im, *args))[:valid])
    return np.concatenate(out)

  def generate_images(self, params, captions, key) -> np.ndarray:
    """Code indices [B, N] sampled for captions [B, L_c]."""
    lay = self.layout
    placeholder = np.zeros((len(captions), lay.num_image_tokens), np.int32)
    seqs = build_sequences(lay, "t2i", placeholder, caption_BxLc=captions)
    start, n = lay.image_start("t2i"), lay.num_image_tokens
    if self.style == "masked":
      seqs["tokens"][:, start : start + n] = lay.special("<mask>")
      fn = self._image_masked_fn()
    else:
      fn = self._image_ar_fn()
    tokens = self._batched(fn, params, seqs, key)
    return tokens[:, start : start + n] - lay.code_offset

  def caption(self, params, image_tokens) -> np.ndarray:
    """Greedy captions [B, L_c] (text ids from <bos>) for images given as codes."""
    lay = self.layout
    b = len(image_tokens)
    cap = np.full((b, lay.caption_len), lay.pad_id, np.int32)
    cap[:, 0] = lay.bos_id
    seqs = build_sequences(lay, "i2t", image_tokens, caption_BxLc=cap)
    s = lay.caption_start
    tokens = self._batched(self._text_fn(s + 1, lay.caption_len - 1), params, seqs)
    return tokens[:, s : s + lay.caption_len]

  def answer(self, params, image_tokens, questions) -> np.ndarray:
    """Greedy answers [B, L_a] (text ids from <bos>)."""
    lay = self.layout
    b = len(image_tokens)
    ans = np.full((b, lay.answer_len), lay.pad_id, np.int32)
    ans[:, 0] = lay.bos_id
    seqs = build_sequences(lay, "vqa", image_tokens, question_BxLq=questions, answer_BxLa=ans)
    a = lay.answer_start
    tokens = self._batched(self._text_fn(a + 1, lay.answer_len - 1), params, seqs)
    return tokens[:, a : a + lay.answer_len]


def _sample(key, logits, temperature: float, top_k: int):
  """Categorical sample at `temperature`, among the top_k logits when top_k > 0."""
  if top_k > 0:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(key, logits / temperature, axis=-1)
