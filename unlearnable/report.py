"""Tables of clean-test accuracy (mean +- std over seeds) from a run's cells."""

from __future__ import annotations

import numpy as np

from unlearnable.evaluate import VICTIMS


def summarise(per_seed: dict[int, dict[str, dict[str, dict]]], methods, victim_names, which: str):
  """{method: {victim: (mean, std, n)}} of `which` ('final' | 'peak') over seeds (std ddof=0)."""
  out = {}
  for m in methods:
    out[m] = {}
    for v in victim_names:
      vals = [cells[m][v][which] for cells in per_seed.values() if v in cells.get(m, {})]
      if vals:
        out[m][v] = (float(np.mean(vals)), float(np.std(vals)), len(vals))
  return out


def table_markdown(summary, methods, victim_names, percent: bool = True) -> str:
  """Rows = protection method, columns = victim, cells = 'mean ± std' (in % when percent)."""
  scale = 100.0 if percent else 1.0
  head = "| protection | " + " | ".join(VICTIMS.get(v, v) for v in victim_names) + " |"
  rule = "|---|" + "---:|" * len(victim_names)
  rows = [head, rule]
  for m in methods:
    cells = []
    for v in victim_names:
      if v in summary.get(m, {}):
        mean, std, _ = summary[m][v]
        cells.append(f"{scale * mean:.1f} ± {scale * std:.1f}")
      else:
        cells.append("—")
    rows.append(f"| {m} | " + " | ".join(cells) + " |")
  return "\n".join(rows)
