"""Pool gradient-flow pruning runs into one table: `python -m gradflow_prune.report RUN_DIR...`.

For runs of one config split over processes or machines (e.g. one seed per process, each in its
own workdir): their rows become one mean ± std table per keep ratio x procedure x criterion, and
the paper's claim is checked on the pooled means. Everything printed comes from the runs'
`results.json`. Each run's FD uses its own feature classifier, so the teachers' FDs are listed.
"""

from __future__ import annotations

import json
import os
import sys

from gradflow_prune import train
from shared.report import mean_std_table

COLUMNS = ["fd", "ssim", "params", "macs", "latency_s"]


def _load(workdir: str) -> dict:
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    raise SystemExit(f"error: no results.json in {workdir} (the run has not finished)")
  with open(path) as f:
    return json.load(f)


def render(*workdirs: str) -> str:
  runs = [_load(w) for w in workdirs]
  rows = [r for run in runs for r in run["metrics"]["rows"]]
  keys = [(r["keep_ratio"], r["procedure"], r["criterion"], r["seed"]) for r in rows]
  if len(set(keys)) != len(keys):
    raise SystemExit(f"error: runs {workdirs} repeat a (keep, procedure, criterion, seed)")
  out = []
  for w, run in zip(workdirs, runs, strict=True):
    m, dev = run["metrics"], run.get("devices", {})
    seeds = sorted({r["seed"] for r in m["rows"]})
    out.append(
      f"- `{w}`: variant `{run.get('variant')}`, seeds {seeds}, {dev.get('count')} x "
      f"{dev.get('kind')}, wall time {run.get('wall_time_s')} s; teacher FD "
      f"{m['teacher_fd']:.4g} (data floor {m['data_fd']:.4g}), latency "
      f"{m['teacher']['latency_s']:.4g} s."
    )
  out += ["", mean_std_table(rows, ["keep_ratio", "procedure", "criterion"], COLUMNS), ""]
  teacher = runs[0]["metrics"]["teacher"]
  summary = train._summary(rows, teacher)
  keeps = sorted({r["keep_ratio"] for r in rows}, reverse=True)
  for keep, c in train._claim(summary, keeps).items():
    out.append(
      f"Claim at {keep} (pooled means): iterative grasp FD {c['fd_iterative_grasp']:.4g} vs "
      f"one-shot Taylor {c['fd_oneshot_taylor']:.4g} (lower FD: {c['lower_fd']}); SSIM "
      f"{c['ssim_iterative_grasp']:.4g} vs {c['ssim_oneshot_taylor']:.4g} (higher SSIM: "
      f"{c['higher_ssim']})."
    )
  return "\n".join(out) + "\n"


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if not argv:
    print(__doc__.strip().splitlines()[0], file=sys.stderr)
    return 2
  print(render(*argv), end="")
  return 0


if __name__ == "__main__":
  sys.exit(main())
