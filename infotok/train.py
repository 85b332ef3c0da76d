"""InfoTok end to end: judge -> tokenizers (beta sweeps chosen on val) -> unified models -> eval.

  python -m infotok --config configs/infotok.py --workdir runs/infotok

Stages, each resumable (a finished one is read back from its `result.json`):
  1. text tokenizer (word level, built in the workdir) and the captions / questions / answers;
  2. the attribute judge, trained once on real renders (`judge/`), its ceiling on real test renders;
  3. per seed (`seed_<s>/` when several): tokenizers in `tokenizers/<name>/`: the baseline, the
     entropy-loss baseline, InfoTok-VIB at every beta of `vib.betas`, InfoTok-HSIC at every
     `hsic.beta_x`; the beta of each is chosen on the validation split
     (`evaluate.select_largest_within`); the semantic-aligned style's tokenizers add the
     contrastive term to each chosen variant;
  4. per style x variant a unified model on the frozen tokenizer's codes (`unified/<style>_<v>/`),
     all with the same data and steps; understanding and generation on test and held-out;
  5. the information-plane plot, sample grids, the summary table (`summary.md`).

On an image-caption set (`paper`: a TFDS set such as coco_captions) the data, the judge and the
understanding / generation metrics come from `infotok.captions` (no attributes, questions or
held-out combinations there); the stages are the same.
"""

from __future__ import annotations

import json
import logging
import os
import time

import jax
import numpy as np

from infotok import captions as cap_lib
from infotok import evaluate as ev
from infotok import judge as judge_lib
from infotok import text as text_lib
from infotok import tokenizer as tok_lib
from infotok import unified as uni
from shared import app, report, train_lib
from shared import data as data_lib
from shared.data import shapes
from shared.errors import ConfigError

VARIANTS = ("baseline", "entropy", "infotok_vib", "infotok_hsic")
SPLITS = ("train", "val", "test", "heldout")


# ------------------------------------------------------------------------------------------------
# Data and text


def load_data(cfg) -> tuple[dict[str, dict], dict]:
  """All splits of the data set (with per-object attributes on `shapes`), and its info."""
  if cap_lib.is_caption_set(cfg):
    return cap_lib.load_data(cfg)
  options = dict(
    **scene_options(cfg),
    seed=cfg.seed,
    num_train=cfg.num_train,
    num_val=cfg.num_val,
    num_test=cfg.num_test,
    num_heldout=cfg.num_heldout,
  )
  data_dir = cfg.data_dir or None
  # InfoTok's host code (judge, metrics, tokens) works on whole float splits of small scenes.
  splits = {
    s: data_lib.images_to_float(data_lib.load(cfg.name, s, data_dir=data_dir, **options))
    for s in SPLITS
  }
  return splits, data_lib.info(cfg.name, data_dir=data_dir, **options)


def scene_options(cfg) -> dict:
  """What a `shapes` scene looks like (`config.data`): the options `load_data` builds the splits
  with and the judge's fresh renders (`judge.render_scenes`) share."""
  return dict(
    resolution=cfg.resolution,
    grid=cfg.grid,
    min_objects=cfg.min_objects,
    max_objects=cfg.max_objects,
    nuisance=cfg.nuisance,
  )


def make_text(config, splits: dict, info: dict, workdir: str, pretrained=None):
  """The text tokenizer (`pretrained`, when already loaded), and the splits' text as ids
  ('caption_ids', on `shapes` also 'question_ids', 'answer_ids')."""
  caption_set = cap_lib.is_caption_set(config.data)
  word_level = config.text.tokenizer == "word_level"
  vocab = cap_lib.vocabulary(splits, config.text) if caption_set and word_level else None
  text_tok = pretrained or text_lib.make_tokenizer(config.text, vocab or info.get("vocab"), workdir)
  if caption_set:
    cap_lib.add_text_ids(splits, text_tok, config.text, word_level)
  else:
    add_text_ids(splits, text_tok, config.text)
  return text_tok


def add_text_ids(splits: dict, text_tok, cfg) -> None:
  """Adds 'caption_ids', 'question_ids', 'answer_ids' from the text through `text_tok`."""
  lengths = {"caption": cfg.caption_len, "question": cfg.question_len, "answer": cfg.answer_len}
  for arrays in splits.values():
    for field, length in lengths.items():
      texts = shapes.decode(arrays[field])
      arrays[f"{field}_ids"] = text_lib.encode(text_tok, texts, length)


# ------------------------------------------------------------------------------------------------
# Stage helpers


def _read(path):
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return None


def _write(path, payload):
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    app.write_json(path, payload)


def tokenizer_specs(config) -> dict[str, dict]:
  """Every tokenizer to train for the AR / masked styles: name -> loss weights."""
  specs = {"baseline": {}, "entropy": {"entropy": config.entropy.weight}}
  for beta in config.vib.betas:
    specs[f"vib_{beta:g}"] = {
      "noise": 1.0,
      "vib": beta,
      "consistency": config.vib.consistency,
    }
  for bx in config.hsic.beta_x:
    specs[f"hsic_{bx:g}"] = {"hsic_beta_x": bx, "hsic_lambda_y": config.hsic.lambda_y}
  return specs


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
    self.caption_set = cap_lib.is_caption_set(config.data)
    self.split_names = cap_lib.SPLITS if self.caption_set else SPLITS
    self.eval_splits = ("test",) if self.caption_set else ("test", "heldout")
    self.mesh = train_lib.make_mesh(config.run.model_axis)
    self.tok = tok_lib.TokenizerTrainer(
      config.tokenizer,
      len(text_tok),
      config.text.caption_len,
      self.mesh,
      config.tokenizer.num_steps,
    )
    n_tokens = self.tok.grid(info["image_shape"][0]) ** 2
    ids = text_lib.special_ids(text_tok)
    qa = not self.caption_set  # image-caption sets have no question-answer pairs
    if not qa and config.unified.task_fractions[2] > 0:
      raise ConfigError(
        f"unified.task_fractions={tuple(config.unified.task_fractions)}: {config.data.name} has "
        "no questions; set the vqa fraction (the third) to 0"
      )
    self.layout = uni.Layout(
      text_vocab=len(text_tok),
      num_codes=self.tok.num_codes,
      num_image_tokens=n_tokens,
      caption_len=config.text.caption_len,
      question_len=config.text.question_len if qa else 0,
      answer_len=config.text.answer_len if qa else 0,
      pad_id=ids["pad"],
      bos_id=ids["bos"],
      eos_id=ids["eos"],
    )
    self.unified = {}
    self.stage_seconds: dict[str, float] = {}

  def _timed(self, name, fn):
    start = time.time()
    out = fn()
    self.stage_seconds[name] = round(time.time() - start, 2)
    return out

  # -- tokenizers ------------------------------------------------------------------------------

  def tokenizer(self, seed_dir: str, name: str, weights: dict, seed: int) -> dict:
    """Trains (or reads back) one tokenizer; returns its val/test metrics and token arrays path."""
    cfg = self.config
    sub = os.path.join(seed_dir, "tokenizers", name)
    done = _read(os.path.join(sub, "result.json"))
    tokens_path = os.path.join(sub, "tokens.npz")
    if done is not None and os.path.exists(tokens_path):
      return done
    train = self.splits["train"]
    arrays = {
      "image": train["image"],
      "target": train[cfg.tokenizer.target],
      "caption": train.get("caption_ids_all", train["caption_ids"]),  # [N, K, L]: one per step
    }
    stage = f"tokenizer/{name}"
    params = self._timed(
      stage, lambda: self.tok.train(sub, self.workdir, stage, weights, arrays, seed)
    )
    n = cfg.eval.num_recon
    result = {"name": name, "weights": weights}
    for split in ("val", *self.eval_splits):
      metrics, recon = ev.reconstruction(self.tok, params, self.splits[split], self.judge, n)
      result[split] = metrics
      if split == "test":
        np.save(os.path.join(sub, "recon_test.npy"), recon[: cfg.eval.grid_samples])
    tokens = {s: self.tok.tokens(params, self.splits[s]["image"]) for s in self.split_names}
    if jax.process_index() == 0:
      np.savez(tokens_path, **tokens)
      judge_lib.save_params(os.path.join(sub, "params.npz"), params)
    tok_lib.log_summary(name, result["val"])
    _write(os.path.join(sub, "result.json"), result)
    return result

  def tokenizer_params(self, seed_dir: str, name: str):
    return judge_lib.load_params(os.path.join(seed_dir, "tokenizers", name, "params.npz"))

  def tokens(self, seed_dir: str, name: str) -> dict[str, np.ndarray]:
    with np.load(os.path.join(seed_dir, "tokenizers", name, "tokens.npz")) as f:
      return {k: f[k] for k in f.files}

  # -- unified models --------------------------------------------------------------------------

  def trainer(self, style: str) -> uni.UnifiedTrainer:
    kind = "masked" if style == "masked" else "ar"
    if kind not in self.unified:
      self.unified[kind] = uni.UnifiedTrainer(self.config.unified, kind, self.layout, self.mesh)
    return self.unified[kind]

  def unified_run(self, seed_dir, style, variant, tok_name, seed) -> dict:
    cfg = self.config
    sub = os.path.join(seed_dir, "unified", f"{style}_{variant}")
    done = _read(os.path.join(sub, "result.json"))
    if done is not None:
      return done
    trainer = self.trainer(style)
    tokens = self.tokens(seed_dir, tok_name)
    train = self.splits["train"]
    captions = train.get("caption_ids_all", train["caption_ids"])  # [N, K, L]: one per step
    arrays = {"image_tokens": tokens["train"], "caption": captions}
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
      und = ev.understanding(
        trainer, params, tokens[split], arrays_s, self.text_tok, self.grid, n, self.judge
      )
      gen, images = ev.generation(
        trainer, params, self.tok, tok_params, arrays_s, self.judge, key, n
      )
      result[split] = {**und, **gen}
      if split == "test" and jax.process_index() == 0:
        np.save(os.path.join(sub, "generated_test.npy"), images[: cfg.eval.grid_samples])
    self.stage_seconds[f"eval/{style}_{variant}"] = round(time.time() - start, 2)
    row = _row(result, {"test": {}}, self.caption_set)
    logging.info(
      "%s/%s: %s",
      style,
      variant,
      ", ".join(f"{k} {row[k]:.3f}" for k in headline(self.caption_set) if k in row),
    )
    _write(os.path.join(sub, "result.json"), result)
    return result


# ------------------------------------------------------------------------------------------------
# One seed


def run_seed(pipe: Pipeline, seed: int, seed_dir: str) -> dict:
  config = pipe.config
  specs = tokenizer_specs(config)
  results = {name: pipe.tokenizer(seed_dir, name, w, seed) for name, w in specs.items()}
  reference = results["baseline"]["val"]["relevance"]
  tol = config.select.tolerance
  vib_names = [f"vib_{b:g}" for b in config.vib.betas]
  hsic_names = [f"hsic_{b:g}" for b in config.hsic.beta_x]
  vib_points = [
    dict(results[n]["val"], beta=b) for n, b in zip(vib_names, config.vib.betas, strict=True)
  ]
  hsic_points = [
    dict(results[n]["val"], beta=b) for n, b in zip(hsic_names, config.hsic.beta_x, strict=True)
  ]
  vib_pick = vib_names[ev.select_largest_within(vib_points, "beta", reference, tol)]
  hsic_pick = hsic_names[ev.select_largest_within(hsic_points, "beta", reference, tol)]
  chosen = {
    "baseline": "baseline",
    "entropy": "entropy",
    "infotok_vib": vib_pick,
    "infotok_hsic": hsic_pick,
  }
  logging.info("seed %d: chosen on val: %s", seed, chosen)
  figures = {}
  if jax.process_index() == 0:
    figures["information_plane"] = ev.information_plane(
      {"InfoTok-VIB (beta)": vib_points, "InfoTok-HSIC (beta_x)": hsic_points},
      {"baseline": results["baseline"]["val"], "entropy loss": results["entropy"]["val"]},
      os.path.join(seed_dir, "information_plane.png"),
      "judge R-precision of reconstructions" if pipe.caption_set else "judge accuracy on recon.",
    )
  # Semantic-aligned tokenizers: each chosen variant plus the image-text contrastive term.
  semantic = {}
  for variant in config.variants:
    weights = dict(specs[chosen[variant]], align=config.semantic.align_weight)
    name = f"semantic_{variant}"
    semantic[variant] = name
    results[name] = pipe.tokenizer(seed_dir, name, weights, seed)
  rows = []
  for style in config.unified.styles:
    for variant in config.variants:
      tok_name = semantic[variant] if style == "semantic" else chosen[variant]
      res = pipe.unified_run(seed_dir, style, variant, tok_name, seed)
      rows.append(_row(res, results[tok_name], pipe.caption_set))
  if jax.process_index() == 0:
    figures.update(_grids(pipe, seed_dir, chosen, semantic))
  return {"rows": rows, "chosen": chosen, "tokenizers": results, "figures": figures}


# Row name -> metric name of the unified result, per kind of data set.
ROW_METRICS = {
  False: {
    "und_vqa": "vqa_accuracy",
    "und_caption_attr": "caption_attribute_mean",
    "und_caption_exact": "caption_exact",
    "gen_attr": "gen_attribute_mean",
    "gen_all_correct": "gen_all_correct",
    "gen_fd": "gen_fd",
  },
  True: {
    "und_bleu4": "caption_bleu4",
    "und_caption_rprec": "caption_r_precision",
    "gen_rprec": "gen_r_precision",
    "gen_clip_score": "gen_clip_score",
    "gen_fd": "gen_fd",
  },
}
TOKENIZER_METRICS = {
  "tok_psnr_image": "psnr_image",
  "tok_psnr_clean": "psnr_clean",
  "tok_relevance": "relevance",
  "tok_rate_nats": "rate_nats",
  "tok_perplexity": "code_perplexity",
}


def _row(res: dict, tok: dict, caption_set: bool = False) -> dict:
  """One flat table row: style, variant, seed, headline metrics (test and, on shapes, held-out)."""
  row = {"style": res["style"], "variant": res["variant"], "seed": res["seed"]}
  for split in ("test",) if caption_set else ("test", "heldout"):
    for name, metric in ROW_METRICS[caption_set].items():
      row[f"{name}_{split}"] = res[split][metric]
  for name, metric in TOKENIZER_METRICS.items():
    row[name] = tok["test"].get(metric, float("nan"))
  return row


def _grids(pipe: Pipeline, seed_dir: str, chosen: dict, semantic: dict) -> dict:
  k = pipe.config.eval.grid_samples
  test = pipe.splits["test"]
  out = {}
  recon = {"input image": test["image"][:k], "clean": test["clean"][:k]}
  for name in sorted(set(chosen.values()) | set(semantic.values())):
    path = os.path.join(seed_dir, "tokenizers", name, "recon_test.npy")
    if os.path.exists(path):
      recon[name] = np.load(path)
  out["reconstructions"] = ev.sample_grid(recon, os.path.join(seed_dir, "reconstructions.png"))
  captions = text_lib.decode(pipe.text_tok, test["caption_ids"][:k])
  for style in pipe.config.unified.styles:
    rows = {"real (clean)": test["clean"][:k]}
    for variant in pipe.config.variants:
      path = os.path.join(seed_dir, "unified", f"{style}_{variant}", "generated_test.npy")
      if os.path.exists(path):
        rows[variant] = np.load(path)
    out[f"generated_{style}"] = ev.sample_grid(
      rows, os.path.join(seed_dir, f"generated_{style}.png"), captions
    )
  return out


# ------------------------------------------------------------------------------------------------
# Entry point


HEADLINE = (
  "und_vqa_test",
  "und_vqa_heldout",
  "und_caption_attr_test",
  "und_caption_attr_heldout",
  "gen_attr_test",
  "gen_attr_heldout",
  "gen_all_correct_test",
  "gen_all_correct_heldout",
)
CAPTION_HEADLINE = (
  "und_bleu4_test",
  "und_caption_rprec_test",
  "gen_rprec_test",
  "gen_clip_score_test",
  "gen_fd_test",
)


def headline(caption_set: bool) -> tuple[str, ...]:
  return CAPTION_HEADLINE if caption_set else HEADLINE


def summary_table(rows: list[dict], metrics=HEADLINE) -> str:
  """Markdown: per style x variant, mean ± std over seeds of the headline metrics."""
  return report.mean_std_table(rows, ("style", "variant"), list(metrics), precision=3)


def train_and_evaluate(config, workdir: str) -> dict:
  start = time.time()
  if config.tokenizer.quantizer == "continuous":
    raise ConfigError("tokenizer.quantizer='continuous' has no codes for the unified models")
  if tuple(config.variants) != VARIANTS:
    unknown = set(config.variants) - set(VARIANTS)
    if unknown:
      raise ConfigError(f"unknown variants {sorted(unknown)}; known: {VARIANTS}")
  for style in config.unified.styles:
    if style not in uni.STYLES:
      raise ConfigError(f"unknown unified style {style!r}; known: {uni.STYLES}")
  pretrained = None  # loaded first: a missing one fails now, not after the data
  if config.text.tokenizer != "word_level":
    pretrained = text_lib.load_pretrained(config.text.tokenizer)
  splits, info = load_data(config.data)
  text_tok = make_text(config, splits, info, workdir, pretrained)
  t_judge = time.time()
  judge_dir = os.path.join(workdir, "judge")
  if cap_lib.is_caption_set(config.data):
    judge = cap_lib.train_judge(
      config.judge, splits["train"], len(text_tok), config.text.caption_len, config.seed, judge_dir
    )
    ceiling = {"test_image": judge.judge_images(splits["test"]["image"], splits["test"])}
    judge_min = ceiling["test_image"]["r_precision"]
    logging.info(
      "retrieval judge ceiling on real test pairs: R-precision %.4f (chance %.4f), cosine %.4f",
      judge_min,
      1.0 / min(config.judge.group, len(splits["test"]["image"])),
      ceiling["test_image"]["clip_score"],
    )
  else:
    judge, ceiling = _attribute_judge(config, splits, info, judge_dir)
    judge_min = min(
      ceiling["test_clean"]["attribute_mean"], ceiling["test_image"]["attribute_mean"]
    )
  judge_seconds = round(time.time() - t_judge, 2)
  judge_ok = bool(judge_min >= config.judge.min_accuracy)
  if not judge_ok:
    logging.warning(
      "the judge scores %.4f on real test images, below judge.min_accuracy=%.2f: its generation "
      "scores are a weak test (results.json records judge_ok=false); train it longer "
      "(judge.steps) or use more scenes",
      judge_min,
      config.judge.min_accuracy,
    )
  rows, per_seed = [], {}
  pipe = Pipeline(config, workdir, splits, info, text_tok, judge)  # compiled once for all seeds
  for seed in config.seeds:
    seed_dir = workdir if len(config.seeds) == 1 else os.path.join(workdir, f"seed_{seed}")
    pipe.stage_seconds = {}
    out = run_seed(pipe, seed, seed_dir)
    rows += out["rows"]
    per_seed[str(seed)] = {
      "chosen": out["chosen"],
      "tokenizers": {
        k: {s: _scalars(v[s]) for s in ("val", "test")} for k, v in out["tokenizers"].items()
      },
      "figures": {k: os.path.relpath(v, workdir) for k, v in out["figures"].items()},
      "stage_seconds": pipe.stage_seconds,
    }
  table = summary_table(rows, headline(cap_lib.is_caption_set(config.data)))
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "summary.md"), "w") as f:
      title = f"# InfoTok summary ({config.variant}, seeds {list(config.seeds)})"
      warn = "" if judge_ok else f"**judge below {config.judge.min_accuracy}: {judge_min:.4f}**\n\n"
      f.write(f"{title}\n\n{warn}{table}\n")
  logging.info("summary:\n%s", table)
  return {
    "judge_ceiling": {k: _scalars(v) for k, v in ceiling.items()},
    "judge_ceiling_min_attribute": judge_min,
    "judge_ok": judge_ok,
    "judge_seconds": judge_seconds,
    "rows": rows,
    "per_seed": per_seed,
    "total_seconds": round(time.time() - start, 2),
  }


def _attribute_judge(config, splits, info, judge_dir):
  """The attribute judge of `shapes` (trained on fresh renders) and its ceiling per split/field."""
  if config.judge.num_scenes and not os.path.exists(os.path.join(judge_dir, "judge.npz")):
    judge_train = judge_lib.render_scenes(
      config.judge.num_scenes, **scene_options(config.data), seed=config.seed + 1
    )
  else:  # judge.num_scenes = 0: the training split (no held-out combinations)
    judge_train = splits["train"]
  judge = judge_lib.train_judge(config.judge, judge_train, info["grid"], config.seed, judge_dir)
  ceiling = {}
  for split in ("test", "heldout"):
    for field in ("clean", "image"):
      ceiling[f"{split}_{field}"] = judge.judge_images(splits[split][field], splits[split])
  logging.info(
    "judge ceiling (attribute mean / all correct) on real test renders: clean %.4f / %.4f, "
    "image %.4f / %.4f",
    ceiling["test_clean"]["attribute_mean"],
    ceiling["test_clean"]["all_correct"],
    ceiling["test_image"]["attribute_mean"],
    ceiling["test_image"]["all_correct"],
  )
  return judge, ceiling


def _scalars(d: dict) -> dict:
  return {k: v for k, v in d.items() if isinstance(v, int | float) and not isinstance(v, bool)}
