"""The teacher gate (`gradflow_prune.gate`): a pruning comparison gives verdicts only when its
teacher beats a random-init U-Net by the configured margin and, with a judge, is recognised."""

import pytest

from gradflow_prune import gate, report

CIFAR = {"max_fd_fraction": 0.1, "min_judge_confidence": 0.7, "min_class_share": 0.05}


def _teacher(fd=5.0, conf=0.8, hist=(100,) * 10):
  return {"fd": fd, "judge_confidence": conf, "judge_histogram": list(hist)}


def test_met_missed_and_not_measured():
  g = gate.check(CIFAR, _teacher(), {"fd": 100.0})
  assert g["met"] and g["random_init_fd"] == 100.0
  assert {k: c["status"] for k, c in g["checks"].items()} == dict.fromkeys(CIFAR, "met")
  assert g["checks"]["max_fd_fraction"]["value"] == pytest.approx(0.05)
  # Each check alone can fail the gate.
  assert not gate.check(CIFAR, _teacher(fd=20.0), {"fd": 100.0})["met"]
  assert not gate.check(CIFAR, _teacher(conf=0.5), {"fd": 100.0})["met"]
  collapsed = gate.check(CIFAR, _teacher(hist=(460, 500, 40) + (0,) * 7), {"fd": 100.0})
  assert collapsed["checks"]["min_class_share"] == {"value": 0.0, "threshold": 0.05,
                                                    "status": "missed"}  # fmt: skip
  assert not collapsed["met"]
  # No judge row or no random-init row: those checks are not measured, the gate is not met.
  g = gate.check(CIFAR, {"fd": 5.0}, None)
  assert not g["met"] and g["checks"]["min_judge_confidence"]["status"] == "not measured"
  assert g["checks"]["max_fd_fraction"]["status"] == "not measured"
  # A threshold of 0 switches a check off (the variants without a judge).
  g = gate.check({"max_fd_fraction": 0.1, "min_judge_confidence": 0.0}, {"fd": 5.0}, {"fd": 90})
  assert g["met"] and list(g["checks"]) == ["max_fd_fraction"]
  with pytest.raises(ValueError, match="unknown fields"):
    gate.check({"max_fd": 0.1}, {"fd": 1.0}, {"fd": 2.0})


def test_lines_say_when_no_verdict_is_given():
  assert gate.lines(None) == []
  ok = gate.lines(gate.check(CIFAR, _teacher(), {"fd": 100.0}))
  assert (
    ok[0] == "Teacher gate: teacher FD / random-init FD 0.05 (needs <= 0.1): met." and len(ok) == 3
  )
  bad = gate.lines(gate.check(CIFAR, _teacher(fd=50.0), {"fd": 100.0}))
  assert bad[-1] == "The teacher misses its gate: no verdict from this run."


def _rows():
  rows = []
  for seed in range(3):
    for proc, crit, fd in (("iterative", "grasp", 10.0 - seed), ("oneshot", "taylor", 12.0)):
      rows.append(dict(keep_ratio=0.7, procedure=proc, criterion=crit, seed=seed, fd=fd,
                       ssim=0.5 + 0.01 * (proc == "iterative"), params=1, macs=1.0,
                       latency_s=0.1))  # fmt: skip
  return rows


def test_claim_withholds_the_paired_verdicts_when_the_gate_is_missed():
  rows = _rows()
  summary = report.summarize(rows, {"latency_s": 0.2})
  given = report.claim(summary, [0.7], rows, {"met": True})["keep0.7"]
  withheld = report.claim(summary, [0.7], rows, {"met": False})["keep0.7"]
  key = "paired_iterative_grasp_minus_oneshot_taylor"
  assert given[key]["fd"]["verdict"] != report.NO_VERDICT and given["teacher_gate_met"]
  assert withheld[key]["fd"]["verdict"] == withheld[key]["ssim"]["verdict"] == report.NO_VERDICT
  assert withheld[key]["fd"]["mean"] == given[key]["fd"]["mean"]  # the numbers stay
  assert not withheld["teacher_gate_met"]
  assert "teacher_gate_met" not in report.claim(summary, [0.7], rows)["keep0.7"]  # no gate given
