"""Tables of clean-test accuracy (mean +- std over seeds) from a run's cells."""

from __future__ import annotations

import sys

import numpy as np

from shared import cli
from shared.errors import DataError
from shared.workdir import read_run_results
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


def table_markdown(summary, methods, victim_names, percent: bool = True, cell=None) -> str:
  """Rows = protection method, columns = victim, cells = 'mean ± std' (in % when percent), or
  `cell((mean, std, n))` when given; '—' where the summary has no cell."""
  scale = 100.0 if percent else 1.0
  cell = cell or (lambda t: f"{scale * t[0]:.1f} ± {scale * t[1]:.1f}")
  head = "| protection | " + " | ".join(VICTIMS.get(v, v) for v in victim_names) + " |"
  rule = "|---|" + "---:|" * len(victim_names)
  rows = [head, rule]
  for m in methods:
    row = summary.get(m, {})
    cells = [cell(row[v]) if v in row else "—" for v in victim_names]
    rows.append(f"| {m} | " + " | ".join(cells) + " |")
  return "\n".join(rows)


def _generation_rows(generation: dict, methods) -> str:
  """Per method, mean over seeds of what the perturbations look like on their own."""
  keys = [
    ("mean_abs_x255", "mean abs(delta) x255", "{:.2f}"),
    ("csd", "CSD of delta", "{:.3g}"),
    ("delta_linear_accuracy", "linear probe on delta alone", "{:.3f}"),
    ("rounds", "search rounds", "{:.1f}"),
    ("generate_s", "generation time (s)", "{:.0f}"),
  ]
  head = "| protection | " + " | ".join(label for _, label, _ in keys) + " |"
  rows = [head, "|---|" + "---:|" * len(keys)]
  for m in methods:
    cells = []
    for key, _, fmt in keys:
      vals = [g[m][key] for g in generation.values() if m in g and key in g[m]]
      vals = [v for v in vals if v is not None and np.isfinite(v)]
      cells.append(fmt.format(np.mean(vals)) if vals else "—")
    rows.append(f"| {m} | " + " | ".join(cells) + " |")
  return "\n".join(rows)


def results_section(workdir: str) -> str:
  """The markdown of a finished run: command, device, wall time, both tables, diagnostics.

  Raises:
    DataError: not a finished unlearnable run (see `shared.workdir.read_run_results`).
  """
  res = read_run_results(workdir, "unlearnable", needs=("final", "peak", "num_classes"))
  try:
    return _section(workdir, res)
  except (KeyError, TypeError, ValueError) as e:  # a results.json of another layout
    raise DataError(f"{workdir}/results.json cannot be read as a run's results ({e!r})") from None


def _section(workdir: str, res: dict) -> str:
  cfg, dev, m = res["config"], res["devices"], res["metrics"]
  from unlearnable.evaluate import columns_of

  cols = columns_of(cfg["victims"])
  k = m["num_classes"]
  table = "\n".join(
    [
      f"Clean-test accuracy (%) at the end of training, mean ± std (ddof 0) over seeds "
      f"{cfg['seeds']}; {k} classes, chance {100 / k:.1f}%:",
      "",
      table_markdown(m["final"], cfg["methods"], cols),
      "",
      "Peak clean-test accuracy over training (%), the early-stopping view:",
      "",
      table_markdown(m["peak"], cfg["methods"], cols),
    ]
  )
  variant = "" if cfg["variant"] == "default" else f":{cfg['variant']}"
  lines = [
    f"Command: `python -m unlearnable --config configs/unlearnable.py{variant} "
    f"--workdir {workdir}` (code at git {res['versions'].get('git', '?')}).",
    f"Device: {dev['count']} x {dev['kind']} ({dev['platform']}); wall time "
    f"{res['wall_time_s'] / 60:.1f} min for {len(cfg['seeds'])} seeds.",
    f"Data check: pixels within eps of 0 or 1: "
    f"{m['data_check']['pixels_within_eps_of_0_or_1']:.3f} (eps = {cfg['eps']:.4f}).",
    "",
    table,
    "",
    "The perturbations on their own (mean over seeds):",
    "",
    _generation_rows(m["generation"], cfg["methods"]),
  ]
  return "\n".join(lines)


USAGE = "usage: python -m unlearnable.report [RUN_DIR]   (default runs/unlearnable)"


def main(argv=None) -> int:
  runs = cli.run_folders(
    argv,
    USAGE,
    "Prints the markdown section of a finished unlearnable run.",
    at_most=1,
    default="runs/unlearnable",
  )
  if runs is None:
    return 0
  print(results_section(runs[0]))
  return 0


if __name__ == "__main__":
  sys.exit(cli.guarded(main))
