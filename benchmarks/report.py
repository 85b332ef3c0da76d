"""Markdown tables for docs/benchmarks.md from the JSON lines of `benchmarks.run`.

    python -m benchmarks.report runs/bench/bench.jsonl [more.jsonl ...]

Prints (1) every measured case, (2) the issue's targets, each met or not with the measured
ratio, (3) the pruned-sampling speed-up against the MACs ratio and (4) 2-device scaling. Rows are
matched by case name, device count and batch size; the last row of a kind wins (re-runs).
"""

from __future__ import annotations

import json
import sys

from shared import cli
from shared.errors import ConfigError, DataError

# case, batch, metric (examples/s), target, peer label, peer value. From the performance issue
# and ../shared/research/peers.md (PyTorch references on one H200).
TARGETS = (
  ("mcae/mae_pretrain", 256, 6_700, "PyTorch torch.compile", 4_449),
  ("gradflow_prune/ddpm_train_bfloat16", 128, 5_000, "PyTorch fp32 (TF32)", 1_890),
  ("gradflow_prune/ddpm_train_float32", 128, 5_000, "PyTorch fp32 (TF32)", 1_890),
  ("gradflow_prune/forward_teacher", 256, 30_000, "PyTorch fp32 forward", 7_475),
  ("unlearnable/em_pgd_step", 512, 150_000, "PyTorch bf16", 50_267),
  ("unlearnable/victim_train_step", 512, 100_000, "PyTorch bf16", 47_782),
)
SCALING = (("mcae/mae_pretrain", 256), ("gradflow_prune/ddpm_train_bfloat16", 128))
SCALING_TARGET = 1.85
PRUNED_TARGET = 0.8  # issue 20: speed-up >= 0.8x the MACs ratio


def read_lines(path: str, what: str = "") -> list[dict]:
  """The JSON lines of one file (blank lines skipped), every one an object.

  Raises:
    DataError: the file cannot be read, or a line is not a JSON object; the message names the
      file (and `what` it should hold, e.g. "lines of `python -m benchmarks.run`") and the line.
  """
  hint = f" (expected: {what})" if what else ""
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
  rows = []
  for i, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(f"{path} line {i}: not JSON ({e}){hint}") from None
    if not isinstance(row, dict):
      raise DataError(f"{path} line {i}: not a JSON object{hint}")
    rows.append(row)
  return rows


def read(paths: list[str]) -> list[dict]:
  """The rows of every `benchmarks.run` JSON-lines file, in order."""
  return [r for path in paths for r in read_lines(path, "lines of `python -m benchmarks.run`")]


def _fmt(v, fmt):
  return "—" if v is None else fmt.format(v)


def _index(rows):
  return {(r["case"], r.get("devices", 1), r.get("batch_size")): r for r in rows}


def cases_table(rows: list[dict], ceiling: float | None) -> str:
  head = (
    "| case | dtype | devices | batch | step ms (median) | p10–p90 | examples/s | TFLOP/s "
    "| MFU (989) | of matmul ceiling | peak GiB | compile s |"
  )
  lines = [head, "|" + "---|" * 12]
  for r in rows:
    if r["case"].startswith("matmul"):
      continue
    tf = r.get("tflops_per_s")
    lines.append(
      "| "
      + " | ".join(
        [
          r["case"],
          str(r.get("dtype") or "—"),
          str(r.get("devices", 1)),
          str(r.get("batch_size")),
          _fmt(r.get("step_ms_median"), "{:.2f}"),
          f"{_fmt(r.get('step_ms_p10'), '{:.2f}')}–{_fmt(r.get('step_ms_p90'), '{:.2f}')}",
          _fmt(r.get("examples_per_s"), "{:,.0f}"),
          _fmt(tf, "{:.1f}"),
          _fmt(r.get("mfu_vs_datasheet"), "{:.1%}"),
          _fmt(tf / ceiling if (tf and ceiling) else None, "{:.1%}"),
          _fmt(r.get("peak_memory_gib"), "{:.1f}"),
          _fmt(r.get("compile_s"), "{:.0f}"),
        ]
      )
      + " |"
    )
  return "\n".join(lines)


def targets_table(rows: list[dict]) -> str:
  idx = _index(rows)
  lines = [
    "| case | batch | measured examples/s | target | met | ratio to target | peer | vs peer |",
    "|" + "---|" * 8,
  ]
  for case, batch, target, peer, peer_value in TARGETS:
    r = idx.get((case, 1, batch))
    got = r and r.get("examples_per_s")
    lines.append(
      f"| {case} | {batch} | {_fmt(got, '{:,.0f}')} | {target:,} | "
      + ("—" if not got else "yes" if got >= target else "**no**")
      + f" | {_fmt(got / target if got else None, '{:.2f}x')} | {peer} {peer_value:,} | "
      + f"{_fmt(got / peer_value if got else None, '{:.2f}x')} |"
    )
  return "\n".join(lines)


def pruned_table(rows: list[dict]) -> str:
  idx = _index(rows)
  teacher = idx.get(("gradflow_prune/forward_teacher", 1, 256))
  lines = [
    "| pruned forward | examples/s | speed-up vs teacher | MACs ratio (teacher / pruned) "
    f"| speed-up / MACs ratio | target {PRUNED_TARGET} met |",
    "|" + "---|" * 6,
  ]
  if not teacher:
    return "\n".join(lines)
  for r in rows:
    if not r["case"].startswith("gradflow_prune/forward_keep") or r.get("devices", 1) != 1:
      continue
    speed = r["examples_per_s"] / teacher["examples_per_s"]
    flops_t, flops_p = teacher.get("flops_per_step"), r.get("flops_per_step")
    macs = flops_t / flops_p if (flops_t and flops_p) else None
    eff = speed / macs if macs else None
    lines.append(
      f"| {r['case']} | {r['examples_per_s']:,.0f} | {speed:.2f}x | {_fmt(macs, '{:.2f}x')} | "
      + f"{_fmt(eff, '{:.2f}')} | "
      + ("—" if eff is None else "yes" if eff >= PRUNED_TARGET else "**no**")
      + " |"
    )
  return "\n".join(lines)


def scaling_table(rows: list[dict]) -> str:
  idx = _index(rows)
  lines = [
    "| case | 1 device (batch) | 2 devices (batch) | examples/s 1 → 2 | speed-up "
    "| target 1.85 met |",
    "|" + "---|" * 6,
  ]
  for case, batch in SCALING:
    one, two = idx.get((case, 1, batch)), idx.get((case, 2, 2 * batch))
    if not (one and two):
      continue
    s = two["examples_per_s"] / one["examples_per_s"]
    lines.append(
      f"| {case} | {batch} | {2 * batch} | {one['examples_per_s']:,.0f} → "
      + f"{two['examples_per_s']:,.0f} | {s:.2f}x | "
      + ("yes" if s >= SCALING_TARGET else "**no**")
      + " |"
    )
  return "\n".join(lines)


def report(rows: list[dict]) -> str:
  ceiling_rows = [r for r in rows if r["case"].startswith("matmul")]
  ceiling = ceiling_rows[-1]["tflops_per_s"] if ceiling_rows else None
  parts = []
  if ceiling:
    parts.append(
      f"Achieved bf16 matmul ceiling ({ceiling_rows[-1]['case']}): **{ceiling:.0f} TFLOP/s** "
      f"({ceiling * 1e12 / 989e12:.0%} of the 989 TFLOP/s datasheet peak)."
    )
  parts += [
    "### Every case\n\n" + cases_table(rows, ceiling),
    "### Targets (one device)\n\n" + targets_table(rows),
    "### Physically pruned U-Net: sampling forward, batch 256\n\n" + pruned_table(rows),
    "### Data parallel over 2 devices (global batch doubled)\n\n" + scaling_table(rows),
  ]
  extra = [r for r in rows if any(k.endswith("_50k_wall_s") for k in r)]
  for r in extra[-1:]:
    parts.append(
      "Projected wall time to protect 50,000 images (upper bound in rounds, from the timed PGD "
      f"and surrogate steps): EM {r['em_50k_wall_s'] / 60:.1f} min, TUE recipe "
      f"{r['tue_50k_wall_s'] / 60:.1f} min."
    )
  return "\n\n".join(parts)


USAGE = "usage: python -m benchmarks.report BENCH.jsonl [BENCH.jsonl ...]"


def main(argv=None) -> int:
  """Prints the tables; a missing or unreadable file is a DataError (one `error:` line, exit 2)."""
  argv = sys.argv if argv is None else list(argv)
  if len(argv) < 2:
    raise ConfigError(f"no BENCH.jsonl given; {USAGE}")
  paths = cli.run_folders(argv[1:], USAGE, __doc__.strip().splitlines()[0])
  if paths is None:  # --help
    return 0
  print(report(read(paths)))
  return 0


if __name__ == "__main__":
  sys.exit(cli.guarded(main))
