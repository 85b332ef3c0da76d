"""The entry point of every method.

    python -m <pkg> --config configs/<pkg>.py[:variant] --workdir DIR [--config.x=y]

Each package's `__main__.py` is two lines:

    from mcae.train import train_and_evaluate
    shared.app.main("mcae", train_and_evaluate)

What this does, in order: parse flags (ml_collections config file, locked, `--config.x=y`
overrides), check `config.method`, start `jax.distributed` when launched as several processes,
check the config's values against the devices (`shared.validate`), and only then write: create
the workdir, take its lock (`shared.run_lock`: one process per workdir), refuse a workdir that
holds a different run (`config.json`, and the run manifests of `shared.manifest`, which also
hold when config.json is gone), write `config.json`, call `train_and_evaluate(config, workdir)`
with the config's hash active (every checkpoint folder and sub-run result is tied to it), write
`results.json`. `--dry_run` stops after the checks, having written nothing.

Any `shared.errors.UserError` (and any flag or config parsing problem) ends the process with one
line `error: ...` on stderr and exit code 2, without a traceback. A SIGTERM ends it with exit code
143 once the state is checkpointed; re-running the same command resumes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from shared import cli, manifest, validate
from shared import workdir as workdir_lib
from shared.errors import ConfigError, UserError
from shared.run_lock import WorkdirLock

TrainFn = Callable[[Any, str], Mapping[str, Any]]
EXIT_USER_ERROR = cli.EXIT_USER_ERROR
EXIT_PREEMPTED = 143
_fail = cli.fail  # one line, whatever the exception text; exit code 2


def _define_flags():
  from absl import flags
  from ml_collections import config_flags

  if "workdir" not in flags.FLAGS:
    config_flags.DEFINE_config_file(
      "config", None, "Config file, optionally with ':variant,key=value'.", lock_config=True
    )
    flags.DEFINE_string("workdir", None, "Where config, checkpoints, metrics and results go.")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
    flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
    flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
    flags.DEFINE_bool(
      "dry_run", False, "Check the flags and the config's values, then exit; writes nothing."
    )
  return flags.FLAGS


USAGE = (
  "python -m {method} --config configs/{method}.py[:variant[,key=value...]] --workdir DIR "
  "[--config.field=value ...] [--coordinator_address host:port --num_processes N --process_id i] "
  "[--dry_run]"
)


def _parse(argv: Sequence[str], method: str = "<pkg>"):
  flags = _define_flags()
  if any(a in ("--help", "-h", "--helpfull", "-?") for a in argv[1:]):
    print(f"usage: {USAGE.format(method=method)}\n")
    print(flags.module_help(__name__) if hasattr(flags, "module_help") else flags.get_help())
    print(
      "\n  --config.<field>=<value>: override any field of the config file (a misspelt field "
      "is an error); see the config file's docstring for its variants."
    )
    sys.exit(0)
  try:
    flags(list(argv))
    config = flags.config  # the config file is loaded (and overrides applied) on first access
    if config is not None:
      config.to_json_best_effort()  # forces a lazily failed load to raise here
  except SystemExit:
    raise
  except Exception as e:  # absl / ml_collections raise several types for bad flags and configs
    cause = e.__cause__ or e.__context__
    if isinstance(cause, UserError):  # a ConfigError raised inside get_config
      _fail(str(cause))
    _fail(str(e))
  if config is None:
    _fail("--config is required, e.g. --config configs/<method>.py:tiny")
  if not flags.workdir and not flags.dry_run:
    _fail("--workdir is required")
  return flags, config


def _maybe_initialize_distributed(flags) -> None:
  """jax.distributed.initialize() when this is one of several processes."""
  import jax

  if flags.num_processes and flags.num_processes > 1:
    if flags.coordinator_address is None or flags.process_id is None:
      _fail("--num_processes > 1 needs --coordinator_address and --process_id")
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
      # CPU processes need a collectives backend to form one global mesh.
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      flags.coordinator_address, num_processes=flags.num_processes, process_id=flags.process_id
    )
    return
  cluster_env = (
    int(os.environ.get("SLURM_NTASKS", "1")) > 1
    or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    or "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
    or "JAX_COORDINATOR_ADDRESS" in os.environ
  )
  if cluster_env:
    jax.distributed.initialize()


def versions() -> dict[str, str]:
  """Versions of the packages a result depends on, and the code's git commit when known."""
  from importlib import metadata

  out = {"python": platform.python_version()}
  for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"):
    with contextlib.suppress(metadata.PackageNotFoundError):
      out[name] = metadata.version(name)
  try:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out["git"] = subprocess.run(
      ["git", "-C", root, "rev-parse", "--short", "HEAD"],
      capture_output=True,
      text=True,
      timeout=5,
    ).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    pass
  return out


def _check_workdir_writable(workdir: str) -> None:
  """Creates the workdir; one that cannot be created or written is a ConfigError, not a trace."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f"--workdir {workdir} is a file, not a folder")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"cannot create --workdir {workdir}: {e.strerror or e}") from None
  if not os.path.isdir(workdir):
    raise ConfigError(f"--workdir {workdir} is not a folder")
  try:  # a real write: permission bits alone do not tell (root, read-only mounts)
    with tempfile.TemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise ConfigError(f"--workdir {workdir} is not writable: {e.strerror or e}") from None


def _check_workdir_config(workdir: str, config_dict: dict) -> None:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      previous = json.load(f)
  except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ConfigError(
      f"{path} is unreadable ({e}); delete it and re-run the same command (the run manifests "
      "still tie the checkpoints to their config)"
    ) from None
  if previous != config_dict:
    diff = sorted(_diff_keys(previous, config_dict))
    raise ConfigError(
      f"{workdir} holds a run with a different config (differs in: {', '.join(diff[:8])}); "
      "re-run with the same flags to resume it, or choose a new --workdir"
    )


def _diff_keys(a, b, prefix=""):
  if not (isinstance(a, dict) and isinstance(b, dict)):
    return [prefix.rstrip(".") or "(root)"] if a != b else []
  out = []
  for key in sorted(set(a) | set(b)):
    out += _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")
  return out


def write_json(path: str, payload: Mapping[str, Any]) -> None:
  """Atomic JSON write (see `shared.workdir.write_json`); the entry point writes on process 0."""
  workdir_lib.write_json(path, payload, every_process=True)


def check(method: str, config) -> dict:
  """The checks that come before any write: method, values, devices; returns the config dict."""
  if "method" not in config:
    raise ConfigError("config has no 'method' field")
  if config.method != method:
    raise ConfigError(
      f"config.method={config.method!r} but this is `python -m {method}`; "
      f"use configs/{method}.py or run `python -m {config.method}`"
    )
  validate.check_config(config)
  return json.loads(config.to_json_best_effort())


def run(method: str, train_and_evaluate: TrainFn, config, workdir: str) -> dict[str, Any]:
  """Runs one method in-process (what `main` does after parsing); returns results.json's content."""
  import jax

  config_dict = check(method, config)
  logging.info(
    "process %d/%d, devices: %s", jax.process_index(), jax.process_count(), jax.devices()
  )
  logging.info("config:\n%s", config)
  _check_workdir_writable(workdir)
  lock = WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
  with lock:
    config_hash = manifest.fingerprint(config_dict)
    _check_workdir_config(workdir, config_dict)
    manifest.check_workdir(workdir, config_hash)
    records = [os.path.join(workdir, n) for n in ("config.json", manifest.MANIFEST)]
    new_records = [p for p in records if not os.path.exists(p)]
    if jax.process_index() == 0:
      write_json(records[0], config_dict)
    with manifest.active(config_hash):
      start = time.time()
      try:
        manifest.check_folder(workdir)
        metrics = dict(train_and_evaluate(config, workdir) or {})
      except (manifest.ConfigMismatch, ConfigError):
        # A mismatch found only once running (the manifests were deleted), or a config the
        # method's own checks refuse: the records this call wrote go back to none, so the
        # corrected command can use the same workdir.
        for path in new_records if jax.process_index() == 0 else ():
          with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        raise
    results = {
      "method": method,
      "variant": config_dict.get("variant"),
      "seed": config_dict.get("seed"),
      "metrics": metrics,
      "config": config_dict,
      "config_hash": config_hash,
      "versions": versions(),
      "devices": {
        "platform": jax.default_backend(),
        "kind": jax.devices()[0].device_kind,
        "count": jax.device_count(),
        "processes": jax.process_count(),
      },
      "wall_time_s": round(time.time() - start, 2),
    }
    if jax.process_index() == 0:
      write_json(os.path.join(workdir, "results.json"), results)
  return results


def main(method: str, train_and_evaluate: TrainFn, argv: Sequence[str] | None = None) -> None:
  """Parses flags, runs, and maps user errors to exit code 2 (preemption to 143)."""
  from shared.train_lib import Preempted

  argv = sys.argv if argv is None else argv
  logging.basicConfig(
    level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
  )
  logging.getLogger("absl").setLevel(logging.WARNING)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  flags, config = _parse(argv, method)
  try:
    _maybe_initialize_distributed(flags)
    if flags.dry_run:
      check(method, config)
      print(f"{method}: config OK ({config.get('variant', 'default')}); nothing written")
      return
    results = run(method, train_and_evaluate, config, flags.workdir)
  except UserError as e:
    _fail(str(e))
  except OSError as e:  # the file system said no mid-run (disk full, permissions changed)
    where = f"{e.filename}: " if e.filename else ""
    _fail(f"{where}{e.strerror or e}; check the path, space and permissions, then re-run")
  except Preempted as e:
    print(f"preempted: {e}", file=sys.stderr, flush=True)
    sys.exit(EXIT_PREEMPTED)
  summary = ", ".join(
    f"{k}={v:.4g}" for k, v in results["metrics"].items() if isinstance(v, int | float)
  )
  print(f"{method}: done in {results['wall_time_s']:.1f}s; {summary or 'see results.json'}")
