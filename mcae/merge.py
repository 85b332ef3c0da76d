"""One table from several finished MCAE workdirs that ran the same config with different seeds.

  python -m mcae.merge --out runs/mcae_cmp runs/mcae_cmp_s0 runs/mcae_cmp_s1 runs/mcae_cmp_s2

Seeds are independent sub-runs, so they can run as separate processes (one per GPU, or several
sharing one GPU that a single small-model process leaves idle), each with
`--config.seeds="(s,)"` and its own workdir; this writes what one run over all the seeds would
have written (`table.md`, ROC figures, `runs.json`, `results.json` with `merged_from`) into
`--out`. The sources must hold finished runs (`results.json`) whose configs agree on everything
but `seeds`, with no seed run twice; otherwise it stops with one line and exit code 2.
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


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    where = os.path.dirname(path)
    raise ConfigError(f"{path} is missing: is {where} a finished mcae run?") from None
  except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ConfigError(f"{path} is unreadable ({e})") from None


def merge(sources: Sequence[str], out: str) -> dict:
  """Merges the finished runs in `sources` into `out`; returns the merged results.json."""
  if not sources:
    raise ConfigError("no source workdirs given")
  if os.path.abspath(out) in {os.path.abspath(s) for s in sources}:
    raise ConfigError(f"--out {out} is one of the sources; choose a new folder")
  results = [_read_json(os.path.join(s, "results.json")) for s in sources]
  for src, res in zip(sources, results, strict=True):
    if res.get("method") != "mcae":
      raise ConfigError(f"{src} holds a {res.get('method')!r} run, not mcae")
  base = {k: v for k, v in results[0]["config"].items() if k != "seeds"}
  for src, res in zip(sources[1:], results[1:], strict=True):
    other = {k: v for k, v in res["config"].items() if k != "seeds"}
    if other != base:
      diff = sorted(k for k in set(base) | set(other) if base.get(k) != other.get(k))
      raise ConfigError(f"{src} ran another config than {sources[0]} (differs in: {diff})")
  seed_source: dict[int, str] = {}
  runs = []
  for src in sources:
    for run in _read_json(os.path.join(src, "runs.json"))["runs"]:
      seed = int(run["seed"])
      if seed_source.setdefault(seed, src) != src:
        raise ConfigError(f"seed {seed} ran in both {seed_source[seed]} and {src}")
      runs.append(run)
  config = ml_collections.ConfigDict({**results[0]["config"], "seeds": sorted(seed_source)})
  protocols = parse_protocols(list(_info(config)["domains"]), config.protocols)
  os.makedirs(out, exist_ok=True)

  def folder_of(_, seed, proto, spec):
    return subrun_folder(seed_source[int(seed)], seed, proto, spec)

  metrics = write_outputs(config, out, runs, protocols, folder_of=folder_of)
  merged = {
    **{k: v for k, v in results[0].items() if k not in ("metrics", "config", "wall_time_s")},
    "metrics": metrics,
    "config": config.to_dict(),
    "merged_from": [
      {"workdir": s, "seeds": r["config"]["seeds"], "wall_time_s": r.get("wall_time_s")}
      for s, r in zip(sources, results, strict=True)
    ],
    # The sources may have run at once (one GPU each, or sharing one): the longest is the wall.
    "wall_time_s": max(float(r.get("wall_time_s") or 0) for r in results),
    "merged_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
  }
  workdir_lib.write_json(os.path.join(out, "results.json"), merged)
  return merged


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m mcae.merge", description=__doc__.split("\n")[0])
  parser.add_argument("sources", nargs="+", help="finished mcae workdirs (one or more seeds each)")
  parser.add_argument("--out", required=True, help="folder for the merged tables and results")
  args = parser.parse_args(argv)
  try:
    merged = merge(args.sources, args.out)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  seeds = merged["config"]["seeds"]
  print(f"mcae.merge: {len(args.sources)} workdirs, seeds {seeds} -> {args.out}/table.md")


if __name__ == "__main__":
  main()
