"""One table from several finished MCAE workdirs that ran the same config with different seeds.

  python -m mcae.merge --out runs/mcae_cmp runs/mcae_cmp_s0 runs/mcae_cmp_s1 runs/mcae_cmp_s2

Seeds are independent sub-runs, so they can run as separate processes (one per GPU, or several
sharing one GPU that a single small-model process leaves idle), each with
`--config.seeds="(s,)"` and its own workdir; this writes what one run over all the seeds would
have written (`table.md`, ROC figures, `runs.json`, `results.json` with `merged_from`) into
`--out`. The sources must hold finished runs (`results.json`) whose configs agree on everything
but `seeds`, with no seed run twice; otherwise it stops with one line and exit code 2.
`--partial` also takes unfinished workdirs (a GPU lease that ended mid-run): the tables then
hold the protocols every method finished for every seed, and `missing_protocols` names the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

import ml_collections

from mcae.protocols import parse_protocols
from mcae.subrun import subrun_folder
from mcae.train import _info, write_outputs
from shared import workdir as workdir_lib
from shared.errors import ConfigError, UserError
from shared.workdir import read_result


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    where = os.path.dirname(path)
    raise ConfigError(f"{path} is missing: is {where} a finished mcae run?") from None
  except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ConfigError(f"{path} is unreadable ({e})") from None


def _source(src: str, partial: bool) -> dict:
  """{"config", "results" (None when unfinished and `partial`)} of one source workdir."""
  path = os.path.join(src, "results.json")
  if not partial or os.path.exists(path):
    results = _read_json(path)
    if results.get("method") != "mcae":
      raise ConfigError(f"{src} holds a {results.get('method')!r} run, not mcae")
    return {"config": results["config"], "results": results}
  config = _read_json(os.path.join(src, "config.json"))
  if config.get("method") != "mcae":
    raise ConfigError(f"{src} holds a {config.get('method')!r} run, not mcae")
  return {"config": config, "results": None}


def _finished_runs(src: str, config, protocols) -> list[dict]:
  """The sub-run results an unfinished workdir holds (`subrun.json` of each finished one)."""
  out = []
  for seed in config.seeds:
    for proto in protocols:
      for spec in config.methods:
        result = read_result(os.path.join(subrun_folder(src, seed, proto, spec), "subrun.json"))
        if result is not None:
          out.append(result)
  return out


def merge(sources: Sequence[str], out: str, partial: bool = False) -> dict:
  """Merges the runs in `sources` into `out`; returns the merged results.json.

  With `partial`, unfinished sources count too (their finished sub-runs), and only protocols
  that every method finished for every seed enter the tables (the rest are listed in
  `missing_protocols`).
  """
  if not sources:
    raise ConfigError("no source workdirs given")
  if os.path.abspath(out) in {os.path.abspath(s) for s in sources}:
    raise ConfigError(f"--out {out} is one of the sources; choose a new folder")
  found = [_source(s, partial) for s in sources]
  base = {k: v for k, v in found[0]["config"].items() if k != "seeds"}
  for src, f in zip(sources[1:], found[1:], strict=True):
    other = {k: v for k, v in f["config"].items() if k != "seeds"}
    if other != base:
      diff = sorted(k for k in set(base) | set(other) if base.get(k) != other.get(k))
      raise ConfigError(f"{src} ran another config than {sources[0]} (differs in: {diff})")
  config = ml_collections.ConfigDict(found[0]["config"])
  protocols = parse_protocols(list(_info(config)["domains"]), config.protocols)
  seed_source: dict[int, str] = {}
  runs = []
  for src, f in zip(sources, found, strict=True):
    if f["results"] is not None:
      theirs = _read_json(os.path.join(src, "runs.json"))["runs"]
    else:
      theirs = _finished_runs(src, ml_collections.ConfigDict(f["config"]), protocols)
    for seed in {int(r["seed"]) for r in theirs} | {int(s) for s in f["config"]["seeds"]}:
      if seed_source.setdefault(seed, src) != src:
        raise ConfigError(f"seed {seed} ran in both {seed_source[seed]} and {src}")
    runs += theirs
  seeds = sorted(seed_source)
  done = {(int(r["seed"]), r["protocol"], r["method"]) for r in runs}
  complete = [
    p for p in protocols if all((s, p.name, m) in done for s in seeds for m in config.methods)
  ]
  missing = [p.name for p in protocols if p not in complete]
  if not complete:
    raise ConfigError(f"no protocol finished for every method and seed in {list(sources)}")
  runs = [r for r in runs if r["protocol"] in {p.name for p in complete}]
  config.seeds = seeds
  config.protocols = tuple(p.name for p in complete) if missing else config.protocols
  os.makedirs(out, exist_ok=True)

  def folder_of(_, seed, proto, spec):
    return subrun_folder(seed_source[int(seed)], seed, proto, spec)

  metrics = write_outputs(config, out, runs, complete, folder_of=folder_of)
  first = next((f["results"] for f in found if f["results"] is not None), None) or {}
  walls = [f["results"].get("wall_time_s") for f in found if f["results"] is not None]
  merged = {
    **{k: v for k, v in first.items() if k not in ("metrics", "config", "wall_time_s")},
    "method": "mcae",
    "variant": config.get("variant"),
    "metrics": metrics,
    "config": config.to_dict(),
    "merged_from": [
      {
        "workdir": s,
        "seeds": f["config"]["seeds"],
        "finished": f["results"] is not None,
        "wall_time_s": None if f["results"] is None else f["results"].get("wall_time_s"),
      }
      for s, f in zip(sources, found, strict=True)
    ],
    "missing_protocols": missing,
    # The sources may have run at once (one GPU each, or sharing one): the longest is the wall.
    "wall_time_s": max((float(w) for w in walls if w is not None), default=None),
    "merged_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
  }
  workdir_lib.write_json(os.path.join(out, "results.json"), merged)
  return merged


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m mcae.merge", description=__doc__.split("\n")[0])
  parser.add_argument("sources", nargs="+", help="finished mcae workdirs (one or more seeds each)")
  parser.add_argument("--out", required=True, help="folder for the merged tables and results")
  parser.add_argument(
    "--partial",
    action="store_true",
    help="also merge unfinished workdirs: the protocols every method finished for every seed",
  )
  args = parser.parse_args(argv)
  try:
    merged = merge(args.sources, args.out, partial=args.partial)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  seeds = merged["config"]["seeds"]
  missing = merged["missing_protocols"]
  note = f"; left out (unfinished): {', '.join(missing)}" if missing else ""
  print(f"mcae.merge: {len(args.sources)} workdirs, seeds {seeds} -> {args.out}/table.md{note}")


if __name__ == "__main__":
  main()
