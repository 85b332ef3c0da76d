"""Markdown tables of InfoTok runs, for docs/results.md: `python -m infotok.report RUN_DIR...`.

Several run directories (e.g. seed 0 of the default run and seeds 1, 2 of a second run with the
same config but `seeds`) are pooled: their rows are one table, mean ± std over all seeds.
Everything printed comes from the runs' `results.json`: per style and variant
the understanding and generation scores on test and held-out combinations (mean ± std over the
run's seeds), the tokenizers' reconstruction / rate / relevance, the betas chosen on validation,
the judge's ceiling, the figures and the wall time.
"""

from __future__ import annotations

import json
import os
import sys

from shared.report import format_mean_std, mean_std_table

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
TOKENIZER = {
  "tok_psnr_image": "PSNR vs image",
  "tok_psnr_clean": "PSNR vs clean",
  "tok_rate_nats": "rate (nats/img)",
  "tok_perplexity": "code perplexity",
  "tok_relevance": "judge acc on recon",
}


def _load(workdir: str) -> dict:
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


def render(*workdirs: str) -> str:
  runs = [_load(w) for w in workdirs]
  rows = [r for run in runs for r in run["metrics"]["rows"]]
  seeds = sorted({r["seed"] for r in rows})
  if len(seeds) != len(rows) // max(len({(r["style"], r["variant"]) for r in rows}), 1):
    raise SystemExit(f"runs {workdirs} repeat a seed; pool runs of distinct seeds only")
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
  out.append(
    "Understanding (greedy decoding; exact-match VQA accuracy, per-attribute caption accuracy):"
  )
  out.append("")
  out.append(
    mean_std_table(rows, ("style", "variant"), list(UNDERSTANDING), precision=3, labels=labels)
  )
  out.append("")
  out.append(
    "Generation (decoded images judged per grid cell; attribute mean over shape, colour, "
    "size, position of the described objects; all-correct = every cell right):"
  )
  out.append("")
  out.append(
    mean_std_table(rows, ("style", "variant"), list(GENERATION), precision=3, labels=labels)
  )
  out.append("")
  out.append("Tokenizer used by each row (test split):")
  out.append("")
  out.append(
    mean_std_table(rows, ("style", "variant"), list(TOKENIZER), precision=3, labels=labels)
  )
  out.append("")
  out.append(claim_table(rows))
  out.append("")
  m = runs[0]["metrics"]
  ceiling = m["judge_ceiling"]
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


def claim_table(rows: list[dict]) -> str:
  """The paper's claim per style: does InfoTok beat the baseline on understanding and generation?

  Per seed, the variant's score minus the baseline's of the same style and seed, averaged over
  the understanding metrics (VQA and caption attributes, test and held-out) and over the
  generation metrics (attribute accuracy, test and held-out); mean ± std of those over seeds.
  "yes" when the mean difference is positive.
  """
  by = {(r["style"], r["variant"], r["seed"]): r for r in rows}
  lines = [
    "Claim check: each variant minus the baseline, same style and seed (understanding = mean of "
    "the four understanding columns, generation = mean of the two attribute columns):",
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
      d_und.append(sum(r[k] - base[k] for k in CLAIM_UND) / len(CLAIM_UND))
      d_gen.append(sum(r[k] - base[k] for k in CLAIM_GEN) / len(CLAIM_GEN))
    if not d_und:
      continue
    mu, mg = sum(d_und) / len(d_und), sum(d_gen) / len(d_gen)
    lines.append(
      f"| {style} | {variant} | {format_mean_std(d_und, 3)} | {'yes' if mu > 0 else 'no'} | "
      f"{format_mean_std(d_gen, 3)} | {'yes' if mg > 0 else 'no'} |"
    )
  return "\n".join(lines)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if not argv:
    print("usage: python -m infotok.report RUN_DIR [RUN_DIR ...]", file=sys.stderr)
    return 2
  print(render(*argv), end="")
  return 0


if __name__ == "__main__":
  sys.exit(main())
