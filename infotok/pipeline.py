"""The sub-runs of one InfoTok seed: a tokenizer (`Pipeline.tokenizer`) and a unified model on a
frozen tokenizer's codes (`Pipeline.unified_run`), each resumable from its `result.json`.

A `Pipeline` holds the data, the judge and the trainers that every sub-run of every seed shares.
"""

from __future__ import annotations

import json
import logging
import os
import time

import jax
import numpy as np

from infotok import api, beds, captions, evaluate, inputs, summary
from infotok import text as text_lib
from infotok.tokenizer_trainer import TokenizerTrainer, log_summary
from infotok.unified import Layout
from infotok.unified_trainer import UnifiedTrainer
from shared import train_lib
from shared.errors import CheckpointError, ConfigError
from shared.workdir import (
  cached_result,
  load_arrays,
  load_params,
  read_result,
  save_array,
  save_arrays,
  write_result,
)

EXPORT = "tokenizer"  # a tokenizer sub-run's `infotok.save_tokenizer` folder


def _redo(sub: str) -> str:
  """How to recover a tokenizer sub-run whose saved arrays are lost or corrupt."""
  return (
    f"delete {os.path.join(sub, 'result.json')} and re-run the same command (the tokenizer "
    "resumes from its last checkpoint and writes them again)"
  )


class Pipeline:
  """Holds the data, the judge and the compiled trainers shared by every sub-run of one seed."""

  def __init__(self, config, workdir, splits, info, text_tok, judge):
    self.config = config
    self.workdir = workdir
    self.splits = splits
    self.info = info
    self.text_tok = text_tok
    self.judge = judge
    self.grid = info["grid"]
    self.bed = beds.bed_of(config.data)
    self.caption_set = self.bed.captions
    self.split_names = captions.SPLITS if self.caption_set else inputs.SPLITS
    self.eval_splits = ("test",) if self.caption_set else ("test", "heldout")
    self.mesh = train_lib.make_mesh(config.run.model_axis)
    self._tokenizer_trainers: dict[str, TokenizerTrainer] = {}
    self.overrides: dict[str, dict] = {}  # tokenizer name -> its config overrides (rate_matched)
    self.tok = self.tokenizer_trainer({})
    qa = not self.caption_set  # image-caption sets have no question-answer pairs
    if not qa and config.unified.task_fractions[2] > 0:
      raise ConfigError(
        f"unified.task_fractions={tuple(config.unified.task_fractions)}: {config.data.name} has "
        "no questions; set the vqa fraction (the third) to 0"
      )
    self.layout = self.layout_for(self.tok)
    self.unified = {}
    self.stage_seconds: dict[str, float] = {}

  def tokenizer_trainer(self, overrides: dict) -> TokenizerTrainer:
    """The trainer of the configured tokenizer with `overrides` (e.g. a smaller codebook)."""
    key = json.dumps(overrides, sort_keys=True)
    if key not in self._tokenizer_trainers:
      cfg = self.config.tokenizer.copy_and_resolve_references()
      cfg.update(overrides)
      text = (len(self.text_tok), self.config.text.caption_len)
      self._tokenizer_trainers[key] = TokenizerTrainer(cfg, *text, self.mesh, cfg.num_steps)
    return self._tokenizer_trainers[key]

  def trainer_of(self, tok_name: str) -> TokenizerTrainer:
    """The trainer (architecture) of a trained tokenizer, by name."""
    return self.tokenizer_trainer(self.overrides.get(tok_name, {}))

  def layout_for(self, tok: TokenizerTrainer) -> Layout:
    """The unified models' sequence layout on a tokenizer's codes."""
    config, qa = self.config, not self.caption_set
    ids = text_lib.special_ids(self.text_tok)
    return Layout(
      text_vocab=len(self.text_tok),
      num_codes=tok.num_codes,
      num_image_tokens=tok.grid(self.info["image_shape"][0]) ** 2,
      caption_len=config.text.caption_len,
      question_len=config.text.question_len if qa else 0,
      answer_len=config.text.answer_len if qa else 0,
      pad_id=ids["pad"],
      bos_id=ids["bos"],
      eos_id=ids["eos"],
    )

  def _timed(self, name, fn):
    start = time.time()
    out = fn()
    self.stage_seconds[name] = round(time.time() - start, 2)
    return out

  # -- tokenizers ------------------------------------------------------------------------------

  def tokenizer(
    self, seed_dir: str, name: str, weights: dict, seed: int, overrides: dict | None = None
  ) -> dict:
    """Trains (or reads back) one tokenizer; returns its val/test metrics and token arrays path.

    Args:
      overrides: tokenizer config fields that differ from `config.tokenizer` (rate_matched's
        smaller codebook); recorded in the result.
    """
    cfg = self.config
    overrides = dict(overrides or {})
    self.overrides[name] = overrides
    tok = self.tokenizer_trainer(overrides)
    sub = os.path.join(seed_dir, "tokenizers", name)
    result_path = os.path.join(sub, "result.json")
    tokens_path = os.path.join(sub, "tokens.npz")
    done = read_result(result_path)
    if done is not None and os.path.exists(tokens_path):  # both, or train it again
      return done
    train = self.splits["train"]
    stage = f"tokenizer/{name}"
    trained = self._timed(
      stage,
      lambda: api.train_tokenizer(
        train["image"],
        train.get("caption_ids_all", train["caption_ids"]),  # [N, K, L]: one per step
        targets=train[cfg.tokenizer.target],
        weights=weights,
        config=tok.cfg,
        seed=seed,
        text_vocab_size=len(self.text_tok),
        workdir=sub,
        log_dir=self.workdir,
        stage=stage,
        mesh=self.mesh,
      ),
    )
    params = trained.params
    n = cfg.eval.num_recon
    result = {"name": name, "weights": weights, "overrides": overrides, "num_codes": tok.num_codes}
    tokens = {}
    for split in ("val", *self.eval_splits):
      images, passes = self.splits[split]["image"], {}
      metrics, recon = evaluate.reconstruction(
        tok, params, self.splits[split], self.judge, n, passes
      )
      result[split] = metrics
      if split == "test":
        save_array(os.path.join(sub, "recon_test.npy"), recon[: cfg.eval.grid_samples])
      if n >= len(images) and "indices" in passes:  # its one pass encoded the whole split
        tokens[split] = passes["indices"]
    for s in self.split_names:  # train, and splits longer than the evaluation's n
      if s not in tokens:
        tokens[s] = tok.tokens(params, self.splits[s]["image"])
    tokens = {s: tokens[s] for s in self.split_names}
    save_arrays(tokens_path, tokens)
    api.save_tokenizer(os.path.join(sub, EXPORT), trained)
    log_summary(name, result["val"])
    write_result(result_path, result)  # last: it marks the sub-run done
    return result

  def tokenizer_params(self, seed_dir: str, name: str):
    """The params of a trained tokenizer, from its export (`infotok.load_tokenizer`)."""
    sub = os.path.join(seed_dir, "tokenizers", name)
    old = os.path.join(sub, "params.npz")  # what runs before the export wrote instead
    if not os.path.isdir(os.path.join(sub, EXPORT)) and os.path.isfile(old):
      return load_params(old, recover=_redo(sub))
    try:
      return api.load_tokenizer(os.path.join(sub, EXPORT)).params
    except CheckpointError as e:
      raise CheckpointError(f"{e}; {_redo(sub)}") from None

  def tokens(self, seed_dir: str, name: str) -> dict[str, np.ndarray]:
    sub = os.path.join(seed_dir, "tokenizers", name)
    return load_arrays(os.path.join(sub, "tokens.npz"), recover=_redo(sub))

  # -- unified models --------------------------------------------------------------------------

  def trainer(self, style: str, tok_name: str | None = None) -> UnifiedTrainer:
    """The unified trainer of a style on a tokenizer's codes (one per style kind and codebook)."""
    kind = "masked" if style == "masked" else "ar"
    layout = self.layout if tok_name is None else self.layout_for(self.trainer_of(tok_name))
    if (kind, layout) not in self.unified:
      self.unified[kind, layout] = UnifiedTrainer(self.config.unified, kind, layout, self.mesh)
    return self.unified[kind, layout]

  def unified_run(self, seed_dir, style, variant, tok_name, seed) -> dict:
    """Trains (or reads back) one unified model; returns its test (and held-out) metrics."""
    sub = os.path.join(seed_dir, "unified", f"{style}_{variant}")
    return cached_result(
      os.path.join(sub, "result.json"),
      lambda: self._unified(sub, seed_dir, style, variant, tok_name, seed),
    )

  def _unified(self, sub, seed_dir, style, variant, tok_name, seed) -> dict:
    cfg = self.config
    trainer = self.trainer(style, tok_name)
    tokens = self.tokens(seed_dir, tok_name)
    train = self.splits["train"]
    caption_ids = train.get("caption_ids_all", train["caption_ids"])  # [N, K, L]: one per step
    arrays = {"image_tokens": tokens["train"], "caption": caption_ids}
    if not self.caption_set:
      arrays.update(question=train["question_ids"], answer=train["answer_ids"])
    stage = f"unified/{style}_{variant}"
    params = self._timed(stage, lambda: trainer.train(sub, self.workdir, stage, arrays, seed))
    tok_params = self.tokenizer_params(seed_dir, tok_name)
    result = {"style": style, "variant": variant, "tokenizer": tok_name, "seed": seed}
    n = cfg.eval.num_examples
    key = jax.random.key(seed + 1000)
    start = time.time()
    for split in self.eval_splits:
      arrays_s = self.splits[split]
      und = evaluate.understanding(
        trainer, params, tokens[split], arrays_s, self.text_tok, self.bed, self.grid, n, self.judge
      )
      gen, images = evaluate.generation(
        trainer, params, self.trainer_of(tok_name), tok_params, arrays_s, self.judge, key, n
      )
      result[split] = {**und, **gen}
      if split == "test":
        save_array(os.path.join(sub, "generated_test.npy"), images[: cfg.eval.grid_samples])
    self.stage_seconds[f"eval/{style}_{variant}"] = round(time.time() - start, 2)
    row = summary.row(result, {"test": {}}, self.caption_set)
    logging.info(
      "%s/%s: %s",
      style,
      variant,
      ", ".join(f"{k} {row[k]:.3f}" for k in summary.headline(self.caption_set) if k in row),
    )
    return result
