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
"""

from __future__ import annotations

import json
import logging
import os
import time

import jax
import numpy as np

from infotok import evaluate as ev
from infotok import judge as judge_lib
from infotok import text as text_lib
from infotok import tokenizer as tok_lib
from infotok import unified as uni
from shared import app, report, train_lib
from shared import data as data_lib
from shared.data import shapes
from shared.errors import ConfigError, DataError

VARIANTS = ("baseline", "entropy", "infotok_vib", "infotok_hsic")
SPLITS = ("train", "val", "test", "heldout")


# ------------------------------------------------------------------------------------------------
# Data and text


def load_data(cfg) -> tuple[dict[str, dict], dict]:
  """All splits of the data set with per-object attributes, and its info."""
  if cfg.name != "shapes":
    raise DataError(
      f"data.name={cfg.name!r}: InfoTok needs captions and per-object attributes; the TFDS "
      "loader (shared/data/tfds_source.py) keeps numeric features only, so image-caption sets "
      "such as tfds:coco_captions need it to keep text features first (see docs/infotok.md)"
    )
  options = dict(
    resolution=cfg.resolution,
    grid=cfg.grid,
    min_objects=cfg.min_objects,
    max_objects=cfg.max_objects,
    nuisance=cfg.nuisance,
    seed=cfg.seed,
    num_train=cfg.num_train,
    num_val=cfg.num_val,
    num_test=cfg.num_test,
    num_heldout=cfg.num_heldout,
  )
  data_dir = cfg.data_dir or None
  splits = {s: data_lib.load(cfg.name, s, data_dir=data_dir, **options) for s in SPLITS}
  return splits, data_lib.info(cfg.name, data_dir=data_dir, **options)


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
    self.layout = uni.Layout(
      text_vocab=len(text_tok),
      num_codes=self.tok.num_codes,
      num_image_tokens=n_tokens,
      caption_len=config.text.caption_len,
      question_len=config.text.question_len,
      answer_len=config.text.answer_len,
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
      "caption": train["caption_ids"],
    }
    stage = f"tokenizer/{name}"
    params = self._timed(
      stage, lambda: self.tok.train(sub, self.workdir, stage, weights, arrays, seed)
    )
    n = cfg.eval.num_recon
    result = {"name": name, "weights": weights}
    for split in ("val", "test", "heldout"):
      metrics, recon = ev.reconstruction(
        self.tok, params, self.splits[split], self.judge, self.grid, n
      )
      result[split] = metrics
      if split == "test":
        np.save(os.path.join(sub, "recon_test.npy"), recon[: cfg.eval.grid_samples])
    tokens = {s: self.tok.tokens(params, self.splits[s]["image"]) for s in SPLITS}
    if jax.process_index() == 0:
      np.savez(tokens_path, **tokens)
      _save_params(os.path.join(sub, "params.npz"), params)
    tok_lib.log_summary(name, result["val"])
    _write(os.path.join(sub, "result.json"), result)
    return result

  def tokenizer_params(self, seed_dir: str, name: str):
    return _load_params(os.path.join(seed_dir, "tokenizers", name, "params.npz"))

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
    arrays = {
      "image_tokens": tokens["train"],
      "caption": train["caption_ids"],
      "question": train["question_ids"],
      "answer": train["answer_ids"],
    }
    stage = f"unified/{style}_{variant}"
    params = self._timed(stage, lambda: trainer.train(sub, self.workdir, stage, arrays, seed))
    tok_params = self.tokenizer_params(seed_dir, tok_name)
    result = {"style": style, "variant": variant, "tokenizer": tok_name, "seed": seed}
    n = cfg.eval.num_examples
    key = jax.random.key(seed + 1000)
    start = time.time()
    for split in ("test", "heldout"):
      arrays_s = self.splits[split]
      und = ev.understanding(trainer, params, tokens[split], arrays_s, self.text_tok, self.grid, n)
      gen, images = ev.generation(
        trainer, params, self.tok, tok_params, arrays_s, self.judge, key, n, self.grid
      )
      result[split] = {**und, **gen}
      if split == "test" and jax.process_index() == 0:
        np.save(os.path.join(sub, "generated_test.npy"), images[: cfg.eval.grid_samples])
    self.stage_seconds[f"eval/{style}_{variant}"] = round(time.time() - start, 2)
    logging.info(
      "%s/%s: vqa %.3f / %.3f, caption attr %.3f / %.3f, gen attr %.3f / %.3f (test / heldout)",
      style,
      variant,
      result["test"]["vqa_accuracy"],
      result["heldout"]["vqa_accuracy"],
      result["test"]["caption_attribute_mean"],
      result["heldout"]["caption_attribute_mean"],
      result["test"]["gen_attribute_mean"],
      result["heldout"]["gen_attribute_mean"],
    )
    _write(os.path.join(sub, "result.json"), result)
    return result


def _save_params(path, params):
  flat = {"/".join(k): np.asarray(v) for k, v in judge_lib._flatten(params).items()}
  np.savez(path, **flat)


def _load_params(path):
  with np.load(path) as f:
    return judge_lib._unflatten({tuple(k.split("/")): np.asarray(f[k]) for k in f.files})


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
      rows.append(_row(res, results[tok_name]))
  if jax.process_index() == 0:
    figures.update(_grids(pipe, seed_dir, chosen, semantic))
  return {"rows": rows, "chosen": chosen, "tokenizers": results, "figures": figures}


def _row(res: dict, tok: dict) -> dict:
  """One flat table row: style, variant, seed, headline metrics (test and held-out)."""
  row = {"style": res["style"], "variant": res["variant"], "seed": res["seed"]}
  for split in ("test", "heldout"):
    m = res[split]
    row[f"und_vqa_{split}"] = m["vqa_accuracy"]
    row[f"und_caption_attr_{split}"] = m["caption_attribute_mean"]
    row[f"und_caption_exact_{split}"] = m["caption_exact"]
    row[f"gen_attr_{split}"] = m["gen_attribute_mean"]
    row[f"gen_all_correct_{split}"] = m["gen_all_correct"]
    row[f"gen_fd_{split}"] = m["gen_fd"]
  row["tok_psnr_image"] = tok["test"]["psnr_image"]
  row["tok_psnr_clean"] = tok["test"]["psnr_clean"]
  row["tok_relevance"] = tok["test"]["relevance"]
  row["tok_rate_nats"] = tok["test"].get("rate_nats", float("nan"))
  row["tok_perplexity"] = tok["test"].get("code_perplexity", float("nan"))
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
  splits, info = load_data(config.data)
  text_tok = text_lib.make_tokenizer(config.text, info.get("vocab"), workdir)
  add_text_ids(splits, text_tok, config.text)
  t_judge = time.time()
  judge_dir = os.path.join(workdir, "judge")
  if config.judge.num_scenes and not os.path.exists(os.path.join(judge_dir, "judge.npz")):
    d = config.data
    judge_train = judge_lib.render_scenes(
      config.judge.num_scenes,
      resolution=d.resolution,
      grid=d.grid,
      min_objects=d.min_objects,
      max_objects=d.max_objects,
      nuisance=d.nuisance,
      seed=config.seed + 1,
    )
  else:  # judge.num_scenes = 0: the training split (no held-out combinations)
    judge_train = splits["train"]
  judge = judge_lib.train_judge(config.judge, judge_train, info["grid"], config.seed, judge_dir)
  ceiling = {}
  for split in ("test", "heldout"):
    targets = judge_lib.cell_targets(splits[split], info["grid"] ** 2)
    for field in ("clean", "image"):
      ceiling[f"{split}_{field}"] = judge.score(splits[split][field], targets)
  judge_seconds = round(time.time() - t_judge, 2)
  logging.info(
    "judge ceiling (attribute mean / all correct) on real test renders: clean %.4f / %.4f, "
    "image %.4f / %.4f",
    ceiling["test_clean"]["attribute_mean"],
    ceiling["test_clean"]["all_correct"],
    ceiling["test_image"]["attribute_mean"],
    ceiling["test_image"]["all_correct"],
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
  table = summary_table(rows)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "summary.md"), "w") as f:
      f.write(f"# InfoTok summary ({config.variant}, seeds {list(config.seeds)})\n\n{table}\n")
  logging.info("summary:\n%s", table)
  judge_min = min(ceiling["test_clean"]["attribute_mean"], ceiling["test_image"]["attribute_mean"])
  return {
    "judge_ceiling": {k: _scalars(v) for k, v in ceiling.items()},
    "judge_ceiling_min_attribute": judge_min,
    "judge_ok": bool(judge_min >= config.judge.min_accuracy),
    "judge_seconds": judge_seconds,
    "rows": rows,
    "per_seed": per_seed,
    "total_seconds": round(time.time() - start, 2),
  }


def _scalars(d: dict) -> dict:
  return {k: v for k, v in d.items() if isinstance(v, int | float) and not isinstance(v, bool)}
