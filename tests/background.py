"""Test helpers for compile-bound modules: XLA's optimisations off, and a module's tiny CLI run
started in the background so that it runs on the second core beside the in-process tests.

    fewer_compiler_optimisations = pytest.fixture(scope="module", autouse=True)(
      background.fewer_compiler_optimisations
    )

    @pytest.fixture(scope="module", autouse=True)
    def tiny_run(request, tmp_path_factory):
      yield from background.cli_run(request, tmp_path_factory, "test_e2e", "name", [...], devices=1)
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fewer_compiler_optimisations():
  """XLA's optimisations off while a module's tests compile: they are compile-bound (tiny
  models, a few calls each) and their tolerances hold either way (a third less CPU here)."""
  previous = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)


def cli_env(devices: int) -> dict[str, str]:
  """The environment of a background run: `devices` host devices, XLA's optimisations off (the
  same programs; values equal to float32 rounding); no assert depends on them."""
  return {
    **os.environ,
    "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
    "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
  }


def cli_run(request, tmp_path_factory, e2e_test: str, name: str, args, *, devices: int):
  """Starts `python -m <args> --workdir <tmp>` before the module's first test when `e2e_test`
  is selected; yields {"workdir", "cmd", "wait"} (wait() -> (returncode, stderr)), else None.
  The run is killed if the module ends first."""
  if not any(item.name == e2e_test for item in request.session.items):
    yield None
    return
  workdir = tmp_path_factory.mktemp(name)
  cmd = [sys.executable, "-m", *args, "--workdir", str(workdir)]
  log = tmp_path_factory.mktemp(f"{name}_log") / "stderr.txt"
  with open(log, "w") as err:  # a file, not a pipe: nobody reads it until the run is done
    proc = subprocess.Popen(
      cmd, cwd=ROOT, env=cli_env(devices), stdout=subprocess.DEVNULL, stderr=err
    )

  def wait():
    return proc.wait(timeout=900), log.read_text()

  yield {"workdir": workdir, "cmd": cmd, "wait": wait}
  if proc.poll() is None:
    proc.kill()
    proc.wait()
