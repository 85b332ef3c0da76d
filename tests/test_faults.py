"""Fault injection: each class of bad input or interruption -> exit code 2, one `error:` line on
stderr, and the last good checkpoint byte-identical (or, for a kill, a re-run that finishes with
the uninterrupted result).

The runs are the toy method (tests/toy) wrapped by RUNNER, which adds what the methods' sub-runs
keep (a cached result JSON, an .npz, a params .npz, metrics read back) and three hooks:
FAULT_KILL_WRITING=<name> SIGKILLs the process half-way through the atomic write of that file,
FAULT_HOLD=<path> keeps the run (and its workdir lock) until that file exists.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = ["--config", "tests/toy/config.py:tiny"]

RUNNER = r"""
import os, signal, sys, time
import numpy as np
from shared import app, metric_writer, workdir
from tests.toy.train import train_and_evaluate as toy

def die():
  os.kill(os.getpid(), signal.SIGKILL)

kill_writing = os.environ.get("FAULT_KILL_WRITING")
if kill_writing:
  real_replace = os.replace
  def replace(src, dst, *a, **k):
    if os.path.basename(dst) == kill_writing:
      with open(src, "r+b") as f:  # half of the file written, then the kill
        f.truncate(os.path.getsize(src) // 2)
      die()
    return real_replace(src, dst, *a, **k)
  os.replace = replace

def method(config, wd):
  hold = os.environ.get("FAULT_HOLD")
  while hold and not os.path.exists(hold):
    time.sleep(0.05)
  sub = os.path.join(wd, "sub")
  result = workdir.cached_result(os.path.join(sub, "result.json"), lambda: toy(config, wd))
  if not os.path.exists(os.path.join(sub, "scores.npz")):
    workdir.save_arrays(os.path.join(sub, "scores.npz"), {"s": np.arange(10.0)})
    workdir.save_params(os.path.join(sub, "params.npz"), {"w": {"kernel": np.ones((2, 2))}})
  assert workdir.load_arrays(os.path.join(sub, "scores.npz"))["s"].sum() == 45
  workdir.load_params(os.path.join(sub, "params.npz"))
  steps = [r["step"] for r in metric_writer.read_metrics(wd)]
  assert steps == sorted(steps), steps
  return result

app.main("toy", method, ["toy", *sys.argv[1:]])
"""


def env(**extra):
  return {
    **os.environ,
    "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    "JAX_PLATFORMS": "cpu",
    **extra,
  }


def command(*args, workdir):
  return [sys.executable, "-c", RUNNER, *CONFIG, *args, "--workdir", str(workdir)]


def run(*args, workdir, prefix=(), timeout=300, **extra):
  return subprocess.run(
    [*prefix, *command(*args, workdir=workdir)],
    cwd=ROOT,
    env=env(**extra),
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def run_all(cases, parallel=3):
  """`run` for each (args, workdir), a few at a time (they are mostly start-up)."""
  procs, done = list(cases), []
  while procs or any(p.poll() is None for p, _ in done):
    running = sum(p.poll() is None for p, _ in done)
    while procs and running < parallel:
      args, workdir = procs.pop(0)
      p = subprocess.Popen(
        command(*args, workdir=workdir),
        cwd=ROOT,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
      )
      done.append((p, workdir))
      running += 1
    time.sleep(0.05)
  out = []
  for p, _ in done:
    stdout, stderr = p.communicate(timeout=300)
    out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
  return out


def assert_one_line_error(proc, *words):
  """Exit 2, no traceback, and stderr's last line `error: ...` holding every word."""
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
  assert "Traceback" not in proc.stderr, proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: "), proc.stderr
  for w in words:
    assert w in last, last
  return last


def snapshot(workdir) -> dict[str, str]:
  """sha256 of every file under the workdir's checkpoints/."""
  out = {}
  top = os.path.join(workdir, "checkpoints")
  for root, _, files in os.walk(top):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, top)] = hashlib.sha256(f.read()).hexdigest()
  return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished run: checkpoints 40 and 60, sub/result.json, sub/scores.npz, sub/params.npz."""
  workdir = tmp_path_factory.mktemp("faults") / "base"
  proc = run(workdir=workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert snapshot(workdir) and not (workdir / "run.lock").exists()
  return workdir


@pytest.fixture
def copy(finished, tmp_path):
  """A private copy of the finished run, and its checkpoints' fingerprint."""
  workdir = tmp_path / "run"
  shutil.copytree(finished, workdir)
  return workdir, snapshot(workdir)


# ---------------------------------------------------------------------------------------------
# The workdir


def test_unwritable_workdir_is_one_line(finished):
  """chmod a-w on a finished run's workdir; as root (who writes anywhere) the run is nobody's."""
  holder = tempfile.mkdtemp(dir="/tmp")  # world-traversable parents, unlike pytest's tmp_path
  try:
    workdir = os.path.join(holder, "run")
    shutil.copytree(finished, workdir)
    before = snapshot(workdir)
    prefix = ()
    if os.geteuid() == 0:
      if shutil.which("setpriv") is None:
        pytest.skip("root without setpriv: a read-only folder cannot be simulated")
      for root, dirs, files in os.walk(holder):
        for name in [".", *dirs, *files]:
          os.chown(os.path.join(root, name), 65534, 65534)
      os.chmod(holder, 0o755)
      prefix = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
    os.chmod(workdir, 0o555)
    proc = run(workdir=workdir, prefix=prefix)
    os.chmod(workdir, 0o755)
    assert_one_line_error(proc, "--workdir", "not writable")
    assert snapshot(workdir) == before
  finally:
    shutil.rmtree(holder, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Values that make no sense, batch sizes vs devices: refused before anything is written


NONSENSE = [
  ("--config.optimizer.lr=-0.1", ["optimizer.lr", "> 0"]),
  ("--config.num_steps=0", ["num_steps", ">= 1"]),
  ("--config.run.log_every=0", ["log_every", ">= 1"]),
  ("--config.seed=9223372036854775808", ["seed", "2**63"]),
  ("--config.run.keep_checkpoints=0", ["keep_checkpoints"]),
  ("--config.batch_size=63", ["batch_size=63", "not divisible by the 2"]),
]


def test_nonsense_values_are_refused_before_any_write(copy, tmp_path):
  finished, before = copy
  config = (finished / "config.json").read_bytes()
  cases = [([flag], tmp_path / f"fresh{i}") for i, (flag, _) in enumerate(NONSENSE)]
  cases.append((["--config.optimizer.lr=-1"], finished))  # on a finished run: left as it was
  results = run_all(cases)
  for proc, (flag, words), (_, workdir) in zip(results, NONSENSE, cases, strict=False):
    assert_one_line_error(proc, *words)
    assert not workdir.exists(), flag  # not even created
  assert_one_line_error(results[-1], "optimizer.lr")
  assert snapshot(finished) == before and (finished / "config.json").read_bytes() == config


# ---------------------------------------------------------------------------------------------
# Files a resumed run reads back


TRUNCATED = [
  ("sub/result.json", ["result.json is corrupt", "delete it and re-run"]),
  ("sub/scores.npz", ["scores.npz is corrupt", "re-run"]),
  ("sub/params.npz", ["params.npz is corrupt", "re-run"]),
  ("config.json", ["config.json is unreadable", "delete it and re-run"]),
  ("run_manifest.json", ["run_manifest.json is corrupt"]),
]


def test_truncated_file_names_itself_and_the_recovery(finished, tmp_path):
  cases, before = [], None
  for i, (name, _) in enumerate(TRUNCATED):
    workdir = tmp_path / f"run{i}"
    shutil.copytree(finished, workdir)
    before = before or snapshot(workdir)
    path = workdir / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    cases.append(([], workdir))
  for proc, (_, words), (_, workdir) in zip(run_all(cases), TRUNCATED, cases, strict=True):
    assert_one_line_error(proc, *words)
    assert snapshot(workdir) == before


def test_truncated_checkpoint_names_it_and_keeps_the_older_one(copy):
  workdir, before = copy
  os.remove(workdir / "sub" / "result.json")  # the run has to restore the checkpoint again
  for root, _, files in os.walk(workdir / "checkpoints" / "60"):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
  last = assert_one_line_error(run(workdir=workdir), "checkpoint", "60", "older checkpoints kept")
  assert "Move it away" in last
  after = snapshot(workdir)
  assert {k: v for k, v in after.items() if k.startswith("40")} == {
    k: v for k, v in before.items() if k.startswith("40")
  }


def test_corrupt_metrics_row_names_the_line(copy):
  workdir, before = copy
  path = workdir / "metrics.jsonl"
  lines = path.read_text().splitlines(keepends=True)
  lines[1] = '{"step": 20, "lo\n'
  path.write_text("".join(lines))
  assert_one_line_error(run(workdir=workdir), "metrics.jsonl line 2 is corrupt")
  assert snapshot(workdir) == before


# ---------------------------------------------------------------------------------------------
# Provenance: a different config is refused even without config.json; one process per workdir


@pytest.mark.parametrize(
  "deleted", [("config.json",), ("config.json", "run_manifest.json"), ("config.json", "*")]
)
def test_another_config_is_refused_without_config_json(copy, deleted):
  workdir, _ = copy
  for name in deleted:
    if name == "*":  # every manifest: the sub-run result still carries the config's hash
      for root, _, files in os.walk(workdir):
        if "run_manifest.json" in files:
          os.remove(os.path.join(root, "run_manifest.json"))
    else:
      os.remove(workdir / name)
  before, kept = snapshot(workdir), sorted(os.listdir(workdir))
  proc = run("--config.hidden=8", workdir=workdir)
  assert_one_line_error(proc, "another config", "fresh --workdir")
  assert not (workdir / "config.json").exists()  # the record is not overwritten
  assert snapshot(workdir) == before and sorted(os.listdir(workdir)) == kept
  if "*" in deleted:  # the original command still resumes (and writes the record again)
    assert run(workdir=workdir).returncode == 0 and (workdir / "config.json").exists()


def test_changed_checkpoint_settings_are_refused(copy):
  """With config.json there, tests/test_app.py shows the refusal naming the field; without it:"""
  workdir, before = copy
  os.remove(workdir / "config.json")
  proc = run("--config.run.checkpoint_every=7", workdir=workdir)
  assert_one_line_error(proc, "another config")
  assert snapshot(workdir) == before


def test_second_process_on_a_workdir_is_refused(copy):
  workdir, before = copy
  release = workdir.parent / "release"
  first = subprocess.Popen(
    command(workdir=workdir),
    cwd=ROOT,
    env=env(FAULT_HOLD=str(release)),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  try:
    deadline = time.time() + 120
    while not (workdir / "run.lock").exists() and time.time() < deadline:
      time.sleep(0.05)
    second = run(workdir=workdir)
    assert_one_line_error(second, "in use by process", str(first.pid))
  finally:
    release.touch()
    _, err = first.communicate(timeout=300)
  assert first.returncode == 0, err[-3000:]
  assert not (workdir / "run.lock").exists()
  assert snapshot(workdir) == before


# ---------------------------------------------------------------------------------------------
# SIGKILL inside a write: the previous file stays whole, the lock is stale, the re-run finishes


def test_sigkill_inside_a_write_then_the_rerun_finishes_the_same(finished, tmp_path):
  workdir = tmp_path / "killed"
  # Trained to the end, then killed half-way through writing the sub-run result.
  half = run(workdir=workdir, FAULT_KILL_WRITING="result.json")
  assert half.returncode == -9, half.stderr[-3000:]
  assert not (workdir / "sub" / "result.json").exists()  # no half file under the real name
  assert json.loads((workdir / "run.lock").read_text())["pid"] > 0  # left behind
  # A torn metrics row, as a kill inside `MetricWriter.write` leaves it.
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write('{"step": 70, "stage": "tr')
  # Re-run: the stale lock is taken over, nothing is left to train, the result is the same as
  # the run never interrupted, and the torn row is cut off.
  done = run(workdir=workdir)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "removing the stale lock" in done.stderr
  results = json.loads((workdir / "results.json").read_text())
  expected = json.loads((finished / "results.json").read_text())
  assert results["metrics"] == expected["metrics"]
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60]
  assert not (workdir / "run.lock").exists()


def test_sigkill_inside_a_metrics_row_is_cut_off_by_the_next_writer(tmp_path):
  """The kill itself in a small process (no training): the row is torn, the next writer cuts it."""
  script = (
    "import os, signal, sys\n"
    "from shared.metric_writer import MetricWriter\n"
    "w = MetricWriter(sys.argv[1], tensorboard=False)\n"
    "w.write(1, {'loss': 0.5})\n"
    'w._file.write(\'{"step": 2, "lo\'); w._file.flush()\n'
    "os.kill(os.getpid(), signal.SIGKILL)\n"
  )
  proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, env=env())
  assert proc.returncode == -9
  from shared import metric_writer

  assert [r["step"] for r in metric_writer.read_metrics(str(tmp_path))] == [1]
  with metric_writer.MetricWriter(str(tmp_path), tensorboard=False) as w:
    w.write(2, {"loss": 0.25})
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(x)["step"] for x in lines] == [1, 2]


def test_npz_writes_interrupted_half_way_leave_the_previous_file(tmp_path, monkeypatch):
  """Every .npz cache (workdir's helpers, FD extractors and statistics, gradflow masks) is written
  through a temporary file: np.savez failing half-way keeps the old file byte-identical."""
  import io

  import numpy as np

  from gradflow_prune import pruning_run
  from shared import fd, workdir
  from shared.metrics import FeatureStats

  extractor = lambda scale: fd.FeatureExtractor(
    "tiny", "conv_classifier", {"num_classes": 2, "widths": [4]}, {"w": np.ones(3) * scale}
  )
  stats = lambda scale: FeatureStats().update(np.arange(12.0).reshape(4, 3) * scale)
  writers = {
    "npz.npz": lambda p, v: workdir.save_npz(p, {"a": np.arange(5) * v}),
    "arrays.npz": lambda p, v: workdir.save_arrays(p, {"a": np.arange(5) * v}),
    "params.npz": lambda p, v: workdir.save_params(p, {"w": {"kernel": np.ones(2) * v}}),
    "features.npz": lambda p, v: extractor(v).save(p),
    "stats.npz": lambda p, v: stats(v).save(p),
    "masks.npz": lambda p, v: pruning_run._save_masks(p, {"g.out": np.ones(4) * v}),
  }
  readers = {
    "features.npz": lambda p: dict(fd.FeatureExtractor.load(p).variables),
    "stats.npz": lambda p: {"mean": FeatureStats.load(p).mean, "cov": FeatureStats.load(p).cov},
  }
  real_savez = np.savez

  def half_then_fail(file, *args, **kwds):
    buffer = io.BytesIO()
    real_savez(buffer, *args, **kwds)
    half = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    if hasattr(file, "write"):
      file.write(half)
    else:  # a writer that is not atomic: its file is torn in place (and the test fails)
      with open(file if str(file).endswith(".npz") else f"{file}.npz", "wb") as f:
        f.write(half)
    raise OSError(28, "No space left on device")

  written = []
  for name, write in writers.items():
    path = str(tmp_path / name)
    write(path, 1)
    written.append(name)
    before = (tmp_path / name).read_bytes()
    read = readers.get(name, workdir.read_state_dict)
    good = read(path)
    monkeypatch.setattr(np, "savez", half_then_fail)
    with pytest.raises(OSError, match="No space"):
      write(path, 2)
    with pytest.raises(OSError, match="No space"):
      write(str(tmp_path / f"new_{name}"), 2)  # a first write fails: nothing is left
    monkeypatch.setattr(np, "savez", real_savez)
    assert (tmp_path / name).read_bytes() == before, name
    again = read(path)
    assert again.keys() == good.keys() and all(np.array_equal(again[k], good[k]) for k in good), (
      name
    )
    assert sorted(os.listdir(tmp_path)) == sorted(written), name


# ---------------------------------------------------------------------------------------------
# Reports and advice


@pytest.mark.parametrize("report", ["infotok.report", "unlearnable.report"])
def test_report_on_missing_foreign_or_corrupt_run_is_one_line(finished, tmp_path, report, capsys):
  import importlib

  from shared import cli

  corrupt = tmp_path / "corrupt"
  corrupt.mkdir()
  (corrupt / "results.json").write_text('{"method": "infotok", "metr')
  method = report.split(".")[0]
  # The command itself, once: a corrupt results.json (unlearnable's imports are slow: in-process).
  proc = (
    None
    if method == "unlearnable"
    else subprocess.run(
      [sys.executable, "-m", report, str(corrupt)],
      cwd=ROOT,
      env=env(),
      capture_output=True,
      text=True,
      timeout=120,
    )
  )
  if proc is not None:
    assert_one_line_error(proc, "results.json is corrupt")
  # The rest through the same guarded main, in-process.
  main = importlib.import_module(report).main
  for folder, words in [
    (corrupt, ["results.json is corrupt"]),
    (tmp_path / "missing", ["missing", "not a folder"]),
    (finished, ["'toy' run", method]),
  ]:
    with pytest.raises(SystemExit) as e:
      cli.guarded(main, [str(folder)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert all(w in err for w in words), err
  assert cli.guarded(main, ["--help"]) == 0
  assert "usage: python -m " + report in capsys.readouterr().out


@pytest.mark.parametrize(
  "command",
  ["gradflow_prune.report", "benchmarks.run", "benchmarks.report", "benchmarks.collectives"],
)
def test_cli_without_input_or_with_an_unknown_option_is_one_line(command):
  """No input (run folder, --config, file), and an unknown option: one `error:` line, exit 2;
  --help: the usage, exit 0."""
  procs = [
    subprocess.Popen(
      [sys.executable, "-m", command, *args],
      cwd=ROOT,
      env=env(),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for args in ([], ["--bogus"], ["--help"])
  ]
  usage = "usage: python -m " + command
  for proc, words in zip(procs[:2], ([usage], ["bogus"]), strict=True):
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and not out, (proc.returncode, out, err[-3000:])
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert all(w in err for w in words), err
  out, err = procs[2].communicate(timeout=120)
  assert procs[2].returncode == 0 and out.startswith(usage), (out, err[-3000:])


def test_weights_hints_never_suggest_an_unsafe_torch_load(tmp_path, monkeypatch):
  from shared import workdir
  from shared.errors import DataError

  monkeypatch.setitem(sys.modules, "torch", None)  # torch not installed
  (tmp_path / "w.pth").write_bytes(b"\x80\x02}q\x00.")
  with pytest.raises(DataError) as e:
    workdir.read_state_dict(str(tmp_path / "w.pth"))
  assert "weights_only=True" in str(e.value)
  # No message anywhere in the code suggests torch.load without weights_only.
  unsafe = re.compile(r"torch\.load\((?![^)]*weights_only=True)[^)]*\)")
  for package in ("shared", "infotok", "gradflow_prune", "unlearnable", "mcae"):
    for root, _, files in os.walk(os.path.join(ROOT, package)):
      for name in files:
        if name.endswith(".py"):
          with open(os.path.join(root, name)) as f:
            text = f.read()
          assert not unsafe.search(text), (name, unsafe.search(text).group(0))


def test_torn_metrics_row_is_cut_and_skipped(tmp_path):
  from shared import metric_writer

  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1}\n{"step": 2')
  assert [r["step"] for r in metric_writer.read_metrics(str(tmp_path))] == [1]
  metric_writer.repair_tail(str(path))
  assert path.read_text() == '{"step": 1}\n'
  path.write_text('{"step": 1')  # a torn first row: nothing kept
  metric_writer.repair_tail(str(path))
  assert path.read_text() == ""
