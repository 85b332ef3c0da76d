"""InfoTok end to end: judge -> tokenizers (beta sweeps chosen on val) -> unified models -> eval.

  python -m infotok --config configs/infotok.py --workdir runs/infotok

Stages, each resumable (a finished one is read back from its `result.json`):
  1. text tokenizer (word level, built in the workdir) and the captions / questions / answers;
  2. the attribute judge, trained once on real renders (`judge/`), its ceiling on real test renders;
  3. per seed (`seed_<s>/` when several): tokenizers in `tokenizers/<name>/` (trained by
     `infotok.train_tokenizer`, exported to `tokenizers/<name>/tokenizer/` for
     `infotok.load_tokenizer`), per family (AR and masked share the plain ones; the semantic
     style has its own, with the alignment term on): the baseline and every point of each
     variant's sweep (`tokenizer_sweep`), the point of each variant chosen on the validation
     split, then the rate-matched baseline at the chosen InfoTok-VIB tokenizer's code perplexity;
  4. per style x variant a unified model on the frozen tokenizer's codes (`unified/<style>_<v>/`),
     all with the same data and steps; understanding and generation on test and held-out;
  5. the information-plane plots (per family over the sweeps; per style over the variants,
     `infotok.plane`), sample grids, the summary table (`summary.md`); per-item scores of every
     unified model for the paired statistics of `infotok.report` (`infotok.stats`).

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

from infotok import (
  beds,
  captions,
  checks,
  evaluate,
  grid_bed,
  inputs,
  plane,
  summary,
  tokenizer_sweep,
)
from infotok import judge as judge_lib
from infotok import text as text_lib
from infotok.pipeline import Pipeline
from shared import manifest


def run_family(pipe: Pipeline, family: str, seed: int, seed_dir: str) -> dict:
  """A family's tokenizers (`tokenizer_sweep`): its sweeps, the choice on val, then the
  rate-matched control at the chosen InfoTok-VIB tokenizer's validation code perplexity."""
  config = pipe.config
  specs = tokenizer_sweep.family_specs(config, family)
  results = {name: pipe.tokenizer(seed_dir, name, w, seed) for name, w in specs.items()}
  chosen, points = tokenizer_sweep.choose(config, family, results)
  if "rate_matched" in config.variants:
    perplexity = results[chosen["infotok_vib"]]["val"]["code_perplexity"]
    overrides = tokenizer_sweep.rate_matched_overrides(config.tokenizer, perplexity)
    name = f"{tokenizer_sweep.prefix(family)}rate_matched"
    base = specs[chosen["baseline"]]
    results[name] = pipe.tokenizer(seed_dir, name, base, seed, overrides)
    chosen["rate_matched"] = name
    matched = {"tokenizer": name, "vib_code_perplexity": perplexity, **overrides}
    matched["num_codes"] = results[name]["num_codes"]
  else:
    matched = None
  chosen = {v: chosen[v] for v in config.variants}
  logging.info("seed %d, %s tokenizers: chosen on val: %s", seed, family, chosen)
  figure = None
  if jax.process_index() == 0:
    marks = {v: results[chosen[v]]["val"] for v in ("baseline", "rate_matched") if v in chosen}
    figure = evaluate.information_plane(
      {tokenizer_sweep.SWEEPS[v].field + f" ({v})": p for v, p in points.items()},
      marks,
      os.path.join(seed_dir, f"information_plane_{family}.png"),
      "judge R-precision of reconstructions" if pipe.caption_set else "judge accuracy on recon.",
    )
  return {"results": results, "chosen": chosen, "figure": figure, "rate_matched": matched}


def run_seed(pipe: Pipeline, seed: int, seed_dir: str) -> dict:
  """Every family's tokenizers, then every style x variant unified model on its family's choice."""
  config = pipe.config
  families = dict.fromkeys(tokenizer_sweep.FAMILIES[s] for s in config.unified.styles)
  out = {f: run_family(pipe, f, seed, seed_dir) for f in families}
  results = {k: v for f in out.values() for k, v in f["results"].items()}
  chosen = {s: out[tokenizer_sweep.FAMILIES[s]]["chosen"] for s in config.unified.styles}
  figures = {f"information_plane_{f}": o["figure"] for f, o in out.items() if o["figure"]}
  matched = {f: o["rate_matched"] for f, o in out.items() if o["rate_matched"]}
  rows, items = [], {}
  for style in config.unified.styles:
    for variant in config.variants:
      tok_name = chosen[style][variant]
      res = pipe.unified_run(seed_dir, style, variant, tok_name, seed)
      rows.append(summary.row(res, results[tok_name], pipe.caption_set))
      items.setdefault(style, {})[variant] = summary.item_scores(res, pipe.eval_splits)
  if jax.process_index() == 0:
    figures.update(summary.sample_grids(pipe, seed_dir, chosen))
  return {
    "rows": rows,
    "items": items,
    "chosen": chosen,
    "rate_matched": matched,
    "tokenizers": results,
    "figures": figures,
  }


def train_and_evaluate(config, workdir: str) -> dict:
  start = time.time()
  checks.check_config(config)
  pretrained = None  # loaded first: a missing one fails now, not after the data
  if config.text.tokenizer != "word_level":
    pretrained = text_lib.load_pretrained(config.text.tokenizer)
  splits, info = inputs.load_data(config.data)
  text_tok = inputs.make_text(config, splits, info, workdir, pretrained)
  bed = beds.bed_of(config.data)
  caption_set = bed.captions
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
  elif bed is beds.CIFAR_GRID:
    judge, ceiling = _grid_judge(config, splits)
    judge_min = min(ceiling["test_image"]["class"], ceiling["heldout_image"]["class"])
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
  rows, per_seed, items = [], {}, {}
  pipe = Pipeline(config, workdir, splits, info, text_tok, judge)  # compiled once for all seeds
  for seed in config.seeds:
    seed_dir = workdir if len(config.seeds) == 1 else os.path.join(workdir, f"seed_{seed}")
    pipe.stage_seconds = {}
    out = run_seed(pipe, seed, seed_dir)
    rows += out["rows"]
    for style, by_variant in out["items"].items():
      for variant, scores in by_variant.items():
        items.setdefault(style, {}).setdefault(variant, {})[str(seed)] = scores
    per_seed[str(seed)] = {
      "chosen": out["chosen"],
      "rate_matched": out["rate_matched"],
      "tokenizers": {
        k: {s: summary.scalars(v[s]) for s in ("val", "test")} for k, v in out["tokenizers"].items()
      },
      "figures": {k: os.path.relpath(v, workdir) for k, v in out["figures"].items()},
      "stage_seconds": pipe.stage_seconds,
    }
  plane_png = None
  if jax.process_index() == 0:
    plane_png = plane.figure(
      plane.style_points(per_seed), os.path.join(workdir, "information_plane_styles.png")
    )
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
    # style -> variant -> seed -> {understanding, generation} -> split -> per-item scores
    "item_scores": items,
    "per_seed": per_seed,
    "information_plane_styles": plane_png and os.path.relpath(plane_png, workdir),
    "total_seconds": round(time.time() - start, 2),
  }


def _grid_judge(config, splits):
  """The fixed CIFAR-10 judge of `cifar_grid` (not trained here) and its ceiling on real scenes:
  per-cell class accuracy on the photographs themselves (the gate, `judge.min_accuracy`)."""
  judge = grid_bed.GridJudge(config.judge.path, empty_threshold=config.judge.empty_threshold)
  ceiling = {
    f"{split}_image": judge.judge_images(splits[split]["image"], splits[split])
    for split in ("test", "heldout")
  }
  logging.info(
    "grid judge %s on real test scenes: class %.4f, position %.4f, empty %.4f, all correct %.4f",
    config.judge.path,
    *(ceiling["test_image"][k] for k in ("class", "position", "empty", "all_correct")),
  )
  return judge, ceiling


def _attribute_judge(config, splits, info, judge_dir):
  """The attribute judge of `shapes` (trained on fresh renders) and its ceiling per split/field."""
  if config.judge.num_scenes and not os.path.exists(os.path.join(judge_dir, "judge.npz")):
    judge_train = judge_lib.render_scenes(
      config.judge.num_scenes, **beds.scene_options(config.data), seed=config.seed + 1
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
