"""The teacher's quality gate: a pruning comparison judges nothing against a teacher that has not
learnt the data, so its verdicts are withheld unless the teacher passes (`config.teacher_gate`).

Checks (each off when its threshold is 0):
  max_fd_fraction       teacher FD <= this x the FD of a random-init U-Net of the same
                        architecture, sampled from the same noise with the same sampler
  min_judge_confidence  the fixed judge's mean top-class probability on the teacher's samples
                        (only with `eval.judge`: an independent classifier recognises them)
  min_class_share       every class gets at least this share of the judge's votes (no class
                        missing from the samples; only with `eval.judge`)
"""

from __future__ import annotations

CHECKS = ("max_fd_fraction", "min_judge_confidence", "min_class_share")


def check(gate_cfg, teacher_row: dict, random_row: dict | None) -> dict:
  """{"met": bool, "checks": {name: {value, threshold, status}}}; status met / missed / not
  measured (then the gate is not met)."""
  gate_cfg = dict(gate_cfg or {})
  unknown = sorted(set(gate_cfg) - set(CHECKS))
  if unknown:
    raise ValueError(f"teacher_gate has unknown fields {unknown}; known: {', '.join(CHECKS)}")
  values = {}
  if random_row and random_row.get("fd"):
    values["max_fd_fraction"] = float(teacher_row["fd"]) / float(random_row["fd"])
  if "judge_confidence" in teacher_row:
    values["min_judge_confidence"] = float(teacher_row["judge_confidence"])
    counts = teacher_row["judge_histogram"]
    values["min_class_share"] = min(counts) / max(1, sum(counts))
  out = {"met": True, "checks": {}}
  for name in CHECKS:
    threshold = float(gate_cfg.get(name, 0.0))
    if threshold <= 0:
      continue
    value = values.get(name)
    if value is None:
      status = "not measured"
    elif name.startswith("max_"):
      status = "met" if value <= threshold else "missed"
    else:
      status = "met" if value >= threshold else "missed"
    out["checks"][name] = {"value": value, "threshold": threshold, "status": status}
    out["met"] &= status == "met"
  if random_row:
    out["random_init_fd"] = float(random_row["fd"])
  return out


_WORDS = {
  "max_fd_fraction": "teacher FD / random-init FD",
  "min_judge_confidence": "judge's mean confidence on its samples",
  "min_class_share": "smallest class share of the judge's votes",
}


def lines(gate: dict | None) -> list[str]:
  """The gate in words; [] when the run predates the gate."""
  if not gate:
    return []
  out = []
  for name, c in gate["checks"].items():
    op = "<=" if name.startswith("max_") else ">="
    value = "-" if c["value"] is None else f"{c['value']:.4g}"
    need = f"needs {op} {c['threshold']:g}"
    out.append(f"Teacher gate: {_WORDS[name]} {value} ({need}): {c['status']}.")
  if not gate["met"]:
    out.append("The teacher misses its gate: no verdict from this run.")
  return out
