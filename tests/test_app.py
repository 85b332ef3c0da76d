"""The command line: a run end to end, and each kind of bad input -> one line, exit code 2."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = ["-m", "tests.toy", "--config", "tests/toy/config.py:tiny"]


def run(*args, workdir, timeout=300, python_prefix=()):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  return subprocess.run(
    [sys.executable, *python_prefix, *args, "--workdir", str(workdir)],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def assert_user_error(proc, *words):
  assert proc.returncode == 2, proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: "), proc.stderr
  for w in words:
    assert w in last, last


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """One finished toy run (its workdir and process), shared: tests that change it use a copy."""
  workdir = tmp_path_factory.mktemp("toy_finished")
  return workdir, run(*TOY, workdir=workdir)


def test_toy_run_writes_the_workdir_and_resumes(finished, tmp_path):
  first, proc = finished
  assert proc.returncode == 0, proc.stderr
  assert "toy: done" in proc.stdout
  shutil.copytree(first, tmp_path, dirs_exist_ok=True)
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["method"] == "toy" and results["seed"] == 0 and results["variant"] == "tiny"
  assert results["metrics"]["test_accuracy"] > 0.8  # 60 MLP steps on digits
  assert {"jax", "flax", "python"} <= set(results["versions"])
  assert results["devices"]["count"] == 2 and results["wall_time_s"] > 0
  assert json.loads((tmp_path / "config.json").read_text())["method"] == "toy"
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["step"] == 60
  # Same command again: resumes at the final step, trains nothing, same result.
  again = run(*TOY, workdir=tmp_path)
  assert again.returncode == 0, again.stderr
  assert json.loads((tmp_path / "results.json").read_text())["metrics"] == results["metrics"]
  # A different config on the same workdir is refused, naming the field.
  other = run(*TOY, "--config.hidden=8", workdir=tmp_path)
  assert_user_error(other, "hidden", "different config")


@pytest.mark.parametrize(
  "extra, words",
  [
    (["--config.no_such_field=1"], ["no_such_field"]),
    (["--config.method=mcae"], ["method", "mcae"]),
    (["--config.data.name=no_such_set"], ["no_such_set"]),
    (["--config.batch_size=abc"], ["batch_size"]),
  ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, extra, words):
  assert_user_error(run(*TOY, *extra, workdir=tmp_path), *words)


def test_unknown_variant_and_missing_config(tmp_path):
  proc = run("-m", "tests.toy", "--config", "tests/toy/config.py:huge", workdir=tmp_path)
  assert_user_error(proc, "huge")
  proc = run("-m", "tests.toy", "--config", "tests/toy/nope.py", workdir=tmp_path)
  assert_user_error(proc, "nope.py")


def test_corrupt_checkpoint_is_exit_2_and_kept(finished, tmp_path):
  first, proc = finished
  assert proc.returncode == 0, proc.stderr
  shutil.copytree(first, tmp_path, dirs_exist_ok=True)
  latest = tmp_path / "checkpoints" / "60"
  for root, _, files in os.walk(latest):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"\0garbage")
  assert_user_error(run(*TOY, workdir=tmp_path), "checkpoint", "60", "older checkpoints kept")
  assert (tmp_path / "checkpoints" / "40").exists()


def test_nan_loss_is_exit_2_with_last_good_checkpoint(tmp_path):
  proc = run(*TOY, "--config.nan_at_step=30", workdir=tmp_path)
  assert_user_error(proc, "non-finite loss", "step 31")
  steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert steps[-1] == 20


def test_sigterm_checkpoints_and_the_rerun_resumes(tmp_path):
  args = [*TOY, "--config.slow_data_s=0.05", "--config.run.checkpoint_every=1000"]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  proc = subprocess.Popen(
    [sys.executable, *args, "--workdir", str(tmp_path)],
    cwd=ROOT,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  metrics = tmp_path / "metrics.jsonl"
  deadline = time.time() + 120
  while not (metrics.exists() and metrics.read_text().strip()) and time.time() < deadline:
    time.sleep(0.1)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err
  steps = [int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()]
  assert len(steps) == 1 and 10 <= steps[0] < 60
  resumed = run(*args, workdir=tmp_path)
  assert resumed.returncode == 0, resumed.stderr
  rows = [json.loads(line) for line in metrics.read_text().splitlines()]
  assert rows[-1]["step"] == 60


# `sys.modules[name] = None` is how Python spells "not installed": `import` raises
# ModuleNotFoundError and `importlib.util.find_spec` returns None, as on the GPU machines.
BLOCK_TF = (
  "-c",
  "import sys, runpy\n"
  "for name in ('tensorflow', 'tensorflow_datasets', 'tensorboard'):\n"
  "  sys.modules[name] = None\n"
  "sys.argv = ['toy'] + sys.argv[1:]\n"
  "runpy.run_module('tests.toy', run_name='__main__')\n"
  "assert sys.modules['tensorflow'] is None\n",
)


def test_core_runs_without_tensorflow(tmp_path):
  proc = run("--config", "tests/toy/config.py:tiny", workdir=tmp_path, python_prefix=BLOCK_TF)
  assert proc.returncode == 0, proc.stderr
  assert (tmp_path / "results.json").exists()


def _free_port():
  import socket

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  """2 processes x 2 CPU devices (gloo) == 1 process x 4 devices, on the same global batches."""
  env = {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
  }
  port = _free_port()
  procs = [
    subprocess.Popen(
      [sys.executable, *TOY, "--workdir", str(tmp_path / "multi")]
      + ["--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2"]
      + ["--process_id", str(i)],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  for p in procs:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
  single_env = {**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  single = subprocess.run(
    [sys.executable, *TOY, "--workdir", str(tmp_path / "single")],
    cwd=ROOT,
    env=single_env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert single.returncode == 0, single.stderr
  multi = json.loads((tmp_path / "multi" / "results.json").read_text())
  one = json.loads((tmp_path / "single" / "results.json").read_text())
  assert multi["devices"]["processes"] == 2 and multi["devices"]["count"] == 4
  assert one["devices"]["processes"] == 1 and one["devices"]["count"] == 4

  def losses(d):
    return [
      json.loads(x)["loss"] for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()
    ]

  assert losses("multi") == pytest.approx(losses("single"), rel=1e-5)
  assert multi["metrics"]["test_accuracy"] == pytest.approx(one["metrics"]["test_accuracy"])


def test_help_lists_the_flags():
  proc = subprocess.run(
    [sys.executable, *TOY[:2], "--help"], capture_output=True, text=True, cwd=ROOT
  )
  assert proc.returncode == 0, proc.stderr
  assert "usage: python -m toy --config configs/toy.py" in proc.stdout
  for flag in ("--config", "--workdir", "--coordinator_address", "--config.<field>"):
    assert flag in proc.stdout


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_workdir_that_cannot_be_made_is_one_line(tmp_path, where):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  workdir = blocker if where == "file" else blocker / "sub"
  assert_user_error(run(*TOY, workdir=workdir), "--workdir")
