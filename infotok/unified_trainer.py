"""Training and sampling of the unified models of `infotok.unified` (one trainer per style).

Text is decoded greedily and restricted to words; images are sampled among codes only. The
initialiser, the step and every decoder are compiled once per process for each config, style,
layout and mesh (`shared.stages.compiled`), so every variant of a style shares them.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from infotok import subrun
from infotok import text as text_lib
from infotok.unified import (
  STYLES,
  Layout,
  attention_mask,
  build_sequences,
  loss_fn,
  make_model,
  mixed_batch,
)
from shared import data as data_lib
from shared import masks, stages, train_lib
from shared.errors import ConfigError
from shared.models.transformer import TransformerLM, causal_mask


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
    # Everything the compiled pieces close over.
    self._key = ("infotok/unified", cfg, self.style, dataclasses.asdict(layout))
    self._key += (subrun.mesh_key(mesh),)

  def _compiled(self, name, build):
    return stages.compiled(stages.stage_key(*self._key, name), build)

  def init_state(self, seed: int):
    """A fresh TrainState (and its sharding); the initialiser is compiled once per process."""
    sample = jnp.zeros((1, self.layout.seq_len), jnp.int32)
    init_fn = lambda k: (self.model.init(k, sample)["params"], {})
    key = stages.stage_key(*self._key, "init")
    return subrun.init_state(key, seed, init_fn, self.tx, self.mesh)

  def train_step(self, state_sharding):
    """The jitted `step(state, batch) -> (state, metrics)` (compiled once per process)."""
    return self._compiled("step", lambda: self._build_step(state_sharding))

  def _build_step(self, state_sharding):
    def step(state, batch):
      (loss, metrics), grads = jax.value_and_grad(
        lambda p: loss_fn(self.model, self.style, self.layout, p, batch, state.step_rng()),
        has_aux=True,
      )(state.params)
      return state.apply_gradients(grads), {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        **metrics,
      }

    return train_lib.make_step(step, state_sharding, self.data_sharding)

  def train(self, workdir: str, log_dir: str, stage: str, arrays, seed: int):
    """Trains one model (resumable in `workdir`) on image_tokens, caption, question, answer."""
    cfg = self.cfg
    state, sharding = self.init_state(seed)

    def batches(start):
      stream = data_lib.batches(arrays, cfg.batch_size, seed=seed, start_step=start)
      for raw in text_lib.pick_captions(stream, seed, start):
        yield mixed_batch(self.layout, raw, cfg.task_fractions)

    step = self.train_step(sharding)
    state = subrun.train(
      cfg, state, step, batches, cfg.num_steps, self.data_sharding, workdir, log_dir, stage
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

    def build():
      lay = self.layout
      banned = {lay.pad_id, lay.bos_id}

      def pick(i, logits, key):
        logits = _restrict(logits, 0, lay.text_vocab)
        for t in banned:
          logits = logits.at[:, t].set(-jnp.inf)
        return jnp.argmax(logits, axis=-1)

      loop = self._decode_loop(start, steps, pick)
      return jax.jit(lambda params, tokens, image: loop(params, tokens, image, None))

    return self._compiled(("text", start, steps), build)

  def _image_ar_fn(self):
    def build():
      lay = self.layout
      temp, top_k = self.cfg.temperature, self.cfg.top_k

      def pick(i, logits, key):
        logits = _restrict(logits, lay.code_offset, lay.code_offset + lay.num_codes)
        return _sample(jax.random.fold_in(key, i), logits, temp, top_k)

      loop = self._decode_loop(lay.image_start("t2i"), lay.num_image_tokens, pick)
      return jax.jit(loop)

    return self._compiled("image_ar", build)

  def _image_masked_fn(self):
    """MaskGIT iterative decoding (Chang et al. 2022, Sec. 3.2): sample all masked codes, keep the
    most confident, re-mask the rest down to num_masked(t); confidence noise anneals to 0."""

    def build():
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

      return jax.jit(generate)

    return self._compiled("image_masked", build)

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
