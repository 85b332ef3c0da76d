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

from shared import cli
from shared.errors import ConfigError, DataError
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
  out.append(claim_table(rows, *claim))
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
  picks = {}
  for seed, info in per_seed.items():
    for variant, name in info["chosen"].items():
      picks.setdefault(variant, []).append(f"{name} (seed {seed})")
  out.append(
    "Chosen on validation: "
    + "; ".join(f"{v}: {', '.join(p)}" for v, p in picks.items() if v.startswith("infotok"))
    + "."
  )
  out.append("")
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
  for w, run in zip(workdirs, runs, strict=True):
    for seed, info in run["metrics"]["per_seed"].items():
      figs = ", ".join(f"`{os.path.join(w, p)}`" for p in info["figures"].values())
      out.append(f"Figures (seed {seed}): {figs}.")
  return "\n".join(out) + "\n"


CLAIM_UND = ("und_vqa_test", "und_vqa_heldout", "und_caption_attr_test", "und_caption_attr_heldout")
CLAIM_GEN = ("gen_attr_test", "gen_attr_heldout")
CAPTION_CLAIM_UND = ("und_bleu4_test", "und_caption_rprec_test")
CAPTION_CLAIM_GEN = ("gen_rprec_test",)


def claim_table(rows: list[dict], und=CLAIM_UND, gen=CLAIM_GEN) -> str:
  """The paper's claim per style: does InfoTok beat the baseline on understanding and generation?

  Per seed, the variant's score minus the baseline's of the same style and seed, averaged over
  the understanding metrics (VQA and caption attributes, test and held-out) and over the
  generation metrics (attribute accuracy, test and held-out); mean ± std of those over seeds.
  "yes" when the mean difference is positive.
  """
  by = {(r["style"], r["variant"], r["seed"]): r for r in rows}
  lines = [
    "Claim check: each variant minus the baseline, same style and seed (understanding = mean of "
    + (
      "the four understanding columns, generation = mean of the two attribute columns):"
      if (und, gen) == (CLAIM_UND, CLAIM_GEN)
      else f"{', '.join(und)}; generation = {', '.join(gen)}):"
    ),
    "",
    "| style | variant | Δ understanding | improves | Δ generation | improves |",
    "|---|---|---|---|---|---|",
  ]
  for style, variant in dict.fromkeys((r["style"], r["variant"]) for r in rows):
    if variant == "baseline":
      continue
    d_und, d_gen = [], []
    for (s_, v_, seed), r in by.items():
      base = by.get((style, "baseline", seed))
      if (s_, v_) != (style, variant) or base is None:
        continue
      d_und.append(sum(r[k] - base[k] for k in und) / len(und))
      d_gen.append(sum(r[k] - base[k] for k in gen) / len(gen))
    if not d_und:
      continue
    mu, mg = sum(d_und) / len(d_und), sum(d_gen) / len(d_gen)
    lines.append(
      f"| {style} | {variant} | {format_mean_std(d_und, 3)} | {'yes' if mu > 0 else 'no'} | "
      f"{format_mean_std(d_gen, 3)} | {'yes' if mg > 0 else 'no'} |"
    )
  return "\n".join(lines)


USAGE = "usage: python -m infotok.report RUN_DIR [RUN_DIR ...]"


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if any(a in ("-h", "--help") for a in argv):
    print(f"{USAGE}\n\nPools the results.json of finished InfoTok runs into markdown tables.")
    return 0
  if not argv:
    raise ConfigError(f"no run folder given; {USAGE}")
  try:
    print(render(*argv), end="")
  except (KeyError, TypeError, ValueError) as e:  # a results.json of another layout
    raise DataError(f"the runs {list(argv)} cannot be pooled ({type(e).__name__}: {e})") from None
  return 0


if __name__ == "__main__":
  sys.exit(cli.guarded(main))
