"""The information plane per unified style: rate vs relevance of the tokenizer each variant
uses in that style, mean ± std over seeds (test split), as a table and a figure.

  rate       sum_t H(code_t), the plug-in entropy of each latent position's code, nats/image: an
             upper bound on I(X; Z) = H(Z) for the deterministic (posterior-mean) tokens. An
             entropy, not a `shared.mi` estimator.
  KL         KL(q(z|x) || N(0, I)) (`shared.mi.gaussian_kl`): the VIB upper bound on I(X; Z) of
             the noisy encoder; meaningful only where the posterior variance is trained
             (vib_kl, infotok_vib).
  relevance  I_NCE with the judge as a fixed critic (`shared.mi.infonce`, `judge.critic_scores`):
             a lower bound on I(recon(Z); Y) <= I(Z; Y), nats (at most log N).

Both the run (`information_plane_styles.png` in its workdir) and `python -m infotok.report`
read these from the results' per-seed tokenizer metrics.
"""

from __future__ import annotations

import os

import numpy as np

RATE, KL, RELEVANCE = "rate_nats", "kl_nats", "relevance_nce_nats"
LABELS = {
  RATE: "rate: sum_t H(code_t) [nats/img] (plug-in; upper bound on I(X;Z))",
  KL: "KL(q(z|x)||N(0,I)) [nats/img] (shared.mi.gaussian_kl; VIB upper bound on I(X;Z))",
  RELEVANCE: "I_NCE, judge as critic [nats] (shared.mi.infonce; lower bound on I(Z;Y))",
}


def style_points(per_seed: dict, split: str = "test") -> dict[str, dict[str, dict[str, list]]]:
  """style -> variant -> metric -> one value per seed, from results.json's 'per_seed' (each seed's
  'chosen' style -> variant -> tokenizer and 'tokenizers' name -> split -> metrics)."""
  out = {}
  for info in per_seed.values():
    by_style = info["chosen"]
    if by_style and not isinstance(next(iter(by_style.values())), dict):
      continue  # a run written before issue 17 (one choice for every style)
    for style, by_variant in by_style.items():
      for variant, name in by_variant.items():
        metrics = info["tokenizers"][name][split]
        cell = out.setdefault(style, {}).setdefault(variant, {})
        for key in (RATE, KL, RELEVANCE):
          cell.setdefault(key, []).append(metrics.get(key, float("nan")))
  return out


def _mean_std(values) -> tuple[float, float]:
  v = np.asarray(values, np.float64)
  return float(np.mean(v)), float(np.std(v, ddof=1)) if v.size > 1 else 0.0


def table(points: dict) -> str:
  """Markdown: per style and variant, mean ± std over seeds of rate, KL and relevance."""
  lines = [
    "| style | variant | seeds | rate (nats/img) | KL (nats/img) | I_NCE relevance (nats) |",
    "|---|---|---|---|---|---|",
  ]
  for style, by_variant in points.items():
    for variant, cell in by_variant.items():
      vals = [_mean_std(cell[k]) for k in (RATE, KL, RELEVANCE)]
      cells = " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in vals)
      lines.append(f"| {style} | {variant} | {len(cell[RATE])} | {cells} |")
  return "\n".join(lines)


def figure(points: dict, path: str, title: str = "") -> str:
  """One panel per style: rate vs relevance of every variant, error bars = std over seeds."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  styles = list(points)
  fig, axes = plt.subplots(1, len(styles), figsize=(4.6 * len(styles), 4.2), squeeze=False)
  for ax, style in zip(axes[0], styles, strict=True):
    for variant, cell in points[style].items():
      (x, dx), (y, dy) = _mean_std(cell[RATE]), _mean_std(cell[RELEVANCE])
      ax.errorbar([x], [y], xerr=[dx], yerr=[dy], fmt="o", capsize=3, label=variant)
    ax.set_title(f"{style} style")
    ax.set_xlabel(LABELS[RATE], fontsize=7)
    ax.set_ylabel(LABELS[RELEVANCE], fontsize=7)
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7, title="mean ± std over seeds", title_fontsize=7)
  fig.suptitle(title or "Information plane per style (test split, the tokenizer of each variant)")
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
