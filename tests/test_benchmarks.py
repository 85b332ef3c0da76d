"""CPU smoke test of the benchmark harness: tiny shapes, checks the JSON fields, not the speed."""

import json
import os
import subprocess
import sys

import pytest

from benchmarks import harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cpu_flops_counts_a_matmul_exactly_enough():
  import jax
  import jax.numpy as jnp

  a = jax.ShapeDtypeStruct((64, 32), jnp.float32)
  b = jax.ShapeDtypeStruct((32, 16), jnp.float32)
  flops = harness.cpu_flops(lambda x, y: x @ y, (a, b))
  assert flops == pytest.approx(2 * 64 * 32 * 16, rel=0.05)


@pytest.mark.slow
def test_run_writes_json_rows_with_the_expected_fields(tmp_path):
  out = tmp_path / "bench.jsonl"
  proc = subprocess.run(
    [sys.executable, "-m", "benchmarks.run", "--config", "configs/mcae.py:tiny"]
    + ["--what", "train_step", "--steps", "2", "--warmup", "1", "--out", str(out)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["case"] for r in rows] == ["mcae/mae_pretrain", "mcae/mcae_pretrain"]
  for r in rows:
    for key in ("step_ms_median", "step_ms_p10", "step_ms_p90", "examples_per_s", "compile_s"):
      assert r[key] > 0
    assert r["flops_per_step"] > 0 and r["tflops_per_s"] > 0
    assert r["batch_size"] == 16 and r["devices"] >= 1
  assert "| mcae/mae_pretrain | 16 |" in proc.stdout


def test_unknown_what_is_one_line_exit_2():
  proc = subprocess.run(
    [sys.executable, "-m", "benchmarks.run", "--config", "configs/mcae.py:tiny", "--what", "x"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: ")
