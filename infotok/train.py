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

Modules: `inputs` (splits and text ids), `tokenizer_sweep` (what to train, what is chosen),
`pipeline` (the resumable sub-runs), `summary` (rows, table, grids).

On an image-caption set (`paper`: a TFDS set such as coco_captions) the data, the judge and the
understanding / generation metrics come from `infotok.captions` (no attributes, questions or
held-out combinations there); the stages are the same.
"""

from __future__ import annotations

import logging
import os
import time

import jax

from infotok import captions, evaluate, inputs, summary, tokenizer_sweep
from infotok import judge as judge_lib
from infotok import text as text_lib
from infotok.pipeline import Pipeline
from infotok.unified import STYLES
from shared import manifest
from shared.errors import ConfigError

VARIANTS = ("baseline", "entropy", "infotok_vib", "infotok_hsic")


def run_seed(pipe: Pipeline, seed: int, seed_dir: str) -> dict:
  """Every tokenizer of the sweep, the choice on val, then every style x variant unified model."""
  config = pipe.config
  specs = tokenizer_sweep.tokenizer_specs(config)
  results = {name: pipe.tokenizer(seed_dir, name, w, seed) for name, w in specs.items()}
  chosen, vib_points, hsic_points = tokenizer_sweep.choose(config, results)
  logging.info("seed %d: chosen on val: %s", seed, chosen)
  figures = {}
  if jax.process_index() == 0:
    figures["information_plane"] = evaluate.information_plane(
      {"InfoTok-VIB (beta)": vib_points, "InfoTok-HSIC (beta_x)": hsic_points},
      {"baseline": results["baseline"]["val"], "entropy loss": results["entropy"]["val"]},
      os.path.join(seed_dir, "information_plane.png"),
      "judge R-precision of reconstructions" if pipe.caption_set else "judge accuracy on recon.",
    )
  # Semantic-aligned tokenizers: each chosen variant plus the image-text contrastive term.
  semantic = {}
  for variant in config.variants:
    weights = tokenizer_sweep.semantic_weights(config, specs[chosen[variant]])
    name = f"semantic_{variant}"
    semantic[variant] = name
    results[name] = pipe.tokenizer(seed_dir, name, weights, seed)
  rows = []
  for style in config.unified.styles:
    for variant in config.variants:
      tok_name = semantic[variant] if style == "semantic" else chosen[variant]
      res = pipe.unified_run(seed_dir, style, variant, tok_name, seed)
      rows.append(summary.row(res, results[tok_name], pipe.caption_set))
  if jax.process_index() == 0:
    figures.update(summary.sample_grids(pipe, seed_dir, chosen, semantic))
  return {"rows": rows, "chosen": chosen, "tokenizers": results, "figures": figures}


def train_and_evaluate(config, workdir: str) -> dict:
  start = time.time()
  if config.tokenizer.quantizer == "continuous":
    raise ConfigError("tokenizer.quantizer='continuous' has no codes for the unified models")
  if tuple(config.variants) != VARIANTS:
    unknown = set(config.variants) - set(VARIANTS)
    if unknown:
      raise ConfigError(f"unknown variants {sorted(unknown)}; known: {VARIANTS}")
  for style in config.unified.styles:
    if style not in STYLES:
      raise ConfigError(f"unknown unified style {style!r}; known: {STYLES}")
  pretrained = None  # loaded first: a missing one fails now, not after the data
  if config.text.tokenizer != "word_level":
    pretrained = text_lib.load_pretrained(config.text.tokenizer)
  splits, info = inputs.load_data(config.data)
  text_tok = inputs.make_text(config, splits, info, workdir, pretrained)
  caption_set = captions.is_caption_set(config.data)
  t_judge = time.time()
  judge_dir = os.path.join(workdir, "judge")
  manifest.check_folder(judge_dir)  # a judge trained under another config is not reused
  if caption_set:
    judge = captions.train_judge(
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
        k: {s: summary.scalars(v[s]) for s in ("val", "test")} for k, v in out["tokenizers"].items()
      },
      "figures": {k: os.path.relpath(v, workdir) for k, v in out["figures"].items()},
      "stage_seconds": pipe.stage_seconds,
    }
  table = summary.summary_table(rows, summary.headline(caption_set))
  summary.write_summary(
    os.path.join(workdir, "summary.md"),
    f"InfoTok summary ({config.variant}, seeds {list(config.seeds)})",
    table,
    "" if judge_ok else f"judge below {config.judge.min_accuracy}: {judge_min:.4f}",
  )
  logging.info("summary:\n%s", table)
  return {
    "judge_ceiling": {k: summary.scalars(v) for k, v in ceiling.items()},
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
      config.judge.num_scenes, **inputs.scene_options(config.data), seed=config.seed + 1
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
