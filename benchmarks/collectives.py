"""The collectives in a method's compiled data-parallel step: what crosses devices, and how much.

    python -m benchmarks.collectives --config configs/gradflow_prune.py:paper --what train_step

Compiles each case of `--what` for `--devices` virtual CPU devices (no accelerator needed) and
counts the all-reduce / all-gather / reduce-scatter / all-to-all / collective-permute ops of the
SPMD-partitioned program and the elements they move. A data-parallel train step should show the
gradient all-reduce (elements = parameter count) and nothing proportional to the activations;
anything else is resharding to look into.
"""

from __future__ import annotations

import collections
import os
import re
import sys

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_OP = re.compile(
  r"\s*(?:ROOT )?%\S+ = (.*?) (" + "|".join(COLLECTIVES) + r")(?:-start)?\(",
)
_SHAPE = re.compile(r"\w+\[([\d,]*)\]")


def count(hlo_text: str) -> dict[str, dict[str, int]]:
  """{collective: {'ops': n, 'elements': total elements of its results}} of optimised HLO text."""
  ops, elements = collections.Counter(), collections.Counter()
  for line in hlo_text.splitlines():
    m = _OP.match(line)
    if not m:
      continue
    kind = m.group(2)
    ops[kind] += 1
    for dims in _SHAPE.findall(m.group(1)):
      n = 1
      for d in filter(None, dims.split(",")):
        n *= int(d)
      elements[kind] += n
  return {k: {"ops": ops[k], "elements": elements[k]} for k in ops}


USAGE = (
  "usage: python -m benchmarks.collectives --config configs/<method>.py[:variant] [--what W] "
  "[--devices N] [--per_device_batch B]"
)


def main(argv=None) -> int:
  from absl import flags
  from ml_collections import config_flags

  from shared import cli
  from shared.errors import ConfigError

  argv = sys.argv if argv is None else list(argv)
  config_flags.DEFINE_config_file("config", None, "Method config file[:variant].", lock_config=True)
  flags.DEFINE_string("what", "train_step", "Which cases (as benchmarks.run).")
  flags.DEFINE_integer("devices", 2, "Virtual CPU devices (set before JAX starts).")
  flags.DEFINE_integer("per_device_batch", 2, "Examples per device.")
  if cli.printed_help(argv, USAGE, __doc__, flags.FLAGS, __name__):
    return 0
  config = cli.parse_config_flags(flags.FLAGS, argv)
  fl = flags.FLAGS
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={fl.devices}"
  )
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax

  from benchmarks.cases import BENCH_MODULES

  if config is None:
    raise ConfigError(f"--config is required; {USAGE}")
  method = config.get("method")
  if method not in BENCH_MODULES:
    raise ConfigError(f"no benchmark cases for method {method!r}; known: {sorted(BENCH_MODULES)}")
  cases = BENCH_MODULES[method]().cases(config, fl.what, fl.per_device_batch * fl.devices)
  for c in cases:
    text = c.step.lower(*c.args).compile().as_text()
    params = c.meta.get("params")
    print(f"{c.name} on {jax.device_count()} devices (params: {params}): {count(text)}")
  return 0


if __name__ == "__main__":
  from shared import cli

  sys.exit(cli.guarded(main))
