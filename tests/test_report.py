"""shared.report: the markdown report over a runs folder, and the mean ± std helper."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared import report
from shared.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, obj) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(obj if isinstance(obj, str) else json.dumps(obj))


def _mcae_results(seed: int, hter: float) -> dict:
  return {
    "method": "mcae",
    "config": {"method": "mcae", "seed": seed, "lam": 0.1, "workdir": f"runs/mcae_s{seed}"},
    "metrics": {
      "mean_hter": hter,
      "pretrain": {"loss": 0.51234 + seed, "steps": 200},
      "protocols": {
        "OCI->M": {"hter": hter, "auc": 0.97},
        "OMI->C": {"hter": hter + 0.01, "auc": 0.95},
      },
    },
    "seed": seed,
    "versions": {"jax": "0.10.2", "flax": "0.12.8"},
    "devices": [{"platform": "cpu", "device_kind": "cpu"}] * 2,
    "wall_time_s": 75.5,
  }


@pytest.fixture
def runs_dir(tmp_path):
  runs = tmp_path / "runs"
  _write(runs / "mcae_s0" / "results.json", _mcae_results(0, 0.1234))
  _write(runs / "mcae_s1" / "results.json", _mcae_results(1, 0.1434))
  (runs / "mcae_s0" / "figures").mkdir()
  (runs / "mcae_s0" / "figures" / "roc curve.png").write_bytes(b"\x89PNG\r\n\x1a\n")
  # Sparse results: no config, seed, versions; a per-row list of metrics.
  _write(
    runs / "ue" / "results.json",
    {"method": "unlearnable", "metrics": [{"victim": "resnet18", "test_acc": 21.05}]},
  )
  _write(runs / "broken" / "results.json", "{not json")
  (runs / "loose.png").write_bytes(b"\x89PNG\r\n\x1a\n")
  return runs


def test_report_tables_figures_and_problems(runs_dir):
  path = report.write_report(runs_dir)
  assert path == runs_dir / "REPORT.md"
  text = path.read_text()
  assert "## mcae" in text and "## unlearnable" in text
  assert "| run | seed | mean_hter | pretrain/loss | pretrain/steps | devices | wall time |" in text
  assert "| mcae_s0 | 0 | 0.1234 | 0.5123 | 200 | 2x cpu | 1m 15s |" in text
  assert "Versions: flax 0.12.8, jax 0.10.2." in text
  # Per-protocol rows get their own table.
  assert "### protocols" in text
  assert "| mcae_s1 | OMI->C | 0.1534 | 0.95 |" in text
  assert "| ue | resnet18 | 21.05 |" in text
  # Two seeds of one config: mean ± std (sample std).
  assert "### Mean ± std over seeds" in text
  assert "| mcae | 2 | 0.133 ± 0.014 | 1.01 ± 0.71 | 200 ± 0 |" in text
  assert "| mcae | OMI->C | 2 | 0.143 ± 0.014 | 0.95 ± 0 |" in text
  # Every PNG, linked relative to the report.
  assert "![roc curve](mcae_s0/figures/roc%20curve.png)" in text
  assert "![loose](loose.png)" in text
  assert "`broken/results.json` could not be read" in text


def test_report_groups_seeds_by_the_config_fields_that_vary(tmp_path):
  for seed in (0, 1):
    for lam in (0.1, 0.2):
      results = _mcae_results(seed, 0.1 + lam + seed / 100)
      results["config"]["lam"] = lam
      _write(tmp_path / f"lam{lam}_s{seed}" / "results.json", results)
  text = report.write_report(tmp_path).read_text()
  assert "| run | seed | lam | mean_hter |" in text  # workdir differs too, but is not a variant
  assert "| lam0.1_s1 | 1 | 0.1 | 0.21 |" in text
  assert "| lam | n | mean_hter |" in text
  assert "| 0.2 | 2 | 0.3050 ± 0.0071 |" in text


def test_report_elsewhere_links_relative_to_it(runs_dir, tmp_path):
  path = report.write_report(runs_dir, tmp_path / "docs" / "R.md")
  assert "![loose](../runs/loose.png)" in path.read_text()


def test_empty_folder_says_so(tmp_path):
  text = report.write_report(tmp_path).read_text()
  assert "No results found" in text


def test_missing_folder_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match="not found"):
    report.main([str(tmp_path / "nope")])
  proc = subprocess.run(
    [sys.executable, "-m", "shared.report", str(tmp_path / "nope")],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert proc.returncode == 2
  assert proc.stderr.startswith("error: runs folder not found") and proc.stderr.count("\n") == 1
  assert proc.stdout == ""


def test_cli_writes_the_report(runs_dir):
  proc = subprocess.run(
    [sys.executable, "-m", "shared.report", str(runs_dir)], cwd=ROOT, capture_output=True, text=True
  )
  assert proc.returncode == 0, proc.stderr
  assert (runs_dir / "REPORT.md").is_file()


def test_mean_std_table():
  rows = [
    {"method": "a", "seed": 0, "acc": 1.0, "loss": 0.5},
    {"method": "a", "seed": 1, "acc": 3.0, "loss": 0.7},
    {"method": "b", "seed": 0, "acc": 2.0},
  ]
  table = report.mean_std_table(rows, "method", ["acc", "loss"], labels={"acc": "accuracy"})
  lines = table.splitlines()
  assert lines[0] == "| method | n | accuracy | loss |"
  assert lines[2] == "| a | 2 | 2.0 ± 1.4 | 0.60 ± 0.14 |"
  assert lines[3] == "| b | 1 | 2 | — |"
  fixed = report.mean_std_table(rows[:2], "method", ["acc"], precision=3)
  assert "2.000 ± 1.414" in fixed
  # results.json-shaped rows: nested paths, inside 'config' and 'metrics'.
  nested = [
    {"method": "m", "config": {"variant": "x"}, "metrics": {"test": {"acc": 0.9}}},
    {"method": "m", "config": {"variant": "x"}, "metrics": {"test": {"acc": 0.8}}},
  ]
  assert "| x | 2 | 0.850 ± 0.071 |" in report.mean_std_table(
    nested, "config.variant", ["test/acc"]
  )


def test_format_number():
  assert report.format_number(3) == "3"
  assert report.format_number(0.123456) == "0.1235"
  assert report.format_number(94.6789) == "94.68"
  assert report.format_number(1234567.0) == "1.235e+06"
  assert report.format_number(float("nan")) == "nan"
  assert report.format_number(0.0) == "0"


def test_per_row_labels_join_method_and_protocol():
  from shared.report import _ROW_LABEL_KEYS, split_metrics

  assert _ROW_LABEL_KEYS[0] == "method"
  _, groups = split_metrics(
    {
      "rows": [
        {"method": "mcae", "protocol": "OCI->M", "hter": 0.1},
        {"method": "mae", "protocol": "OCI->M", "hter": 0.2},
      ]
    }
  )
  assert [label for label, _ in groups["rows"]] == ["mcae | OCI->M", "mae | OCI->M"]
