"""Benchmark cases for InfoTok: the tokenizer and unified-model training steps that `infotok.train`
jits (built by `TokenizerTrainer` and `UnifiedTrainer` themselves), at the config's shapes.

    python -m benchmarks.run --config configs/infotok.py:paper --what train_step --batch 64

Cases: `tokenizer_step` (InfoTok-VIB weights: reconstruction + VQ/FSQ + KL + InfoNCE consistency),
`unified_ar_step` and `unified_masked_step` (one mixed t2i / i2t / vqa batch). Inputs are
synthetic and already on the devices; the text vocabulary is GPT-2's size (50,257) when the config
names `gpt2`, else a small stand-in (the word-level vocabulary is built from data at run time).
The steps run in the dtype the method trains in (float32: InfoTok has no bf16 path yet).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from infotok import tokenizer, unified
from infotok.tokenizer_trainer import TokenizerTrainer
from infotok.unified_trainer import UnifiedTrainer
from shared import train_lib
from shared.benchmark import Case
from shared.errors import ConfigError
from shared.models.conv import grid_size

GPT2_VOCAB = 50_257
STANDIN_VOCAB = 64
PAD, BOS, EOS = 0, 1, 2


def _text_vocab(config) -> int:
  return GPT2_VOCAB if config.text.tokenizer == "gpt2" else STANDIN_VOCAB


def _image_size(config) -> int:
  return int(config.data.resolution)


def _tokenizer_batch(b: int, size: int, text_len: int, vocab: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  image = rng.random((b, size, size, 3), np.float32)
  return {
    "image": image,
    "target": image,
    "caption": rng.integers(3, vocab, (b, text_len), dtype=np.int32),
  }


def tokenizer_case(config, batch_size: int | None) -> Case:
  cfg = config.tokenizer
  batch_size = batch_size or cfg.batch_size
  vocab, text_len, size = _text_vocab(config), config.text.caption_len, _image_size(config)
  mesh = train_lib.make_mesh(config.run.model_axis)
  trainer = TokenizerTrainer(cfg, vocab, text_len, mesh, cfg.num_steps)
  sample = _tokenizer_batch(1, size, text_len, vocab)
  state, sharding = trainer.init_state(0, sample["image"], sample["caption"])
  step = trainer.train_step(sharding)
  weights = {"noise": 1.0, "vib": config.vib.betas[0], "consistency": config.vib.consistency}
  w = {k: jnp.asarray(float(weights.get(k, 0.0)), jnp.float32) for k in tokenizer.WEIGHT_NAMES}
  batch = jax.device_put(_tokenizer_batch(batch_size, size, text_len, vocab), trainer.data_sharding)
  abstract_state = jax.eval_shape(lambda: state)

  def flops_fn(b):  # the trained step itself, unjitted, lowered for the CPU
    abstract_batch = jax.eval_shape(lambda: _tokenizer_batch(b, size, text_len, vocab))
    return step.__wrapped__, (abstract_state, abstract_batch, jax.eval_shape(lambda: w))

  grid = trainer.grid(size)
  return Case(
    name="infotok/tokenizer_step",
    step=step,
    args=(state, batch, w),
    examples=batch_size,
    batch_size=batch_size,
    flops_fn=flops_fn,
    meta={
      "dtype": "float32",
      "image_size": size,
      "tokens_per_image": grid * grid,
      "codes": trainer.num_codes,
      "params": int(sum(x.size for x in jax.tree.leaves(state.params))),
    },
  )


def _layout(config, tokens_per_image: int, num_codes: int) -> unified.Layout:
  t = config.text
  return unified.Layout(
    text_vocab=_text_vocab(config),
    num_codes=num_codes,
    num_image_tokens=tokens_per_image,
    caption_len=t.caption_len,
    question_len=t.question_len,
    answer_len=t.answer_len,
    pad_id=PAD,
    bos_id=BOS,
    eos_id=EOS,
  )


def _unified_batch(layout: unified.Layout, b: int, fractions, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)

  def words(n):
    ids = rng.integers(3, layout.text_vocab, (b, n), dtype=np.int32)
    ids[:, 0], ids[:, -1] = BOS, EOS
    return ids

  raw = {
    "image_tokens": rng.integers(0, layout.num_codes, (b, layout.num_image_tokens), np.int32),
    "caption": words(layout.caption_len),
    "question": words(layout.question_len),
    "answer": words(layout.answer_len),
  }
  return unified.mixed_batch(layout, raw, fractions)


def unified_case(config, style: str, batch_size: int | None) -> Case:
  cfg = config.unified
  batch_size = batch_size or cfg.batch_size
  size = _image_size(config)
  grid = grid_size(size, config.tokenizer.patch_size, len(config.tokenizer.widths))
  layout = _layout(config, grid * grid, tokenizer.num_codes(config.tokenizer))
  mesh = train_lib.make_mesh(config.run.model_axis)
  trainer = UnifiedTrainer(cfg, style, layout, mesh)
  state, sharding = trainer.init_state(0)
  step = trainer.train_step(sharding)
  batch = jax.device_put(
    _unified_batch(layout, batch_size, cfg.task_fractions), trainer.data_sharding
  )
  abstract_state = jax.eval_shape(lambda: state)

  def flops_fn(b):  # the trained step itself, unjitted, lowered for the CPU
    return step.__wrapped__, (
      abstract_state,
      jax.eval_shape(lambda: _unified_batch(layout, b, cfg.task_fractions)),
    )

  return Case(
    name=f"infotok/unified_{style}_step",
    step=step,
    args=(state, batch),
    examples=batch_size,
    batch_size=batch_size,
    flops_fn=flops_fn,
    meta={
      "dtype": "float32",
      "seq_len": layout.seq_len,
      "vocab": layout.vocab_size,
      "width": cfg.width,
      "depth": cfg.depth,
      "params": int(sum(x.size for x in jax.tree.leaves(state.params))),
    },
  )


def cases(config, what: str, batch_size: int | None) -> list[Case]:
  if what != "train_step":
    raise ConfigError(f"infotok has benchmark cases for --what=train_step only, not {what!r}")
  return [
    tokenizer_case(config, batch_size),
    unified_case(config, "ar", batch_size),
    unified_case(config, "masked", batch_size),
  ]
