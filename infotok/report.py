"""Markdown tables of InfoTok runs, for docs/results.md: `python -m infotok.report RUN_DIR...`.

Several run directories (e.g. seed 0 of the default run and seeds 1, 2 of a second run with the
same config but `seeds`) are pooled: their rows are one table, mean ± std over all seeds.
Everything printed comes from the runs' `results.json`: per style and variant
the understanding and generation scores on test and held-out combinations (mean ± std over the
run's seeds), the tokenizers' reconstruction / rate / relevance, the betas chosen on validation,
the judge's ceiling, the figures and the wall time.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from infotok import plane, stats
from shared import cli
from shared.errors import DataError
from shared.report import format_mean_std, mean_std_table
from shared.workdir import read_run_results

UNDERSTANDING = {
  "und_vqa_test": "VQA acc test",
  "und_vqa_heldout": "VQA acc held-out",
  "und_caption_attr_test": "caption attr test",
  "und_caption_attr_heldout": "caption attr held-out",
}
GENERATION = {
  "gen_attr_test": "gen attr test",
  "gen_attr_heldout": "gen attr held-out",
  "gen_all_correct_test": "gen all-correct test",
  "gen_all_correct_heldout": "gen all-correct held-out",
}
# Image-caption sets (the `paper` variant; infotok/captions.py): no VQA, attributes or held-out.
CAPTION_UNDERSTANDING = {
  "und_bleu4_test": "BLEU-4 test",
  "und_caption_rprec_test": "caption R-prec",
}
CAPTION_GENERATION = {
  "gen_rprec_test": "image R-prec",
  "gen_clip_score_test": "judge cosine",
  "gen_fd_test": "FD (judge feat.)",
}
TEXTS = {
  False: (
    "Understanding (greedy decoding; exact-match VQA accuracy, per-attribute caption accuracy):",
    "Generation (decoded images judged per grid cell; attribute mean over shape, colour, size, "
    "position of the described objects; all-correct = every cell right):",
  ),
  True: (
    "Understanding (greedy captions: corpus BLEU-4 against every reference; R-precision of each "
    "caption retrieving its image among 32, by the retrieval judge):",
    "Generation (images from the first caption: R-precision of each retrieving its caption among "
    "32, mean matching cosine and FD in the retrieval judge's features):",
  ),
}
TOKENIZER = {
  "tok_psnr_image": "PSNR vs image",
  "tok_psnr_clean": "PSNR vs clean",
  "tok_rate_nats": "rate (nats/img)",
  "tok_perplexity": "code perplexity",
  "tok_relevance": "judge acc on recon",
}


def _load(workdir: str) -> dict:
  return read_run_results(workdir, "infotok", needs=("rows",))


def render(*workdirs: str) -> str:
  runs = [_load(w) for w in workdirs]
  rows = [r for run in runs for r in run["metrics"]["rows"]]
  seeds = sorted({r["seed"] for r in rows})
  if len(seeds) != len(rows) // max(len({(r["style"], r["variant"]) for r in rows}), 1):
    raise DataError(f"runs {workdirs} repeat a seed; pool runs of distinct seeds only")
  labels = {"style": "style", "variant": "variant", **UNDERSTANDING, **GENERATION, **TOKENIZER}
  out = []
  for w, run in zip(workdirs, runs, strict=True):
    dev = run.get("devices", {})
    run_seeds = sorted({r["seed"] for r in run["metrics"]["rows"]})
    out.append(
      f"- `{w}`: variant `{run.get('variant')}`, seeds {run_seeds}, {dev.get('count')} x "
      f"{dev.get('kind')} ({dev.get('platform')}), wall time {run.get('wall_time_s')} s."
    )
  out.append("")
  out.append(f"Cells: mean ± std over seeds {seeds} (one value when a single seed).")
  out.append("")
  captions = "und_bleu4_test" in rows[0]
  und, gen = (
    (CAPTION_UNDERSTANDING, CAPTION_GENERATION) if captions else (UNDERSTANDING, GENERATION)
  )
  labels.update(CAPTION_UNDERSTANDING if captions else {})
  labels.update(CAPTION_GENERATION if captions else {})
  if captions:
    labels["tok_relevance"] = "judge R-prec on recon"
  for text, columns in zip(TEXTS[captions], (und, gen), strict=True):
    table = mean_std_table(rows, ("style", "variant"), list(columns), precision=3, labels=labels)
    out += [text, "", table, ""]
  out.append("Tokenizer used by each row (test split):")
  out.append("")
  out.append(
    mean_std_table(rows, ("style", "variant"), list(TOKENIZER), precision=3, labels=labels)
  )
  out.append("")
  claim = (CAPTION_CLAIM_UND, CAPTION_CLAIM_GEN) if captions else (CLAIM_UND, CLAIM_GEN)
  out.append(claim_table(rows, _merged_items(runs), *claim))
  out.append("")
  ceiling = runs[0]["metrics"]["judge_ceiling"]
  if captions:
    scores = ceiling["test_image"]
    out.append(
      f"Retrieval judge ceiling on real test pairs: R-precision {scores['r_precision']:.4f} "
      f"(chance 1/32), matching cosine {scores['clip_score']:.4f}."
    )
  else:
    out.append(
      "Judge ceiling on real renders (attribute mean / all-correct): "
      + ", ".join(
        f"{k} {v['attribute_mean']:.4f} / {v['all_correct']:.4f}" for k, v in ceiling.items()
      )
      + "."
    )
  out.append("")
  per_seed = {s: info for run in runs for s, info in run["metrics"]["per_seed"].items()}
  out += chosen_lines(per_seed)
  out.append("Information plane (validation; rate = sum over positions of the code entropy):")
  out.append("")
  header = "| tokenizer | rate (nats/img) | KL (nats/img) | relevance | PSNR image | PSNR clean |"
  out.append(header)
  out.append("|" + "---|" * 6)
  names = list(next(iter(per_seed.values()))["tokenizers"])
  for name in names:
    vals = [info["tokenizers"][name]["val"] for info in per_seed.values()]
    cells = [
      format_mean_std([v.get(k, float("nan")) for v in vals], 3)
      for k in ("rate_nats", "kl_nats", "relevance", "psnr_image", "psnr_clean")
    ]
    out.append(f"| {name} | " + " | ".join(cells) + " |")
  out.append("")
  points = plane.style_points(per_seed)
  if points:
    out.append(
      "Information plane per style (test split; the tokenizer each variant uses in that style; "
      "mean ± std over seeds). "
      + "; ".join(plane.LABELS[k] for k in (plane.RATE, plane.KL, plane.RELEVANCE))
      + "."
    )
    out += ["", plane.table(points), ""]
  for w, run in zip(workdirs, runs, strict=True):
    if run["metrics"].get("information_plane_styles"):
      path = os.path.join(w, run["metrics"]["information_plane_styles"])
      out.append(f"Information plane per style (figure): `{path}`.")
    for seed, info in run["metrics"]["per_seed"].items():
      figs = ", ".join(f"`{os.path.join(w, p)}`" for p in info["figures"].values())
      out.append(f"Figures (seed {seed}): {figs}.")
  return "\n".join(out) + "\n"


def chosen_lines(per_seed: dict) -> list[str]:
  """Which tokenizer stands for each swept variant, per style (chosen on validation), and the
  rate-matched codebooks."""
  picks = {}
  for seed, info in per_seed.items():
    by_style = info["chosen"]
    if by_style and not isinstance(next(iter(by_style.values())), dict):  # before issue 17
      by_style = {"all styles": by_style}
    for style, by_variant in by_style.items():
      for variant, name in by_variant.items():
        if variant not in ("baseline", "rate_matched"):
          picks.setdefault(style, {}).setdefault(variant, []).append(f"{name} (seed {seed})")
  out = ["Chosen on validation:", ""]
  for style, by_variant in picks.items():
    cells = "; ".join(f"{v}: {', '.join(p)}" for v, p in by_variant.items())
    out.append(f"- {style}: {cells}.")
  for seed, info in per_seed.items():
    for family, m in (info.get("rate_matched") or {}).items():
      codebook = m.get("fsq_levels", m.get("codebook_size"))
      out.append(
        f"- rate_matched ({family}, seed {seed}): {m['num_codes']} codes ({codebook}) for the "
        f"chosen InfoTok-VIB's code perplexity {m['vib_code_perplexity']:.1f}."
      )
  return [*out, ""]


CLAIM_UND = ("und_vqa_test", "und_vqa_heldout", "und_caption_attr_test", "und_caption_attr_heldout")
CLAIM_GEN = ("gen_attr_test", "gen_attr_heldout")
CAPTION_CLAIM_UND = ("und_bleu4_test", "und_caption_rprec_test")
CAPTION_CLAIM_GEN = ("gen_rprec_test",)


def claim_table(rows: list[dict], items: dict | None = None, und=CLAIM_UND, gen=CLAIM_GEN) -> str:
  """The paper's claim per style: does each variant beat the baseline on understanding and
  generation?

  From the per-item scores (`items`: style -> variant -> seed -> kind -> split -> scores, test
  and held-out pooled): the mean over seeds of the per-item difference from the baseline of the
  same style and seed, with its two-stage bootstrap interval over seeds x items
  (`infotok.stats`); "yes" only when the interval lies above 0. Runs without per-item scores
  (written before them) show the seed-level mean ± std of the row metrics and no verdict.
  """
  items = items or {}
  lines = [
    "Claim check: each variant minus the baseline, same style, seed and test items; mean "
    "difference [95% interval, bootstrap over seeds x items]; improves = the interval lies "
    "above 0 (understanding per item: "
    + (
      "mean of VQA exact match and caption attribute accuracy; generation per image: attribute "
      "accuracy of its objects; test and held-out items pooled):"
      if (und, gen) == (CLAIM_UND, CLAIM_GEN)
      else "the caption's retrieval hit; generation: the image's retrieval hit):"
    ),
    "",
    "| style | variant | seeds x items | Δ understanding [95% CI] | improves | "
    "Δ generation [95% CI] | improves |",
    "|---|---|---|---|---|---|---|",
  ]
  for style, variant in dict.fromkeys((r["style"], r["variant"]) for r in rows):
    if variant == "baseline":
      continue
    cells = _item_cells(items.get(style, {}), variant) or _row_cells(rows, style, variant, und, gen)
    if cells:
      lines.append(f"| {style} | {variant} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _item_cells(by_variant: dict, variant: str) -> list[str] | None:
  """The claim cells from per-item paired differences, or None without per-item scores."""
  base, ours = by_variant.get("baseline", {}), by_variant.get(variant, {})
  seeds = sorted(set(base) & set(ours), key=int)
  cells, counted = [], None
  for kind in ("understanding", "generation"):
    diffs = []
    for seed in seeds:
      a = [x for split in sorted(ours[seed][kind]) for x in ours[seed][kind][split]]
      b = [x for split in sorted(base[seed][kind]) for x in base[seed][kind][split]]
      if not a or len(a) != len(b):
        return None
      diffs.append(np.subtract(a, b))
    if not diffs:
      return None
    ci = stats.paired_bootstrap(diffs)
    counted = f"{ci['n_seeds']} x {ci['n_items'] // ci['n_seeds']}"
    cells += [stats.format_interval(ci), stats.verdict(ci)]
  return [counted, *cells]


def _row_cells(rows, style, variant, und, gen) -> list[str] | None:
  """Seed-level differences of the row metrics (runs without per-item scores): no verdict."""
  by = {(r["style"], r["variant"], r["seed"]): r for r in rows}
  d_und, d_gen = [], []
  for (s_, v_, seed), r in by.items():
    base = by.get((style, "baseline", seed))
    if (s_, v_) != (style, variant) or base is None:
      continue
    d_und.append(sum(r[k] - base[k] for k in und) / len(und))
    d_gen.append(sum(r[k] - base[k] for k in gen) / len(gen))
  if not d_und:
    return None
  no = "no per-item scores: no verdict"
  return [f"{len(d_und)} x -", format_mean_std(d_und, 3), no, format_mean_std(d_gen, 3), no]


def _merged_items(runs: list[dict]) -> dict:
  """style -> variant -> seed -> per-item scores, over every run pooled."""
  out = {}
  for run in runs:
    for style, by_variant in run["metrics"].get("item_scores", {}).items():
      for variant, by_seed in by_variant.items():
        out.setdefault(style, {}).setdefault(variant, {}).update(by_seed)
  return out


USAGE = "usage: python -m infotok.report RUN_DIR [RUN_DIR ...]"


def main(argv=None) -> int:
  runs = cli.run_folders(
    argv, USAGE, "Pools the results.json of finished InfoTok runs into markdown tables."
  )
  if runs is None:
    return 0
  try:
    print(render(*runs), end="")
  except (KeyError, TypeError, ValueError) as e:  # a results.json of another layout
    raise DataError(f"the runs {runs} cannot be pooled ({type(e).__name__}: {e})") from None
  return 0


if __name__ == "__main__":
  sys.exit(cli.guarded(main))
