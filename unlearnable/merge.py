"""One victim-matrix table from unlearnable runs made as separate processes.

  python -m unlearnable.merge SRC [SRC ...] --out DIR

A SRC is a `python -m unlearnable` workdir (a folder holding results.json), or a bare
`*.results.json` file that a single-seed run left. Per-seed accuracies come from the workdir's
`seed_<s>/<method>/<victim>/cell.json` files; a bare file (or a workdir without a cell) gives them
from `metrics.final` / `metrics.peak`, which must then hold a single seed.

The sources must have run one experiment: their configs, flattened to dotted keys, agree on every
key but methods, victims, seeds, seed, gates, generator, protected_from and run.*;
`simclr_victim.*` is compared only between sources with a simclr victim, `other_arch` only between
sources with a supervised_other victim, a generator's block (`em.*`, `tue.*`, `dist.*`, `lsp.*`,
`ar.*`) only between sources that protect with a method it makes, and `release_uint8` only
between sources that protect with a method other than clean. A key that some sources lack (older
code) is listed in a note, not refused. Another value, a (method, victim, seed) cell given twice,
or a source that is not a finished unlearnable run stops it with one line and exit code 2.

It writes DIR/table.md (final and peak matrices, mean ± std (ddof 1) over seeds, the clean-data
gates of the newest source's config, paired clean-minus-protected differences over seeds, wall
times), DIR/results.json (the cells, the gates, the paired rows, where each came from) and
DIR/victim_matrix.png (the final matrix as a heatmap from chance to 100%).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence

import numpy as np

from shared import cli
from shared import workdir as workdir_lib
from shared.errors import ConfigError, DataError
from shared.report import check_one_experiment, flatten
from shared.stats import bootstrap_paired, verdict
from unlearnable.evaluate import GATE_OF, VICTIMS, columns_of, derived_cells
from unlearnable.report import table_markdown
from unlearnable.train import gate_check, gate_lines

METHOD_ORDER = ("clean", "random", "em", "em_class", "tue", "dist")
IGNORED = ("methods", "victims", "seeds", "seed", "gates", "run", "generator", "protected_from")
# A generator's config block matters only to sources that protect with a method it makes.
GENERATOR_BLOCKS = {
  "em": {"em", "em_class"},
  "tue": {"tue", "dist"},
  "dist": {"dist"},
  "lsp": {"lsp"},
  "ar": {"ar"},
}
USAGE = "usage: python -m unlearnable.merge SRC [SRC ...] --out DIR"


def _read_file_source(path: str) -> dict:
  try:
    with open(path) as f:
      results = json.load(f)
  except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f"{path} is unreadable ({e})") from None
  if not isinstance(results, dict):
    raise DataError(f"{path} is not a run's results (a JSON {type(results).__name__})")
  if results.get("method") != "unlearnable":
    raise DataError(f"{path} is from a {results.get('method')!r} run, not `python -m unlearnable`")
  return results


def _single_seed_metrics(src: str, results: dict, method: str, victim: str, seeds) -> dict | None:
  """{final, peak} of (method, victim) from metrics of a one-seed run; None when it lacks it."""
  metrics = results.get("metrics") or {}
  got = [metrics.get(which, {}).get(method, {}).get(victim) for which in ("final", "peak")]
  if got[0] is None:
    return None
  n = [int(g[2]) for g in got if g is not None]
  if len(seeds) != 1 or any(k != 1 for k in n):
    raise DataError(
      f"{src}: {method}/{victim} has no cell.json files and its metrics pool seeds "
      f"{list(seeds)} (n={n}); only a one-seed run's metrics can be merged"
    )
  final = float(got[0][0])
  return {"final": final, "peak": float(got[1][0]) if got[1] is not None else final}


def _source(src: str) -> dict:
  """What one source gives: config, cells {(method, victim, seed): {final, peak}}, timings."""
  if os.path.isdir(src):
    folder, results = src, workdir_lib.read_run_results(src, "unlearnable")
    if results.get("method") != "unlearnable":
      raise DataError(f"{src}/results.json names no method; not a `python -m unlearnable` run")
    cell_path = lambda s, m, v: os.path.join(folder, f"seed_{s}", m, v, "cell.json")
    gen_path = lambda s, m: os.path.join(folder, f"seed_{s}", m, "generation.json")
  elif os.path.isfile(src) and os.path.basename(src) == "results.json":
    return _source(os.path.dirname(src) or ".")
  elif os.path.isfile(src) and src.endswith(".results.json"):
    folder, results = None, _read_file_source(src)
    sibling = src[: -len(".results.json")] + ".cell.json"
    cell_path = lambda s, m, v: sibling
    gen_path = lambda s, m: None
  elif os.path.exists(src):
    raise DataError(f"{src} is neither a run folder nor a *.results.json file")
  else:
    raise DataError(f"{src} does not exist (expected a workdir or a *.results.json file)")
  if "merged_from" in results:
    raise DataError(f"{src} is the output of unlearnable.merge; give the runs it merged instead")
  config = results.get("config")
  if not isinstance(config, dict) or not config.get("seeds"):
    raise DataError(f"{src}: results.json holds no config with seeds; not a finished run")
  seeds = [int(s) for s in config["seeds"]]
  methods, victims = list(config.get("methods") or []), list(config.get("victims") or [])
  one_cell = folder is not None or (len(methods) == 1 and len(victims) == 1)
  cells, train_s, generate_s = {}, {}, {}
  for s in seeds:
    for m in methods:
      for v in victims:
        cell = workdir_lib.read_json(cell_path(s, m, v)) if one_cell else None
        if folder is not None and cell is not None:
          cells[m, v, s] = {"final": float(cell["final"]), "peak": float(cell["peak"])}
          for name, got in derived_cells(v, cell).items():
            cells[m, name, s] = {k: float(x) for k, x in got.items()}
        else:
          for name in columns_of([v]):
            got = _single_seed_metrics(src, results, m, name, seeds)
            if got is not None:
              cells[m, name, s] = got
          if (m, v, s) not in cells:
            raise DataError(f"{src} has no {m}/{v} cell for seed {s}: an unfinished run?")
        if cell is not None and "train_s" in cell:
          train_s[m, v, s] = float(cell["train_s"])
      gen = workdir_lib.read_json(gen_path(s, m)) if gen_path(s, m) else None
      if gen is None:  # a bare results.json keeps the generation info in its metrics
        gen = (results.get("metrics") or {}).get("generation", {}).get(str(s), {}).get(m)
      if gen and gen.get("generate_s") is not None:
        generate_s[m, s] = float(gen["generate_s"])
  devices = results.get("devices") or {}
  path = src if folder is None else os.path.join(src, "results.json")
  return {
    "src": src,
    "config": config,
    "flat": flatten(config, sep="."),
    "methods": methods,
    "victims": victims,
    "seeds": seeds,
    "cells": cells,
    "train_s": train_s,
    "generate_s": generate_s,
    "mtime": os.path.getmtime(path),
    "num_classes": (results.get("metrics") or {}).get("num_classes"),
    "provenance": {
      "path": src,
      "git": (results.get("versions") or {}).get("git"),
      "device_kind": devices.get("kind"),
      "device_count": devices.get("count"),
      "wall_time_s": results.get("wall_time_s"),
      "config_hash": results.get("config_hash"),
      "methods": methods,
      "victims": victims,
      "seeds": seeds,
    },
  }


def _compares(source: dict, key: str) -> bool:
  """Whether `key` of this source's config takes part in the compatibility check."""
  head = key.split(".")[0]
  if head in IGNORED:
    return False
  if head == "simclr_victim":
    return "simclr" in source["victims"]
  if head == "release_uint8":
    return set(source["methods"]) != {"clean"}
  if head in GENERATOR_BLOCKS:
    return bool(GENERATOR_BLOCKS[head] & set(source["methods"]))
  if head == "other_arch":
    return "supervised_other" in source["victims"]
  return True


def check_configs(sources: Sequence[dict]) -> str:
  """Refuses two sources that ran another config (`_compares` says which keys take part); returns
  the keys some sources lack ('' if none). Raises DataError."""
  return check_one_experiment(sources, _compares)


def _order(names, known: Sequence[str]) -> list[str]:
  names = list(dict.fromkeys(names))
  return [n for n in known if n in names] + [n for n in names if n not in known]


def _summary(values: Sequence[float]) -> list:
  """[mean, std (ddof 1; 0 for one value), n]."""
  std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
  return [float(np.mean(values)), std, len(values)]


def _cell_text(triple) -> str:
  if triple is None:
    return "—"
  mean, std, n = triple
  return f"{100 * mean:.2f} ± {100 * std:.2f} (n={n})" if n > 1 else f"{100 * mean:.2f} (n=1)"


def _matrix(summary: dict, methods, victims) -> str:
  return table_markdown(summary, methods, victims, cell=_cell_text)


def save_heatmap(path: str, summary: dict, methods, victims, chance: float | None, title: str):
  """victim_matrix.png: final clean-test accuracy per (protection, victim), coloured from chance
  (dark: the data were unlearnable) to 100% (light), each cell annotated with mean ± std (n)."""
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  acc = np.full((len(methods), len(victims)), np.nan)
  for i, m in enumerate(methods):
    for j, v in enumerate(victims):
      if summary.get(m, {}).get(v) is not None:
        acc[i, j] = 100 * summary[m][v][0]
  fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(victims), 1.0 + 0.55 * len(methods)))
  low = 100 * chance if chance else 0.0
  image = ax.imshow(acc, cmap="viridis", vmin=low, vmax=100, aspect="auto")
  for i, m in enumerate(methods):
    for j, v in enumerate(victims):
      text = _cell_text(summary.get(m, {}).get(v)).replace(" (", "\n(")
      dark = not np.isnan(acc[i, j]) and acc[i, j] < (low + 100) / 2
      ax.text(j, i, text, ha="center", va="center", fontsize=7, color="w" if dark else "k")
  ax.set_xticks(range(len(victims)), [VICTIMS.get(v, v) for v in victims], fontsize=7, rotation=20)
  ax.set_yticks(range(len(methods)), methods, fontsize=8)
  ax.set_title(title, fontsize=8)
  fig.colorbar(image, ax=ax, label="clean-test accuracy (%)")
  fig.tight_layout()
  return workdir_lib.save_figure(fig, path, dpi=110)


def column_verdicts(gates: dict, victims) -> dict[str, bool]:
  """Whether each column may give verdicts: its gate (`GATE_OF`), when configured, is met."""
  status = {g: v["status"] for g, v in gates["gates"].items()}
  return {v: status.get(GATE_OF.get(v), "met") == "met" for v in victims}


def paired_rows(cells: dict, methods, victims, verdict_allowed: dict[str, bool]) -> list[dict]:
  """Clean minus protected final accuracy per victim and method, over the seeds both ran."""
  rows = []
  for v in victims:
    clean = cells.get("clean", {}).get(v, {})
    for m in methods:
      theirs = cells.get(m, {}).get(v, {})
      if m == "clean" or not theirs or not clean:
        continue
      common = sorted(set(clean) & set(theirs))
      a = [clean[s]["final"] for s in common]
      b = [theirs[s]["final"] for s in common]
      row = {"victim": v, "method": m, "seeds": common, "per_seed": list(np.subtract(a, b))}
      if not common:
        mean_c = np.mean([c["final"] for c in clean.values()])
        mean_p = np.mean([c["final"] for c in theirs.values()])
        row.update(kind="unpaired", mean=float(mean_c - mean_p), lo=None, hi=None)
        row["clean_seeds"], row["method_seeds"] = sorted(clean), sorted(theirs)
      elif len(common) == 1:
        row.update(kind="single", mean=float(row["per_seed"][0]), lo=None, hi=None)
      else:
        ci = bootstrap_paired(a, b)
        row.update(kind="paired", mean=ci["mean"], lo=ci["lo"], hi=ci["hi"], level=ci["level"])
      row["per_seed"] = [float(d) for d in row["per_seed"]]
      if not verdict_allowed.get(v, True):
        row["verdict"] = f"no verdict (gate {GATE_OF[v]} not met)"
      elif row["kind"] != "paired":
        row["verdict"] = "none (no interval)"
      else:
        said = verdict(row, better="higher", yes="lowers accuracy")
        row["verdict"] = "raises accuracy" if said == "worse" else said
      rows.append(row)
  return rows


def _paired_table(rows: list[dict]) -> str:
  out = [
    "| victim | protection | seeds | per-seed difference | mean | 95% interval | verdict |",
    "|---|---|---|---|---:|---|---|",
  ]
  for r in rows:
    if r["kind"] == "unpaired":
      seeds = f"clean {r['clean_seeds']}, {r['method']} {r['method_seeds']}"
      per_seed, interval = "—", "unpaired (difference of means), no interval"
    else:
      seeds = ", ".join(map(str, r["seeds"]))
      per_seed = ", ".join(f"{100 * d:+.2f}" for d in r["per_seed"])
      interval = (
        "n=1, no interval"
        if r["kind"] == "single"
        else f"[{100 * r['lo']:+.2f}, {100 * r['hi']:+.2f}]"
      )
    out.append(
      f"| {VICTIMS.get(r['victim'], r['victim'])} | {r['method']} | {seeds} | {per_seed} | "
      f"{100 * r['mean']:+.2f} | {interval} | {r['verdict']} |"
    )
  return "\n".join(out)


def _secs(t: float) -> str:
  return f"{t:.0f}" if t >= 10 else f"{t:.1f}"


def _wall_table(sources: Sequence[dict]) -> str:
  out = [
    "| source | device | wall time (s) | victim training train_s (s) | generation generate_s (s) |",
    "|---|---|---:|---|---|",
  ]
  for s in sources:
    p = s["provenance"]
    device = f"{p['device_kind'] or '?'} x{p['device_count'] or '?'}"
    wall = "—" if p["wall_time_s"] is None else f"{float(p['wall_time_s']):.0f}"
    train = ", ".join(f"{m}/{v} s{seed}: {_secs(t)}" for (m, v, seed), t in s["train_s"].items())
    gen = ", ".join(f"{m} s{seed}: {_secs(t)}" for (m, seed), t in s["generate_s"].items())
    out.append(f"| {s['src']} | {device} | {wall} | {train or '—'} | {gen or '—'} |")
  return "\n".join(out)


def merge(srcs: Sequence[str], out: str) -> dict:
  """Merges the sources into `out` (table.md, results.json); returns the merged results.

  Raises:
    DataError: no sources, a source that is not a finished unlearnable run, configs that differ,
      a cell given twice, or `out` that is a source or holds a run's results.json.
  """
  if not srcs:
    raise ConfigError(f"no sources given; {USAGE}")
  if os.path.abspath(out) in {os.path.abspath(s) for s in srcs}:
    raise DataError(f"--out {out} is one of the sources; choose a new folder")
  existing = workdir_lib.read_json(os.path.join(out, "results.json"))
  if existing is not None and not (isinstance(existing, dict) and "merged_from" in existing):
    raise DataError(f"--out {out} holds a run's results.json; choose a new folder")
  sources = []
  for src in srcs:
    try:
      sources.append(_source(src))
    except (KeyError, TypeError, ValueError, IndexError) as e:  # a file of another layout
      raise DataError(f"{src} cannot be read as an unlearnable run ({e!r})") from None
  absent = check_configs(sources)
  notes = []
  if absent:
    notes.append(f"config keys absent from some sources (older code), not compared there: {absent}")
  given: dict = {}
  cells: dict = {}
  for s in sources:
    for (m, v, seed), cell in s["cells"].items():
      if (m, v, seed) in given:
        raise DataError(
          f"cell {m}/{v} seed {seed} is in both {given[m, v, seed]} and {s['src']}; "
          "give each (method, victim, seed) once"
        )
      given[m, v, seed] = s["src"]
      cells.setdefault(m, {}).setdefault(v, {})[seed] = cell
  methods = _order([m for s in sources for m in s["methods"]], METHOD_ORDER)
  victims = _order([v for (_, v, _) in given], list(VICTIMS))
  seeds = sorted({seed for (_, _, seed) in given})

  # The gates of the newest source config (results.json written last; later on the line on a tie).
  with_gates = [s for s in sources if s["config"].get("gates")]
  newest = max(reversed(with_gates), key=lambda s: s["mtime"], default=None)
  gate_config = {"gates": newest["config"]["gates"] if newest else {}}
  if any(s["config"]["gates"] != gate_config["gates"] for s in with_gates):
    notes.append(f"the sources' gates differ; those of {newest['src']} (the newest) are used")
  per_seed = {
    seed: {m: {v: c[seed] for v, c in row.items() if seed in c} for m, row in cells.items()}
    for seed in seeds
  }
  gates = gate_check(gate_config, per_seed)
  allowed = column_verdicts(gates, victims)
  gates["verdict"] = all(allowed.values())  # every column of this table may give verdicts
  rows = paired_rows(cells, methods, victims, allowed)
  summary = {
    which: {
      m: {v: _summary([c[which] for c in row[v].values()]) for v in victims if v in row}
      for m, row in cells.items()
    }
    for which in ("final", "peak")
  }
  num_classes = next((s["num_classes"] for s in sources if s["num_classes"]), None)
  chance = f", chance {100 / num_classes:.1f}%" if num_classes else ""
  gate_text = gate_lines({"gates": gates["gates"], "verdict": True})
  if gates["gates"]:
    blocked = [VICTIMS.get(v, v) for v in victims if not allowed[v]]
    gate_text.append(
      "All gates met: verdicts are given."
      if not blocked
      else f"Not every gate is met: no verdict in the columns {', '.join(blocked)}."
    )
  lines = [
    f"# Unlearnable examples: victim matrix merged from {len(sources)} sources",
    "",
    *([f"Notes: {'; '.join(notes)}.", ""] if notes else []),
    *gate_text,
    *([""] if gate_text else []),
    f"Clean-test accuracy (%), final epoch, mean ± std (ddof 1) over seeds (n = seeds){chance}:",
    "",
    _matrix(summary["final"], methods, victims),
    "",
    "Peak clean-test accuracy over training (%), mean ± std (ddof 1) over seeds:",
    "",
    _matrix(summary["peak"], methods, victims),
    "",
    "Paired differences, clean minus protected final accuracy (percentage points), over the "
    "seeds both ran; interval: 95% percentile bootstrap over seeds (shared.stats.bootstrap_paired)"
    "; 'lowers accuracy' when it lies above 0:",
    "",
    _paired_table(rows) if rows else "(no method with a clean run of the same victim)",
    "",
    "Wall time per source:",
    "",
    _wall_table(sources),
  ]
  text = "\n".join(lines) + "\n"
  merged = {
    "method": "unlearnable",
    "cells": {
      m: {v: {str(s): c for s, c in sorted(row[v].items())} for v in row}
      for m, row in cells.items()
    },
    "metrics": {
      "final": summary["final"],
      "peak": summary["peak"],
      "std_ddof": 1,
      "num_classes": num_classes,
      "gates": gates,
      "paired": rows,
    },
    "methods": methods,
    "victims": victims,
    "seeds": seeds,
    "gates_from": newest["src"] if newest else None,
    "notes": notes,
    "merged_from": [s["provenance"] for s in sources],
    "merged_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
  }
  os.makedirs(out, exist_ok=True)
  workdir_lib.write_text(os.path.join(out, "table.md"), text)
  workdir_lib.write_json(os.path.join(out, "results.json"), merged)
  gate_word = "gates met" if gates["verdict"] else "a gate not met: no verdicts"
  title = f"final clean-test accuracy (%); {gate_word}" if gates["gates"] else "final accuracy (%)"
  save_heatmap(
    os.path.join(out, "victim_matrix.png"),
    summary["final"],
    methods,
    victims,
    1 / num_classes if num_classes else None,
    title,
  )
  merged["table"] = text
  return merged


def main(argv: Sequence[str] | None = None) -> int:
  parser = cli.ArgumentParser(
    prog="python -m unlearnable.merge",
    usage=USAGE.removeprefix("usage: "),
    description=__doc__.split("\n")[0],
  )
  parser.add_argument("sources", nargs="*", metavar="SRC", help="workdirs or *.results.json files")
  parser.add_argument("--out", required=True, help="folder for table.md and results.json")
  args = parser.parse_args(argv)
  merged = merge(args.sources, args.out)
  print(merged["table"], end="")
  print(
    f"unlearnable.merge: {len(args.sources)} sources -> {args.out}/table.md, results.json, "
    "victim_matrix.png"
  )
  return 0


if __name__ == "__main__":
  sys.exit(cli.guarded(main))
