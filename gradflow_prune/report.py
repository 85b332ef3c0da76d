"""The claim summary of a run, and pooled runs: `python -m gradflow_prune.report RUN_DIR...`.

`summarize` / `claim` / `write_summary` are what `train.train_and_evaluate` reports with.

For runs of one config split over processes or machines (e.g. one seed per process, each in its
own workdir): their rows become one mean ± std table per keep ratio x procedure x criterion, and
the paper's claim is checked on the pooled means. Everything printed comes from the runs'
`results.json`. Each run's FD uses its own feature classifier, so the teachers' FDs are listed.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from gradflow_prune import evaluate
from shared.report import mean_std_table

COLUMNS = ["fd", "ssim", "params", "macs", "latency_s"]
GROUP = ["keep_ratio", "procedure", "criterion"]


def summarize(rows, teacher_row) -> dict:
  """Per keep ratio x procedure x criterion: means of COLUMNS, std of FD and SSIM, n, speedup."""
  out = {}
  for r in rows:
    out.setdefault(f"keep{r['keep_ratio']:g}/{r['procedure']}/{r['criterion']}", []).append(r)
  return {
    name: {
      **{k: float(np.mean([r[k] for r in rs])) for k in COLUMNS},
      **{f"{k}_std": float(np.std([r[k] for r in rs])) for k in ("fd", "ssim")},
      "n": len(rs),
      "speedup": teacher_row["latency_s"] / float(np.mean([r["latency_s"] for r in rs])),
    }
    for name, rs in out.items()
  }


def claim(summary: dict, keep_ratios) -> dict:
  """The paper's claim at each keep ratio: iterative gradient-flow (grasp) pruning has lower FD and
  higher SSIM to the teacher than one-shot Taylor (Diff-Pruning), at equal MACs and steps."""
  out = {}
  for keep in keep_ratios:
    ours = summary.get(f"keep{keep:g}/iterative/grasp")
    base = summary.get(f"keep{keep:g}/oneshot/taylor")
    if ours and base:
      out[f"keep{keep:g}"] = {
        "fd_iterative_grasp": ours["fd"],
        "fd_oneshot_taylor": base["fd"],
        "ssim_iterative_grasp": ours["ssim"],
        "ssim_oneshot_taylor": base["ssim"],
        "lower_fd": bool(ours["fd"] < base["fd"]),
        "higher_ssim": bool(ours["ssim"] > base["ssim"]),
      }
  return out


def write_summary(workdir: str, rows, teacher_row: dict, data_fd: float, features: str) -> None:
  """fd_vs_macs.png and summary.md (the mean +- std table) in `workdir` (process 0)."""
  evaluate.plot_fd_vs_macs(rows, os.path.join(workdir, "fd_vs_macs.png"), teacher=teacher_row)
  with open(os.path.join(workdir, "summary.md"), "w") as f:
    f.write(
      f"Teacher: FD {teacher_row['fd']:.4g}, params {teacher_row['params']}, MACs "
      f"{teacher_row['macs']:.4g}, latency {teacher_row['latency_s']:.4g} s. "
      f"Data floor FD {data_fd:.4g} ({features}).\n\n{mean_std_table(rows, GROUP, COLUMNS)}\n"
    )


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
  out += ["", mean_std_table(rows, GROUP, COLUMNS), ""]
  summary = summarize(rows, runs[0]["metrics"]["teacher"])
  keeps = sorted({r["keep_ratio"] for r in rows}, reverse=True)
  for keep, c in claim(summary, keeps).items():
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
