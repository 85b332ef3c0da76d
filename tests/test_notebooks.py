"""Every notebooks/*.ipynb executed top to bottom with nbclient (marker `notebooks`).

Each notebook runs from a temporary copy, in a temporary working directory, in a fresh `python3`
kernel on this interpreter (the venv's: a kernelspec written for the test comes first on
JUPYTER_PATH, so no user-level kernel is picked up). The kernel sees one CPU device as in Colab
(the tests' 8 virtual devices are not passed on) and `IBPRUNE_ROOT` = this checkout, which the
notebooks' set-up cell uses (notebooks/README.md). A cell error, more than TIMEOUT seconds for the
whole notebook, or no figure at all fails the test; the committed file is never written.
"""

import glob
import hashlib
import json
import os
import re
import shutil
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
TIMEOUT = 300  # seconds per notebook, every cell included (issue 19: <= 5 min on 2 CPU cores)
STARTUP = 120  # seconds for the kernel to come up on a loaded machine


def _kernel_env() -> dict[str, str]:
  env = dict(os.environ)
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
  if flags.strip():
    env["XLA_FLAGS"] = flags.strip()
  else:
    env.pop("XLA_FLAGS", None)
  env["IBPRUNE_ROOT"] = ROOT
  env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # ipykernel's debugger warns otherwise
  return env


def _python3_kernelspec(directory) -> str:
  """A `python3` kernelspec that starts ipykernel on this interpreter; returns its JUPYTER_PATH."""
  spec = os.path.join(directory, "kernels", "python3")
  os.makedirs(spec)
  argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
  with open(os.path.join(spec, "kernel.json"), "w") as f:
    json.dump({"argv": argv, "display_name": "Python 3 (ibprune)", "language": "python"}, f)
  return directory


def _digest(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def execute(path: str, workdir: str, timeout: float = TIMEOUT):
  """Runs a copy of the notebook at `path` in `workdir` (as the module docstring says); returns
  the executed notebook and its wall seconds. Raises nbclient's CellExecutionError on a cell
  error, CellTimeoutError past `timeout` seconds for the whole notebook."""
  import nbformat
  from nbclient import NotebookClient

  os.makedirs(workdir, exist_ok=True)
  copy = shutil.copy(path, os.path.join(workdir, os.path.basename(path)))
  nb = nbformat.read(copy, as_version=4)
  jupyter = _python3_kernelspec(os.path.join(workdir, ".jupyter"))
  deadline = time.monotonic() + timeout
  client = NotebookClient(
    nb,
    kernel_name="python3",
    startup_timeout=STARTUP,
    timeout_func=lambda source: max(1.0, deadline - time.monotonic()),
    resources={"metadata": {"path": workdir}},
  )
  saved = os.environ.get("JUPYTER_PATH")
  os.environ["JUPYTER_PATH"] = jupyter  # the kernelspec lookup happens in this process
  try:
    start = time.monotonic()
    client.execute(env=_kernel_env())
    return nb, time.monotonic() - start
  finally:
    if saved is None:
      os.environ.pop("JUPYTER_PATH", None)
    else:
      os.environ["JUPYTER_PATH"] = saved


def figures(nb) -> int:
  """How many PNG outputs the notebook's code cells hold."""
  return sum(
    "image/png" in o.get("data", {})
    for c in nb.cells
    if c.cell_type == "code"
    for o in c.get("outputs", [])
  )


@pytest.mark.notebooks
@pytest.mark.timeout(TIMEOUT + STARTUP + 60)  # a hung kernel still ends the test
@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_top_to_bottom(path, tmp_path):
  before = _digest(path)
  nb, seconds = execute(path, str(tmp_path / "work"))
  name = os.path.basename(path)
  assert seconds <= TIMEOUT, f"{name} took {seconds:.0f} s (> {TIMEOUT} s)"
  assert figures(nb), f"{name} shows no figure"
  assert _digest(path) == before, "the committed notebook was rewritten"


if __name__ == "__main__":
  # `python -m tests.test_notebooks notebooks/x.ipynb ...`: execute each and save it WITH its
  # outputs in place (what is committed); the test never writes.
  import tempfile

  import nbformat

  for nb_path in sys.argv[1:]:
    with tempfile.TemporaryDirectory() as tmp:
      executed, wall = execute(os.path.abspath(nb_path), tmp)
    nbformat.write(executed, nb_path)
    size = os.path.getsize(nb_path) / 1e6
    print(f"{nb_path}: executed in {wall:.1f} s, {figures(executed)} figure(s), {size:.2f} MB")
