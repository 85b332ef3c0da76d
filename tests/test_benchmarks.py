"""CPU smoke test of the benchmark harness: tiny shapes, checks the JSON fields, not the speed."""

import json
import os
import subprocess
import sys

import pytest

from shared import benchmark as harness

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


def test_flops_affine_recovers_constant_and_per_example_parts():
  import jax
  import jax.numpy as jnp

  w = jax.ShapeDtypeStruct((32, 16), jnp.float32)

  def flops_fn(b):
    return (lambda x, w: x @ w), (jax.ShapeDtypeStruct((b, 32), jnp.float32), w)

  case = harness.Case(name="m", step=None, args=(), examples=8, batch_size=8, flops_fn=flops_fn)
  const, per_example = harness.flops_affine(case)
  assert per_example == pytest.approx(2 * 32 * 16, rel=0.05)
  assert abs(const) < 0.05 * per_example
  assert harness.count_flops(case) == pytest.approx(8 * 2 * 32 * 16, rel=0.05)


def test_flops_from_reads_the_affine_fit(tmp_path):
  from benchmarks import run

  path = tmp_path / "flops.jsonl"
  rows = [
    {
      "case": "a",
      "batch_size": 4,
      "flops_per_step": 9.0,
      "flops_const": 1.0,
      "flops_per_example": 2.0,
    },
    {
      "case": "b",
      "batch_size": 4,
      "flops_per_step": None,
      "flops_const": None,
      "flops_per_example": None,
    },
  ]
  path.write_text("\n".join(json.dumps(r) for r in rows))
  assert run._read_flops(str(path)) == {"a": (1.0, 2.0)}
  bad = tmp_path / "bad.jsonl"
  bad.write_text("{not json")
  with pytest.raises(run.ConfigError, match="flops_from"):
    run._read_flops(str(bad))


def test_report_marks_targets_pruned_speedup_and_scaling():
  from benchmarks import report

  def row(case, devices, batch, eps, flops=None):
    return {
      "case": case,
      "devices": devices,
      "batch_size": batch,
      "examples_per_s": eps,
      "step_ms_median": 1.0,
      "flops_per_step": flops,
    }

  rows = [
    {"case": "matmul_8192_bfloat16", "tflops_per_s": 780.0},
    row("mcae/mae_pretrain", 1, 256, 7_000.0),
    row("mcae/mae_pretrain", 2, 512, 12_000.0),
    row("gradflow_prune/forward_teacher", 1, 256, 20_000.0, flops=2.0),
    row("gradflow_prune/forward_keep0.5", 1, 256, 30_000.0, flops=1.0),
  ]
  text = report.report(rows)
  assert "| mcae/mae_pretrain | 256 | 7,000 | 6,700 | yes | 1.04x |" in text
  assert "| gradflow_prune/forward_teacher | 256 | 20,000 | 30,000 | **no** | 0.67x |" in text
  assert "| 1.50x | 2.00x | 0.75 | **no** |" in text  # speed-up, MACs ratio, efficiency
  assert "| 1.71x | **no** |" in text  # 12,000 / 7,000 on two devices
  assert "780 TFLOP/s" in text


def test_breakdown_times_forward_backward_and_the_full_step():
  import jax
  import jax.numpy as jnp
  import optax

  from shared import train_lib

  def loss_fn(params, model_state, batch, rng):
    del rng
    loss = jnp.mean(jnp.square(batch["x"] @ params["w"]))
    return loss, ({}, model_state)

  mesh = train_lib.make_mesh(1)
  state, sharding = train_lib.init_state(
    lambda k: ({"w": jax.random.normal(k, (8, 4))}, {}), optax.sgd(0.1), jax.random.key(0), mesh
  )
  step = train_lib.make_step(train_lib.loss_step(loss_fn), sharding, train_lib.batch_sharding(mesh))
  batch = jax.device_put({"x": jnp.ones((16, 8))}, train_lib.batch_sharding(mesh))
  case = harness.Case("toy", step, (state, batch), 16, 16, loss_fn=loss_fn)
  rows = [harness.measure(c, steps=2, warmup=1, count=False) for c in harness.breakdown(case)]
  assert [r["case"] for r in rows] == ["toy:forward", "toy:forward_backward", "toy"]
  assert all(r["step_ms_median"] > 0 for r in rows)


def test_collectives_counts_ops_and_elements_of_hlo_text():
  from benchmarks import collectives

  hlo = """
  %all-reduce.1 = (f32[3,3,8,8]{3,2,1,0}, f32[8]{0}) all-reduce(%a, %b), replica_groups={}
  ROOT %all-gather-start.2 = f32[4,16]{1,0} all-gather-start(%c), dimensions={0}
  %add.3 = f32[8]{0} add(%x, %y)
  """
  assert collectives.count(hlo) == {
    "all-reduce": {"ops": 1, "elements": 3 * 3 * 8 * 8 + 8},
    "all-gather": {"ops": 1, "elements": 64},
  }


def test_input_pipeline_prints_a_row_per_case(capsys):
  from benchmarks import input_pipeline

  input_pipeline.main(
    ["--what", "memory,grain", "--rows", "600", "--batch", "64", "--steps", "3", "--feed"]
  )
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [r["case"] for r in rows] == ["memory", "grain/workers=0"]
  assert all(r["img_per_s"] > 0 and r["feed"] for r in rows)


def test_one_json_lines_reader_names_file_and_line(tmp_path, capsys):
  """benchmarks.report.read_lines backs report, ratio and --flops_from: one error wording."""
  from benchmarks import report
  from shared import cli
  from shared.errors import DataError

  good = tmp_path / "good.jsonl"
  good.write_text('{"case": "a"}\n\n{"case": "b"}\n')
  assert [r["case"] for r in report.read_lines(str(good))] == ["a", "b"]
  for text, needle in (('{"case": "a"}\n{oops\n', "line 2: not JSON"), ("[1, 2]\n", "not a JSON")):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(text)
    with pytest.raises(DataError, match=needle):
      report.read_lines(str(bad), "lines of x")
  with pytest.raises(DataError, match="cannot read"):
    report.read_lines(str(tmp_path / "missing.jsonl"))
  with pytest.raises(SystemExit) as exit_info:  # the report CLI: one line, exit 2
    cli.guarded(report.main, ["report", str(tmp_path / "bad.jsonl")])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "bad.jsonl line 1" in err[0]
