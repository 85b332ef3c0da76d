"""What an InfoTok run reports: one flat row per style x variant x seed (results.json), the
summary table (summary.md) and the sample grids of one seed."""

from __future__ import annotations

import os

from infotok import evaluate
from infotok import text as text_lib
from shared import report, workdir

# Row name -> metric name of the unified result, per kind of data set (True: image-caption sets).
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


def row(res: dict, tok: dict, caption_set: bool = False) -> dict:
  """One flat table row: style, variant, seed, headline metrics (test and, on shapes, held-out)."""
  out = {"style": res["style"], "variant": res["variant"], "seed": res["seed"]}
  for split in ("test",) if caption_set else ("test", "heldout"):
    for name, metric in ROW_METRICS[caption_set].items():
      out[f"{name}_{split}"] = res[split][metric]
  for name, metric in TOKENIZER_METRICS.items():
    out[name] = tok["test"].get(metric, float("nan"))
  return out


def item_scores(res: dict, splits) -> dict[str, dict[str, list[float]]]:
  """A unified result's per-item scores for the paired statistics (`infotok.stats`):
  {'understanding', 'generation'} -> split -> scores (empty for results written before them)."""
  return {
    kind: {s: res[s].get(f"item_{kind}", []) for s in splits}
    for kind in ("understanding", "generation")
  }


def headline(caption_set: bool) -> tuple[str, ...]:
  return CAPTION_HEADLINE if caption_set else HEADLINE


def summary_table(rows: list[dict], metrics=HEADLINE) -> str:
  """Markdown: per style x variant, mean ± std over seeds of the headline metrics."""
  return report.mean_std_table(rows, ("style", "variant"), list(metrics), precision=3)


def write_summary(path: str, title: str, table: str, warning: str = "") -> None:
  """summary.md: the title, a warning line when there is one, the table (process 0)."""
  warn = f"**{warning}**\n\n" if warning else ""
  workdir.write_text(path, f"# {title}\n\n{warn}{table}\n")


def scalars(d: dict) -> dict:
  """The numbers of a metrics dict (no flags, lists or samples)."""
  return {k: v for k, v in d.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def sample_grids(pipe, seed_dir: str, chosen: dict[str, dict[str, str]]) -> dict[str, str]:
  """Reconstructions of the chosen tokenizers (`chosen`: style -> variant -> tokenizer) and every
  style's generations on test, as PNGs (from the arrays each sub-run saved): name -> path."""
  k = pipe.config.eval.grid_samples
  test = pipe.splits["test"]
  out = {}
  recon = {"input image": test["image"][:k], "clean": test["clean"][:k]}
  for name in sorted({n for by_variant in chosen.values() for n in by_variant.values()}):
    path = os.path.join(seed_dir, "tokenizers", name, "recon_test.npy")
    if os.path.exists(path):
      recon[name] = workdir.load_array(path, recover=_regrid(path))
  out["reconstructions"] = evaluate.sample_grid(
    recon, os.path.join(seed_dir, "reconstructions.png")
  )
  prompts = text_lib.decode(pipe.text_tok, test["caption_ids"][:k])
  for style in pipe.config.unified.styles:
    rows = {"real (clean)": test["clean"][:k]}
    for variant in pipe.config.variants:
      path = os.path.join(seed_dir, "unified", f"{style}_{variant}", "generated_test.npy")
      if os.path.exists(path):
        rows[variant] = workdir.load_array(path, recover=_regrid(path))
    out[f"generated_{style}"] = evaluate.sample_grid(
      rows, os.path.join(seed_dir, f"generated_{style}.png"), prompts
    )
  return out


def _regrid(path: str) -> str:
  return (
    f"delete {path} and re-run the same command (the figure is drawn without it; delete the "
    "result.json beside it too to write it again)"
  )
