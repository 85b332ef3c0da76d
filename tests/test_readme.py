"""Every command line the README shows is run, in its `tiny` form where it has one.

`README_COMMANDS` maps each `python -m ...` the README holds (and its config-argument example) to
the form run here: a method run as its `tiny` variant under `--dry_run` (flags, config file,
variant arguments, overrides and values all checked, nothing written: the tiny runs themselves
are each method's own end-to-end tests), `--help` where the command needs data or a GPU, the
report on a runs folder made here. A README command missing from the table fails the test, so
the table follows the README.
"""

import json
import os
import re
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("infotok", "gradflow_prune", "unlearnable", "mcae")

# README text -> (argv lists to run, expected exit code). "{tmp}" is a fresh folder.
README_COMMANDS = {
  "python -m <pkg> --config configs/<pkg>.py[:variant] --workdir runs/<name> "
  "[--config.field=value ...]": [
    [m, "--config", f"configs/{m}.py:tiny", "--workdir", "{tmp}/r", "--dry_run"] for m in METHODS
  ],
  "python -m <pkg> --help": [[m, "--help"] for m in METHODS],
  "configs/mcae.py:compare,seeds=5": [
    ["mcae", "--config", "configs/mcae.py:compare,seeds=5", "--dry_run"],
    ["mcae", "--config", "configs/mcae.py:tiny,seeds=5", "--dry_run"],
  ],
  "--config.seed=1 --config.pretrain.optimizer.lr=3e-4": [
    [m, "--config", f"configs/{m}.py:tiny", "--config.seed=1"]
    + ["--config.pretrain.optimizer.lr=3e-4", "--dry_run"]
    for m in ("mcae", "gradflow_prune")
  ],
  "python -m <pkg> ... --config.data.name=cifar10": [
    [m, "--config", f"configs/{m}.py:tiny", "--config.data.name=cifar10", "--dry_run"]
    for m in ("gradflow_prune", "unlearnable")
  ],
  "python -m shared.data.prepare cifar10": [["shared.data.prepare", "--help"]],
  "python -m shared.data.prepare cifar10 --from DIR": [["shared.data.prepare", "--help"]],
  "python -m shared.report runs/": [["shared.report", "{tmp}/runs"]],
  "python -m infotok.report": [["infotok.report", "--help"]],
  "python -m gradflow_prune.report DIR...": [["gradflow_prune.report", "--help"]],
  "python -m benchmarks.run": [["benchmarks.run", "--help"]],
  "python -m mcae.merge": [["mcae.merge", "--help"]],
  "python -m unlearnable.merge DIR... --out DIR": [["unlearnable.merge", "--help"]],
  "--config.protected_from=DIR": [
    ["unlearnable", "--config", "configs/unlearnable.py:tiny", "--config.protected_from={tmp}"]
    + ["--workdir", "{tmp}/r", "--dry_run"]
  ],
}


def readme_commands() -> set[str]:
  """Each `python -m ...` the README shows (up to a comment or option list), and config args."""
  with open(os.path.join(ROOT, "README.md")) as f:
    text = f.read()
  found = set()
  for match in re.finditer(r"python -m [^`\n]*", text):
    found.add(match.group(0).split("  #")[0].strip())
  found |= set(re.findall(r"`(configs/[\w]+\.py:[^`\s]+)`", text))
  found |= set(re.findall(r"`(--config\.[\w.]+=[^`]+)`", text))
  return found


def test_every_readme_command_is_in_the_table():
  missing = readme_commands() - set(README_COMMANDS)
  assert not missing, f"README commands with no test form: {sorted(missing)}"


def _run_all(argvs, tmp_path):
  env = {
    **os.environ,
    "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    "JAX_PLATFORMS": "cpu",
  }
  procs = []
  for argv in argvs:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    while sum(p.poll() is None for p in procs) >= 2:  # two cores
      time.sleep(0.05)
    procs.append(
      subprocess.Popen(
        [sys.executable, "-m", *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
      )
    )
  return [(p, *p.communicate(timeout=300)) for p in procs]


@pytest.mark.parametrize("line", list(README_COMMANDS))
def test_readme_command_runs(line, tmp_path):
  runs = tmp_path / "runs" / "toy"
  runs.mkdir(parents=True)
  results = {"method": "toy", "variant": "tiny", "seed": 0, "metrics": {"test_accuracy": 0.9}}
  (runs / "results.json").write_text(json.dumps(results))
  for proc, out, err in _run_all(README_COMMANDS[line], tmp_path):
    assert proc.returncode == 0, (proc.args, err[-2000:])
    assert "Traceback" not in err
    if "--dry_run" in proc.args:
      assert "config OK" in out and not (tmp_path / "r").exists()
    if "--help" in proc.args:
      assert "usage" in out.lower()
  if line.startswith("python -m shared.report"):
    assert (tmp_path / "runs" / "REPORT.md").exists()
