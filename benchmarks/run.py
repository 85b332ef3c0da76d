"""Times a method's real jitted step on whatever devices JAX sees.

    python -m benchmarks.run --config configs/mcae.py:paper --what train_step --steps 20
    python -m benchmarks.run --matmul                      # the achieved bf16 matmul ceiling

Writes one JSON line per case to --out (default: stdout only) and prints a markdown table.
`--help` lists the flags; bad input (an unknown flag, method or --what, no --config) is one line
`error: ...`, exit code 2 (`shared.cli.guarded`).
"""

from __future__ import annotations

import json
import sys

from absl import flags
from ml_collections import config_flags

from benchmarks.cases import BENCH_MODULES
from benchmarks.report import read_lines
from shared import benchmark as harness
from shared import cli
from shared.errors import ConfigError, DataError

config_flags.DEFINE_config_file("config", None, "Method config file[:variant].", lock_config=True)
flags.DEFINE_string("what", "train_step", "train_step | sample | perturb (per method).")
flags.DEFINE_integer("steps", 20, "Timed calls after warm-up.")
flags.DEFINE_integer("warmup", 5, "Untimed calls after the compiling one.")
flags.DEFINE_integer("batch", 0, "Global batch size; 0 = the method's paper-scale default.")
flags.DEFINE_bool("flops", True, "Count FLOPs by lowering the step for the CPU backend.")
flags.DEFINE_bool("matmul", False, "Only time the bf16 n^3 matmul ceiling.")
flags.DEFINE_integer("matmul_n", 8192, "Matrix size for --matmul.")
flags.DEFINE_string("out", "", "Append JSON lines here.")
flags.DEFINE_bool("count_only", False, "Only count FLOPs per step (on the CPU), no timing.")
flags.DEFINE_string("label", "", "Suffix for case names, e.g. 'cudnn' -> 'mcae/x[cudnn]'.")
flags.DEFINE_string(
  "flops_from", "", "JSON lines of a --count_only run: FLOPs per (case, batch) for MFU."
)
FLAGS = flags.FLAGS
USAGE = (
  "usage: python -m benchmarks.run --config configs/<method>.py[:variant] [--what W] "
  "[--steps N] [--batch B] [--out FILE] [--count_only] | --matmul [--matmul_n N]"
)

COLUMNS = (
  ("case", "case", "{}"),
  ("batch_size", "batch", "{}"),
  ("step_ms_median", "step ms (median)", "{:.2f}"),
  ("step_ms_p10", "p10", "{:.2f}"),
  ("step_ms_p90", "p90", "{:.2f}"),
  ("examples_per_s", "examples/s", "{:,.0f}"),
  ("tflops_per_s", "TFLOP/s", "{:.1f}"),
  ("mfu_vs_datasheet", "MFU", "{:.1%}"),
  ("peak_memory_gib", "peak GiB", "{:.1f}"),
)


def markdown(rows: list[dict]) -> str:
  lines = ["| " + " | ".join(title for _, title, _ in COLUMNS) + " |"]
  lines.append("|" + "---|" * len(COLUMNS))
  for r in rows:
    cells = []
    for key, _, fmt in COLUMNS:
      v = r.get(key)
      cells.append("—" if v is None else fmt.format(v))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def run(config, what: str, steps: int, warmup: int, batch: int, flops: bool) -> list[dict]:
  method = config.get("method")
  if method not in BENCH_MODULES:
    raise ConfigError(f"no benchmark cases for method {method!r}; known: {sorted(BENCH_MODULES)}")
  module = BENCH_MODULES[method]()
  cases = module.cases(config, what, batch or None)
  if FLAGS.count_only:
    rows = []
    for c in cases:
      const, per_example = harness.flops_affine(c) or (None, None)
      total = None if const is None else const + per_example * c.batch_size
      rows.append(
        {
          "case": c.name,
          "batch_size": c.batch_size,
          "flops_per_step": total,
          "flops_const": const,
          "flops_per_example": per_example,
        }
      )
    return rows
  known = _read_flops(FLAGS.flops_from) if FLAGS.flops_from else {}
  rows = []
  for c in cases:
    row = harness.measure(c, steps=steps, warmup=warmup, count=flops and not known)
    if c.name in known:
      const, per_example = known[c.name]
      harness.add_flops(row, const + per_example * c.batch_size)
    if FLAGS.label:
      row["case"] = f"{row['case']}[{FLAGS.label}]"
    rows.append(row)
  summarize = getattr(module, "summarize", None)
  return summarize(config, rows) if summarize else rows


def _read_flops(path: str) -> dict[str, tuple[float, float]]:
  """case -> (constant, per-example) FLOPs from a --count_only run (any batch size follows)."""
  try:
    rows = read_lines(path, "lines of `python -m benchmarks.run --count_only`")
  except DataError as e:
    raise ConfigError(f"--flops_from: {e}") from None
  return {
    r["case"]: (r["flops_const"], r["flops_per_example"])
    for r in rows
    if r.get("flops_per_example") is not None
  }


def _parse(argv: list[str]):
  """Parses the flags; the config file is loaded here, so a bad one fails before any timing."""
  config = cli.parse_config_flags(FLAGS, argv)
  if config is None and not FLAGS.matmul:
    raise ConfigError(f"--config is required (or --matmul); {USAGE}")
  return config


def main(argv=None) -> int:
  argv = sys.argv if argv is None else list(argv)
  if cli.printed_help(argv, USAGE, __doc__, FLAGS, __name__):
    return 0
  config = _parse(argv)
  if FLAGS.matmul:
    rows = [harness.matmul_ceiling(FLAGS.matmul_n)]
  else:
    rows = run(config, FLAGS.what, FLAGS.steps, FLAGS.warmup, FLAGS.batch, FLAGS.flops)
  for r in rows:
    line = json.dumps(r)
    print(line)
    if FLAGS.out:
      with open(FLAGS.out, "a") as f:
        f.write(line + "\n")
  if not (FLAGS.matmul or FLAGS.count_only):
    print(markdown(rows))
  return 0


if __name__ == "__main__":
  sys.exit(cli.guarded(main))
