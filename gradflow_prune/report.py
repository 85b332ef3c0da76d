"""The claim summary of a run, and pooled runs: `python -m gradflow_prune.report RUN_DIR...`.

`summarize` / `claim` / `write_summary` are what `train.train_and_evaluate` reports with.

For runs of one config split over processes or machines (e.g. one seed per process, each in its
own workdir): their rows become one mean ± std table per keep ratio x procedure x criterion, and
the paper's claim is checked on the pooled means and on the paired differences per seed with
bootstrap intervals (`stats.paired_bootstrap`). Everything printed comes from the runs'
`results.json`. Each run's FD uses its own feature classifier, so the teachers' FDs are listed.
A missing, foreign or corrupt run folder: one line `error: ...`, exit code 2 (`shared.cli`).
"""

from __future__ import annotations

import os
import sys

import numpy as np

from gradflow_prune import evaluate, gate, stats
from shared import cli
from shared.errors import CheckpointError, DataError
from shared.report import check_one_experiment, flatten, mean_std_table
from shared.workdir import read_run_results, write_text

COLUMNS = ["fd", "ssim", "params", "macs", "latency_s"]
GROUP = ["keep_ratio", "procedure", "criterion"]


def arm(row) -> str:
  return f"keep{row['keep_ratio']:g}/{row['procedure']}/{row['criterion']}"


def by_arm(rows) -> dict[str, list[dict]]:
  out = {}
  for r in rows:
    out.setdefault(arm(r), []).append(r)
  return out


def mean_curve(rows) -> dict[str, dict]:
  """Fine-tune step -> mean FD, SSIM (and n) over the rows' `convergence` points."""
  points = {}
  for r in rows:
    for p in r.get("convergence", ()):
      points.setdefault(int(p["finetune_step"]), []).append(p)
  return {
    str(step): {
      "fd": float(np.mean([p["fd"] for p in ps])),
      "ssim": float(np.mean([p["ssim"] for p in ps])),
      "train_steps": int(ps[0].get("train_steps", step)),
      "n": len(ps),
    }
    for step, ps in sorted(points.items())
  }


def convergence(rows) -> dict[str, dict]:
  """results.json `convergence`: per run label, fine-tune step -> {fd, ssim, train_steps}."""
  return {
    r["label"]: {
      str(p["finetune_step"]): {k: p[k] for k in ("fd", "ssim", "train_steps") if k in p}
      for p in r.get("convergence", ())
    }
    for r in rows
    if "label" in r
  }


def summarize(rows, teacher_row) -> dict:
  """Per keep ratio x procedure x criterion: means of COLUMNS, std of FD and SSIM, n, speedup,
  and the mean convergence curve."""
  return {
    name: {
      **{k: float(np.mean([r[k] for r in rs])) for k in COLUMNS},
      **{f"{k}_std": float(np.std([r[k] for r in rs])) for k in ("fd", "ssim")},
      "n": len(rs),
      "speedup": teacher_row["latency_s"] / float(np.mean([r["latency_s"] for r in rs])),
      **({"convergence": mean_curve(rs)} if any("convergence" in r for r in rs) else {}),
    }
    for name, rs in by_arm(rows).items()
  }


# (challenger, baseline): the paper's claim first, then iterative Taylor (the procedure alone).
COMPARISONS = (("iterative/grasp", "oneshot/taylor"), ("iterative/taylor", "oneshot/taylor"))


def paired(rows, ours: str, base: str) -> dict | None:
  """Paired (per seed) differences ours - base of FD and SSIM, with bootstrap 95% intervals, at
  the end of fine-tuning and at every convergence step both arms have."""
  arms = by_arm(rows)
  if ours not in arms or base not in arms:
    return None
  out = {}
  for key, better in (("fd", "lower"), ("ssim", "higher")):
    a, b, seeds = stats.pair_by_seed(arms[ours], arms[base], key)
    if not seeds:
      return None
    ci = stats.paired_bootstrap(a, b)
    out[key] = {**ci, "seeds": seeds, "verdict": stats.verdict(ci, better)}
  curves = {}
  steps = lambda rs: [{int(p["finetune_step"]) for p in r.get("convergence", ())} for r in rs]
  common = set.intersection(*steps(arms[ours]), *steps(arms[base])) if arms[ours] else set()
  for step in sorted(common):
    at = lambda rs: [
      {"seed": r["seed"], **next(p for p in r["convergence"] if p["finetune_step"] == step)}
      for r in rs
    ]
    point = {}
    for key in ("fd", "ssim"):
      a, b, _ = stats.pair_by_seed(at(arms[ours]), at(arms[base]), key)
      point[key] = stats.paired_bootstrap(a, b)
    curves[str(step)] = point
  if curves:
    out["convergence"] = curves
  return out


NO_VERDICT = "none (teacher gate not met)"


def _withhold(d: dict) -> None:
  """A paired difference's verdicts, replaced: the teacher missed its gate."""
  for key in ("fd", "ssim"):
    d[key]["verdict"] = NO_VERDICT


def claim(summary: dict, keep_ratios, rows=(), teacher_gate: dict | None = None) -> dict:
  """The paper's claim at each keep ratio: iterative gradient-flow (grasp) pruning has lower FD and
  higher SSIM to the teacher than one-shot Taylor (Diff-Pruning), at equal MACs and steps; with
  `rows`, also the paired differences (per seed) with bootstrap intervals and their verdicts
  (withheld when `teacher_gate` is given and not met)."""
  withheld = teacher_gate is not None and not teacher_gate["met"]
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
        **({"teacher_gate_met": bool(teacher_gate["met"])} if teacher_gate is not None else {}),
      }
      for challenger, baseline in COMPARISONS:
        diff = paired(rows, f"keep{keep:g}/{challenger}", f"keep{keep:g}/{baseline}")
        if diff and withheld:
          _withhold(diff)
        if diff:
          name = f"paired_{challenger.replace('/', '_')}_minus_{baseline.replace('/', '_')}"
          out[f"keep{keep:g}"][name] = diff
  return out


def _ci(c: dict) -> str:
  return f"{c['mean']:+.4g} [{c['lo']:+.4g}, {c['hi']:+.4g}]"


def claim_lines(claims: dict) -> list[str]:
  """The claim check in words: pooled means, then each paired difference with its interval."""
  out = []
  for keep, c in claims.items():
    out.append(
      f"Claim at {keep} (pooled means): iterative grasp FD {c['fd_iterative_grasp']:.4g} vs "
      f"one-shot Taylor {c['fd_oneshot_taylor']:.4g} (lower FD: {c['lower_fd']}); SSIM "
      f"{c['ssim_iterative_grasp']:.4g} vs {c['ssim_oneshot_taylor']:.4g} (higher SSIM: "
      f"{c['higher_ssim']})."
    )
    for name, d in c.items():
      if not name.startswith("paired_"):
        continue
      what = name[len("paired_") :].replace("_minus_", " - ").replace("_", " ")
      out.append(
        f"  {what}, paired over seeds {d['fd']['seeds']} (mean [95% bootstrap CI]): FD "
        f"{_ci(d['fd'])} ({d['fd']['verdict']}), SSIM {_ci(d['ssim'])} ({d['ssim']['verdict']})."
      )
  return out


def write_summary(
  workdir: str,
  rows,
  teacher_row: dict,
  data_fd: float,
  features: str,
  claims: dict | None = None,
  teacher_gate: dict | None = None,
) -> None:
  """fd_vs_macs.png, convergence.png and summary.md (the mean +- std table, the teacher gate and
  the claim) in `workdir` (process 0)."""
  evaluate.plot_fd_vs_macs(rows, os.path.join(workdir, "fd_vs_macs.png"), teacher=teacher_row)
  curves = {name: mean_curve(rs) for name, rs in by_arm(rows).items()}
  evaluate.plot_convergence(curves, os.path.join(workdir, "convergence.png"), teacher=teacher_row)
  lines = "\n".join([*gate.lines(teacher_gate), *claim_lines(claims or {})])
  text = (
    f"Teacher: FD {teacher_row['fd']:.4g}, params {teacher_row['params']}, MACs "
    f"{teacher_row['macs']:.4g}, latency {teacher_row['latency_s']:.4g} s. "
    f"Data floor FD {data_fd:.4g} ({features}).\n\n{mean_std_table(rows, GROUP, COLUMNS)}\n"
    f"\n{lines}\n"
  )
  write_text(os.path.join(workdir, "summary.md"), text, every_process=True)  # caller: process 0


ROW_KEYS = ("keep_ratio", "procedure", "criterion", "seed", *COLUMNS)


def _load(workdir: str) -> dict:
  """A finished gradflow_prune run's results.json (DataError / CheckpointError otherwise)."""
  run = read_run_results(workdir, "gradflow_prune", needs=("rows", "teacher"))
  path = os.path.join(workdir, "results.json")
  rows = run["metrics"]["rows"]
  if not isinstance(rows, list):
    raise CheckpointError(f"{path}: metrics.rows is not a list (corrupt or foreign)")
  for r in rows:
    missing = [k for k in ROW_KEYS if not isinstance(r, dict) or k not in r]
    if missing:
      raise CheckpointError(f"{path}: a row lacks {', '.join(missing)} (corrupt or foreign)")
  return run


# Keys pooled runs may differ in: which arms and seeds each ran, where its teacher file lay, how it
# ran (`run.*`); everything else (data, model, schedule, budgets, evaluation) must agree.
POOL_FREE = ("seeds", "seed", "stage", "run", "teacher")
POOL_FREE_KEYS = (
  "prune.criteria",
  "prune.iterative_criteria",
  "prune.ablations",
  "prune.keep_ratios",
)


def _pool_compares(source: dict, key: str) -> bool:
  return key.split(".")[0] not in POOL_FREE and key not in POOL_FREE_KEYS


def render(*workdirs: str) -> str:
  runs = [_load(w) for w in workdirs]
  note = check_one_experiment(
    [
      {"src": w, "flat": flatten(run.get("config") or {}, sep=".")}
      for w, run in zip(workdirs, runs, strict=True)
    ],
    _pool_compares,
  )
  rows = [r for run in runs for r in run["metrics"]["rows"]]
  keys = [(r["keep_ratio"], r["procedure"], r["criterion"], r["seed"]) for r in rows]
  if len(set(keys)) != len(keys):
    raise DataError(f"runs {', '.join(workdirs)} repeat a (keep, procedure, criterion, seed)")
  out = []
  for w, run in zip(workdirs, runs, strict=True):
    m, dev = run["metrics"], run.get("devices", {})
    seeds = sorted({r["seed"] for r in m["rows"]})
    out.append(
      f"- `{w}`: variant `{run.get('variant')}`, seeds {seeds}, {dev.get('count')} x "
      f"{dev.get('kind')}, wall time {run.get('wall_time_s')} s; teacher FD "
      f"{m['teacher_fd']:.4g} (data floor {m['data_fd']:.4g}), latency "
      f"{m['teacher']['latency_s']:.4g} s.{_recognition(m['teacher'])}"
    )
    out += [f"  {line}" for line in gate.lines(m.get("teacher_gate"))]
  if note:
    out.append(f"Config keys absent from some runs (older code), not compared there: {note}.")
  out += ["", mean_std_table(rows, GROUP, COLUMNS), ""]
  summary = summarize(rows, runs[0]["metrics"]["teacher"])
  keeps = sorted({r["keep_ratio"] for r in rows}, reverse=True)
  gates = [run["metrics"].get("teacher_gate") for run in runs]
  # Pooled: verdicts only when every run's teacher passed its gate (runs before the gate: none).
  pooled_gate = {"met": all(g is not None and g["met"] for g in gates)}
  if not pooled_gate["met"]:
    out.append("Not every run's teacher passed its gate: no verdict from these runs.")
  out += claim_lines(claim(summary, keeps, rows, pooled_gate))
  return "\n".join(out) + "\n"


USAGE = "usage: python -m gradflow_prune.report RUN_DIR [RUN_DIR ...]"


def _recognition(teacher: dict) -> str:
  """' Judge: ...' when the run scored its samples with a fixed judge (eval.judge), else ''."""
  if "judge_confidence" not in teacher:
    return ""
  return (
    f" Judge on the teacher's samples: mean confidence {teacher['judge_confidence']:.3f}, "
    f"class histogram {teacher['judge_histogram']}."
  )


def main(argv=None) -> int:
  runs = cli.run_folders(argv, USAGE, __doc__.strip().splitlines()[0])
  if runs is None:
    return 0
  print(render(*runs), end="")
  return 0


if __name__ == "__main__":
  sys.exit(cli.guarded(main))
