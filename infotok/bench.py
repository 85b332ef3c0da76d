"""Benchmark cases for InfoTok: the tokenizer and unified-model training steps that `infotok.train`
jits (built by `TokenizerTrainer` and `UnifiedTrainer` themselves), at the config's shapes, each
in float32 and in bfloat16 compute (`tokenizer.compute_dtype`, `unified.compute_dtype`; params,
optimizer state and logits stay float32), the way issue 20 asks for a bf16 path against its
float32:

    python -m benchmarks.run --config configs/infotok.py:paper --what train_step --batch 64

Cases (`<dtype>` = float32 | bfloat16):
  infotok/tokenizer_step_<dtype>       reconstruction + VQ/FSQ + KL + InfoNCE consistency + CLIP
                                       alignment (the semantic family's InfoTok-VIB weights).
                                       Every term is computed whatever its weight (the weights are
                                       traced inputs of one compiled step), so this step is every
                                       variant's, of every style's tokenizers.
  infotok/unified_ar_step_<dtype>      one mixed t2i / i2t / vqa batch, causal: the AR style's
                                       step, and the semantic-aligned style's (the same model and
                                       step, on its own tokenizers' codes).
  infotok/unified_masked_step_<dtype>  the masked (Show-o) style's step.
Inputs are synthetic and already on the devices; the text vocabulary is GPT-2's size (50,257)
when the config names `gpt2`, else a small stand-in (the word-level vocabulary is built from data
at run time).
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
DTYPES = ("float32", "bfloat16")
STYLES_OF_STEP = {"tokenizer": ("ar", "masked", "semantic"), "ar": ("ar", "semantic")}


def _text_vocab(config) -> int:
  return GPT2_VOCAB if config.text.tokenizer == "gpt2" else STANDIN_VOCAB


def _image_size(config) -> int:
  return int(config.data.resolution)


def _in_dtype(section, dtype: str):
  """A copy of a config section (`config.tokenizer`, `config.unified`) computing in `dtype`."""
  if dtype not in DTYPES:
    raise ConfigError(f"infotok benchmark dtype {dtype!r}; known: {', '.join(DTYPES)}")
  cfg = section.copy_and_resolve_references()
  cfg.compute_dtype = dtype
  return cfg


def _tokenizer_batch(b: int, size: int, text_len: int, vocab: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  image = rng.random((b, size, size, 3), np.float32)
  return {
    "image": image,
    "target": image,
    "caption": rng.integers(3, vocab, (b, text_len), dtype=np.int32),
  }


def tokenizer_weights(config) -> dict[str, jax.Array]:
  """The semantic family's InfoTok-VIB weights (posterior noise, KL, InfoNCE, alignment)."""
  weights = {
    "noise": 1.0,
    "vib": config.vib.betas[0],
    "consistency": config.vib.consistency,
    "align": config.semantic.align_weight,
  }
  return {k: jnp.asarray(float(weights.get(k, 0.0)), jnp.float32) for k in tokenizer.WEIGHT_NAMES}


def tokenizer_case(config, batch_size: int | None, dtype: str = "float32") -> Case:
  cfg = _in_dtype(config.tokenizer, dtype)
  batch_size = batch_size or cfg.batch_size
  vocab, text_len, size = _text_vocab(config), config.text.caption_len, _image_size(config)
  mesh = train_lib.make_mesh(config.run.model_axis)
  trainer = TokenizerTrainer(cfg, vocab, text_len, mesh, cfg.num_steps)
  sample = _tokenizer_batch(1, size, text_len, vocab)
  state, sharding = trainer.init_state(0, sample["image"], sample["caption"])
  step = trainer.train_step(sharding)
  w = tokenizer_weights(config)
  batch = jax.device_put(_tokenizer_batch(batch_size, size, text_len, vocab), trainer.data_sharding)
  abstract_state = jax.eval_shape(lambda: state)

  def flops_fn(b):  # the trained step itself, unjitted, lowered for the CPU
    abstract_batch = jax.eval_shape(lambda: _tokenizer_batch(b, size, text_len, vocab))
    return step.__wrapped__, (abstract_state, abstract_batch, jax.eval_shape(lambda: w))

  grid = trainer.grid(size)
  return Case(
    name=f"infotok/tokenizer_step_{dtype}",
    step=step,
    args=(state, batch, w),
    examples=batch_size,
    batch_size=batch_size,
    flops_fn=flops_fn,
    meta={
      "dtype": dtype,
      "styles": list(STYLES_OF_STEP["tokenizer"]),
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


def unified_case(config, style: str, batch_size: int | None, dtype: str = "float32") -> Case:
  cfg = _in_dtype(config.unified, dtype)
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
    name=f"infotok/unified_{trainer.style}_step_{dtype}",
    step=step,
    args=(state, batch),
    examples=batch_size,
    batch_size=batch_size,
    flops_fn=flops_fn,
    meta={
      "dtype": dtype,
      "styles": list(STYLES_OF_STEP.get(trainer.style, (trainer.style,))),
      "seq_len": layout.seq_len,
      "vocab": layout.vocab_size,
      "width": cfg.width,
      "depth": cfg.depth,
      "params": int(sum(x.size for x in jax.tree.leaves(state.params))),
    },
  )


def cases(config, what: str, batch_size: int | None) -> list[Case]:
  """Each step in float32, then in bfloat16 (the semantic-aligned style trains with the AR
  unified step and the tokenizer step: it has no case of its own)."""
  if what != "train_step":
    raise ConfigError(f"infotok has benchmark cases for --what=train_step only, not {what!r}")
  out = [tokenizer_case(config, batch_size, d) for d in DTYPES]
  for style in ("ar", "masked"):
    out += [unified_case(config, style, batch_size, d) for d in DTYPES]
  return out
