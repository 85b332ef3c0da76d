"""Collect every run's results.json and figures under a runs folder into one markdown report.

  python -m shared.report runs/            # writes runs/REPORT.md

A run is a folder holding a `results.json` written by the app (keys used when present: 'method',
'config', 'metrics', 'seed', 'versions', 'devices', 'wall_time_s'; anything may be missing). The
report has one section per method: a table of runs x scalar metrics (with the config fields that
differ between its runs), a table per "per-row" metric group (e.g. one row per leave-one-out
protocol), "mean ± std" over seeds where runs repeat a config, and every PNG of the run embedded
by relative path. `mean_std_table` is also what the methods' docs tables use.
"""

import argparse
import json
import math
import os
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from shared.errors import DataError, UserError

REPORT_NAME = "REPORT.md"
RESULTS_NAME = "results.json"
MAX_METRIC_COLUMNS = 10  # wider tables are split so that they stay readable
MAX_CONFIG_COLUMNS = 6
# A row is labelled by every one of these it has, joined: "mcae | OCI->M".
_ROW_LABEL_KEYS = ("method", "name", "label", "protocol", "target", "domain", "split")


# ------------------------------------------------------------------------------------------------
# Formatting.


def _is_number(x: Any) -> bool:
  return isinstance(x, int | float) and not isinstance(x, bool)


def format_number(x: Any) -> str:
  """Integers as is; floats to 4 significant digits, scientific outside [1e-3, 1e5)."""
  if isinstance(x, bool) or not _is_number(x):
    return "" if x is None else str(x)
  if isinstance(x, int):
    return str(x)
  if math.isnan(x) or math.isinf(x):
    return str(x)
  a = abs(x)
  if a == 0:
    return "0"
  if a >= 1e5 or a < 1e-3:
    return f"{x:.3e}"
  return f"{x:.4g}"


def format_mean_std(values: Sequence[float], precision: int | None = None) -> str:
  """ "mean ± std" (sample std, ddof=1), decimals set by the std's 2 significant digits."""
  values = [float(v) for v in values]
  if not values:
    return "—"
  mean = statistics.fmean(values)
  if len(values) == 1:
    return f"{mean:.{precision}f}" if precision is not None else format_number(mean)
  std = statistics.stdev(values)
  if precision is None:
    if std == 0 or not math.isfinite(std):
      return f"{format_number(mean)} ± {format_number(std)}"
    precision = min(max(1 - math.floor(math.log10(std)), 0), 6)
  return f"{mean:.{precision}f} ± {std:.{precision}f}"


def _format_duration(seconds: Any) -> str:
  if not _is_number(seconds):
    return ""
  s = float(seconds)
  if s < 60:
    return f"{s:.1f} s"
  if s < 3600:
    return f"{int(s // 60)}m {int(s % 60):02d}s"
  return f"{int(s // 3600)}h {int(s % 3600 // 60):02d}m"


def _describe_devices(devices: Any) -> str:
  """'8x cpu' style summary of whatever the app wrote about devices."""
  if devices is None:
    return ""
  if isinstance(devices, str):
    return devices
  if isinstance(devices, Mapping):
    kind = next((devices[k] for k in ("device_kind", "kind", "platform") if k in devices), None)
    count = next((devices[k] for k in ("count", "n", "num_devices") if k in devices), None)
    if kind is not None:
      return f"{count}x {kind}" if count is not None else str(kind)
    return ", ".join(f"{k}={v}" for k, v in devices.items() if not isinstance(v, Mapping | list))
  if isinstance(devices, list):
    kinds = Counter()
    for d in devices:
      if isinstance(d, Mapping):
        d = next((d[k] for k in ("device_kind", "kind", "platform") if k in d), "device")
      kinds[str(d)] += 1
    return ", ".join(f"{n}x {k}" for k, n in kinds.items())
  return str(devices)


def _cell(x: Any) -> str:
  return format_number(x).replace("|", "\\|").replace("\n", " ")


def _markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
  lines = [
    "| " + " | ".join(_cell(h) for h in header) + " |",
    "|" + "|".join("---" for _ in header) + "|",
  ]
  lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Reading results.


def flatten(obj: Any, prefix: str = "", sep: str = "/") -> dict[str, Any]:
  """Nested dicts -> {'a/b': leaf}; lists are kept as leaves."""
  if not isinstance(obj, Mapping):
    return {prefix: obj} if prefix else {}
  out = {}
  for k, v in obj.items():
    key = f"{prefix}{sep}{k}" if prefix else str(k)
    if isinstance(v, Mapping):
      out.update(flatten(v, key, sep))
    else:
      out[key] = v
  return out


def check_one_experiment(
  sources: Sequence[Mapping[str, Any]], compares: Callable[[Mapping[str, Any], str], bool]
) -> str:
  """Refuses runs that ran another config; returns the keys some sources lack ('' if none).

  `sources`: {"src": name, "flat": the run's config flattened to dotted keys, ...}; a key takes
  part for a source when `compares(source, key)`. Among the sources taking part, a key's values
  must agree; a source that lacks the key (older code) is listed in the returned note instead.

  Raises:
    DataError: a key whose value differs between two sources that both compare it.
  """
  keys = sorted(set().union(*(s["flat"] for s in sources)))
  notes = []
  for key in keys:
    taking_part = [s for s in sources if compares(s, key)]
    having = [s for s in taking_part if key in s["flat"]]
    if not having:
      continue
    first = having[0]
    for other in having[1:]:
      if other["flat"][key] != first["flat"][key]:
        raise DataError(
          f"config key {key!r} differs: {first['flat'][key]!r} in {first['src']} but "
          f"{other['flat'][key]!r} in {other['src']}; these runs are not one experiment"
        )
    lacking = [s["src"] for s in taking_part if key not in s["flat"]]
    if lacking:
      notes.append(f"`{key}` (absent from {', '.join(lacking)})")
  return ", ".join(notes)


def _scalar_leaves(d: Mapping) -> dict[str, Any]:
  return {k: v for k, v in flatten(d).items() if _is_number(v)}


def _as_row_table(value: Any) -> list[tuple[str, dict[str, Any]]] | None:
  """Rows (label, numbers) when `value` is a per-row metric group, else None.

  Per-row groups are a list of dicts ([{"protocol": "OCI->M", "hter": ...}, ...]) or a dict of
  at least two dicts of numbers with the same keys ({"OCI->M": {"hter": ...}, ...}).
  """
  if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
    rows = []
    for i, item in enumerate(value):
      parts = [str(item[k]) for k in _ROW_LABEL_KEYS if isinstance(item.get(k), str)]
      label = " | ".join(parts) or None
      if label is None:
        label = next((v for v in item.values() if isinstance(v, str)), str(i))
      rows.append((label, _scalar_leaves(item)))
    return rows if any(r for _, r in rows) else None
  if (
    isinstance(value, Mapping)
    and len(value) >= 2
    and all(isinstance(v, Mapping) and v for v in value.values())
  ):
    rows = [(str(k), _scalar_leaves(v)) for k, v in value.items()]
    keys = [set(r) for _, r in rows]
    if (
      keys[0]
      and all(k == keys[0] for k in keys)
      and all(len(r) == len(flatten(v)) for (_, r), v in zip(rows, value.values(), strict=True))
    ):
      return rows
  return None


def split_metrics(metrics: Any) -> tuple[dict[str, Any], dict[str, list]]:
  """(scalar metrics flattened to 'a/b' keys, {group name: [(row label, numbers)]})."""
  scalars: dict[str, Any] = {}
  tables: dict[str, list] = {}

  def walk(obj: Any, prefix: str):
    for k, v in obj.items():
      key = f"{prefix}/{k}" if prefix else str(k)
      rows = _as_row_table(v)
      if rows is not None:
        tables[key] = rows
      elif isinstance(v, Mapping):
        walk(v, key)
      elif _is_number(v):
        scalars[key] = v

  if isinstance(metrics, Mapping):
    walk(metrics, "")
  elif (rows := _as_row_table(metrics)) is not None:
    tables["metrics"] = rows
  return scalars, tables


def _load_runs(runs_dir: Path) -> tuple[list[dict], list[str]]:
  runs, problems = [], []
  for path in sorted(runs_dir.rglob(RESULTS_NAME)):
    rel = path.parent.relative_to(runs_dir).as_posix()
    try:
      results = json.loads(path.read_text())
    except (OSError, ValueError) as e:
      problems.append(f"`{path.relative_to(runs_dir).as_posix()}` could not be read: {e}")
      continue
    if not isinstance(results, Mapping):
      problems.append(f"`{path.relative_to(runs_dir).as_posix()}` is not a JSON object")
      continue
    config = results.get("config") if isinstance(results.get("config"), Mapping) else {}
    scalars, tables = split_metrics(results.get("metrics"))
    runs.append(
      dict(
        name=rel if rel != "." else runs_dir.name,
        dir=path.parent,
        results=results,
        method=str(results.get("method") or config.get("method") or "unknown method"),
        config=flatten(config, sep="."),
        metrics=scalars,
        tables=tables,
        figures=[],
      )
    )
  return runs, problems


def _attach_figures(runs_dir: Path, runs: list[dict]) -> list[Path]:
  """Give each PNG to the deepest run folder containing it; return the PNGs of no run."""
  by_dir = {run["dir"]: run for run in runs}
  orphans = []
  for png in sorted(runs_dir.rglob("*.png")):
    owner = next((by_dir[p] for p in png.parents if p in by_dir), None)
    if owner is None:
      orphans.append(png)
    else:
      owner["figures"].append(png)
  return orphans


def _image(link_base: Path, png: Path) -> str:
  rel = Path(os.path.relpath(png, link_base)).as_posix()
  return f"![{png.stem}]({quote(rel)})"


# ------------------------------------------------------------------------------------------------
# Aggregation over seeds.


def _lookup(row: Mapping, key: str) -> Any:
  """row[key], else the nested path 'a/b' or 'a.b', also under row['metrics'] / row['config']."""
  if key in row:
    return row[key]
  for scope in (row, row.get("metrics"), row.get("config")):
    if not isinstance(scope, Mapping):
      continue
    if key in scope:
      return scope[key]
    for sep in ("/", "."):
      obj: Any = scope
      for part in key.split(sep):
        obj = obj.get(part) if isinstance(obj, Mapping) else None
      if obj is not None:
        return obj
  return None


def aggregate(
  rows: Iterable[Mapping], group_by: str | Sequence[str], metrics: Sequence[str]
) -> list[dict[str, Any]]:
  """Group rows by the `group_by` values and collect each metric's numbers per group.

  Returns one dict per group, in order of first appearance: the group values under their keys,
  'n' (rows in the group) and, per metric, the list of its numeric values under the metric name.
  Keys are looked up as in `_lookup` (flat key, 'a/b' or 'a.b' path, or inside 'metrics' /
  'config'), so both flat rows and loaded results.json dicts work.
  """
  group_by = [group_by] if isinstance(group_by, str) else list(group_by)
  groups: dict[tuple, dict[str, Any]] = {}
  for row in rows:
    key = tuple(_lookup(row, g) for g in group_by)
    hashable = tuple(json.dumps(k, sort_keys=True, default=str) for k in key)
    group = groups.setdefault(
      hashable, dict(zip(group_by, key, strict=True), n=0, **{m: [] for m in metrics})
    )
    group["n"] += 1
    for m in metrics:
      v = _lookup(row, m)
      if _is_number(v):
        group[m].append(float(v))
  return list(groups.values())


def mean_std_table(
  rows: Iterable[Mapping],
  group_by: str | Sequence[str],
  metrics: Sequence[str],
  *,
  precision: int | None = None,
  labels: Mapping[str, str] | None = None,
) -> str:
  """Markdown table: one row per group (e.g. method x variant), "mean ± std" over its runs.

  Args:
    rows: one mapping per run (flat dicts, or results.json contents).
    group_by: key(s) whose values define a group; the seed is what varies inside one.
    metrics: metric keys, one column each.
    precision: fixed decimals; by default set by each std's two significant digits.
    labels: optional column titles for group and metric keys.

  Returns:
    The table; cells are "mean ± std" (sample std), just the value for one run, "—" for none.
  """
  labels = labels or {}
  group_by = [group_by] if isinstance(group_by, str) else list(group_by)
  groups = aggregate(rows, group_by, metrics)
  header = [labels.get(k, k) for k in group_by] + ["n"] + [labels.get(m, m) for m in metrics]
  body = [
    [format_number(g[k]) for k in group_by]
    + [str(g["n"])]
    + [format_mean_std(g[m], precision) for m in metrics]
    for g in groups
  ]
  return _markdown_table(header, body)


# ------------------------------------------------------------------------------------------------
# The report.


def _ordered_union(dicts: Iterable[Mapping]) -> list[str]:
  return list(dict.fromkeys(k for d in dicts for k in d))


def _varying_config_keys(runs: list[dict]) -> list[str]:
  per_run = ("seed", "method", "workdir")  # differ between runs without defining a variant
  keys = [
    k for k in _ordered_union(r["config"] for r in runs) if k.rsplit(".", 1)[-1] not in per_run
  ]
  varying = [
    k
    for k in keys
    if len({json.dumps(r["config"].get(k), sort_keys=True, default=str) for r in runs}) > 1
  ]
  return varying[:MAX_CONFIG_COLUMNS]


def _method_section(link_base: Path, method: str, runs: list[dict]) -> list[str]:
  out = [f"## {method}", ""]
  out.append(f"{len(runs)} run{'s' if len(runs) != 1 else ''}.")
  versions = {
    json.dumps(r["results"]["versions"], sort_keys=True)
    for r in runs
    if isinstance(r["results"].get("versions"), Mapping)
  }
  for v in sorted(versions):
    out.append("Versions: " + ", ".join(f"{k} {val}" for k, val in json.loads(v).items()) + ".")
  out.append("")

  config_keys = _varying_config_keys(runs)
  metric_keys = _ordered_union(r["metrics"] for r in runs)
  info = ["run", "seed"] + config_keys
  chunks = [
    metric_keys[i : i + MAX_METRIC_COLUMNS] for i in range(0, len(metric_keys), MAX_METRIC_COLUMNS)
  ] or [[]]
  for i, chunk in enumerate(chunks):
    extra = ["devices", "wall time"] if i == len(chunks) - 1 else []
    rows = []
    for r in runs:
      res = r["results"]
      row = [r["name"], res.get("seed", r["config"].get("seed"))]
      row += [r["config"].get(k) for k in config_keys]
      row += [r["metrics"].get(m) for m in chunk]
      if extra:
        row += [_describe_devices(res.get("devices")), _format_duration(res.get("wall_time_s"))]
      rows.append(row)
    out += [_markdown_table(info + chunk + extra, rows), ""]
  if not metric_keys:
    out += ["No scalar metrics in these runs.", ""]

  for table in _ordered_union(r["tables"] for r in runs):
    columns = _ordered_union(dict(row) for r in runs for _, row in r["tables"].get(table, []))
    rows = [
      [r["name"], label] + [values.get(c) for c in columns]
      for r in runs
      for label, values in r["tables"].get(table, [])
    ]
    out += [f"### {table}", "", _markdown_table(["run", "row"] + columns, rows), ""]

  # Repeated configs (different seeds): mean ± std per config (the varying fields above).
  config_of = lambda r: {f"config.{k}": r["config"].get(k) for k in config_keys}
  group_keys = [f"config.{k}" for k in config_keys] or ["_method"]
  labels = {f"config.{k}": k for k in config_keys} | {"_method": "method", "_row": "row"}
  configs = [dict(config_of(r), _method=method) for r in runs]
  if any(g["n"] > 1 for g in aggregate(configs, group_keys, [])):
    out += ["### Mean ± std over seeds", ""]
    if metric_keys:
      flat = [dict(r["metrics"], **c) for r, c in zip(runs, configs, strict=True)]
      out += [mean_std_table(flat, group_keys, metric_keys, labels=labels), ""]
    for table in _ordered_union(r["tables"] for r in runs):
      flat = [
        dict(values, _row=label, **c)
        for r, c in zip(runs, configs, strict=True)
        for label, values in r["tables"].get(table, [])
      ]
      columns = _ordered_union(r for r in flat)
      columns = [k for k in columns if k not in group_keys and k not in ("_row", "_method")]
      out += [
        f"**{table}**",
        "",
        mean_std_table(flat, group_keys + ["_row"], columns, labels=labels),
      ]
      out += [""]

  for r in runs:
    if r["figures"]:
      out += [f"### Figures: {r['name']}", ""]
      out += [_image(link_base, png) + "\n" for png in r["figures"]]
  return out


def render_report(runs_dir: str | Path, link_base: str | Path | None = None) -> str:
  """The report's markdown for a runs folder (see the module docstring).

  Image links are relative to `link_base`, the folder the report will be written to (default
  `runs_dir`).
  """
  runs_dir = Path(runs_dir)
  link_base = Path(link_base) if link_base is not None else runs_dir
  if not runs_dir.is_dir():
    raise UserError(f"runs folder not found: {runs_dir}")
  runs, problems = _load_runs(runs_dir)
  orphans = _attach_figures(runs_dir, runs)
  out = ["# Report", "", f"Runs under `{runs_dir.as_posix()}`: {len(runs)}.", ""]
  if not runs:
    out += [f"No results found: no `{RESULTS_NAME}` under this folder.", ""]
  by_method: dict[str, list[dict]] = {}
  for run in runs:
    by_method.setdefault(run["method"], []).append(run)
  for method in sorted(by_method):
    out += _method_section(link_base, method, by_method[method])
  if orphans:
    out += ["## Other figures", ""] + [_image(link_base, png) + "\n" for png in orphans]
  if problems:
    out += ["## Problems", ""] + [f"- {p}" for p in problems] + [""]
  return "\n".join(out).rstrip() + "\n"


def write_report(runs_dir: str | Path, output: str | Path | None = None) -> Path:
  """Write the report (default `<runs_dir>/REPORT.md`, where its image links are relative)."""
  path = Path(output) if output is not None else Path(runs_dir) / REPORT_NAME
  text = render_report(runs_dir, link_base=path.parent)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  return path


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m shared.report", description="Write REPORT.md for a runs folder."
  )
  parser.add_argument("runs_dir", nargs="?", default="runs", help="folder of runs (default: runs)")
  parser.add_argument("-o", "--output", help=f"report path (default: <runs_dir>/{REPORT_NAME})")
  args = parser.parse_args(argv)
  path = write_report(args.runs_dir, args.output)
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  try:
    sys.exit(main())
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
