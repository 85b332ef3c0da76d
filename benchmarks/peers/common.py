"""What the PyTorch peers share: their flags, the timed loop, the JSON line and its table.

The line has the field names of `shared.benchmark.measure`'s rows (case, batch_size, steps,
step_ms_median, step_ms_p10, step_ms_p90, examples_per_s, compile_s, device_kind) plus peer,
torch_version, compiled, dtype and device_name, so `benchmarks.ratio` reads both sides alike.
Timing: every call is followed by a device synchronisation, as the JAX harness blocks on every
step; the first call (where `torch.compile` compiles) and `--warmup` more are not timed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from shared import cli
from shared.errors import ConfigError

DTYPES = ("float32", "bfloat16")


def parser(prog: str, about: str, whats: Sequence[str], dtype: str) -> argparse.ArgumentParser:
  """The flags every peer takes: `prog` is its module, `about` its docstring, `whats` its steps
  (all run by default), `dtype` its default autocast dtype."""
  p = cli.ArgumentParser(
    prog=f"python -m {prog}",
    description=about,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("--steps", type=int, default=20, help="timed calls after warm-up")
  p.add_argument("--warmup", type=int, default=5, help="untimed calls after the first")
  p.add_argument("--compile", action="store_true", help="torch.compile the model's forward + loss")
  p.add_argument("--batch", type=int, default=0, help="batch size; 0 = the JAX case's")
  p.add_argument("--dtype", choices=DTYPES, default=dtype, help=f"autocast dtype (default {dtype})")
  p.add_argument("--what", default=",".join(whats), help=f"comma-separated subset of {whats}")
  p.add_argument("--device", default="", help="cuda | cpu; default cuda where available")
  p.add_argument("--tiny", action="store_true", help="small widths, 2 steps (tests, on a CPU)")
  p.add_argument("--out", default="", help="append one JSON line per step here")
  p.whats = tuple(whats)
  return p


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
  args = p.parse_args(sys.argv[1:] if argv is None else list(argv))
  args.what = tuple(w for w in args.what.split(",") if w)
  unknown = [w for w in args.what if w not in p.whats]
  if unknown or not args.what:
    raise ConfigError(f"--what {','.join(unknown) or '(empty)'}: not one of {','.join(p.whats)}")
  if args.tiny:
    args.steps, args.warmup = 2, min(args.warmup, 1)
  if args.steps < 1 or args.warmup < 0 or args.batch < 0:
    raise ConfigError("--steps must be >= 1, --warmup and --batch >= 0")
  return args


def torch_setup(args):
  """(torch, device) with cuDNN autotuning and TF32 matmuls/convs on (JAX's default on GPUs)."""
  try:
    import torch
  except ImportError:
    raise ConfigError("the PyTorch peers need torch (not installed here)") from None
  name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
  if name == "cuda" and not torch.cuda.is_available():
    raise ConfigError("--device cuda: no CUDA device visible to torch")
  torch.backends.cudnn.benchmark = True
  torch.backends.cuda.matmul.allow_tf32 = True
  torch.backends.cudnn.allow_tf32 = True
  torch.manual_seed(0)
  return torch, torch.device(name)


def autocast(torch, device, dtype: str):
  """bf16 autocast (params stay float32, as the JAX side's), or a no-op for float32."""
  return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")


def time_calls(torch, device, step: Callable[[], Any], steps: int, warmup: int):
  """Per-call wall times (s) after `warmup` calls, and the first call's (compile) time."""
  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
  t0 = time.perf_counter()
  step()
  sync()
  compile_s = time.perf_counter() - t0
  for _ in range(warmup):
    step()
  sync()
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    step()
    sync()
    times.append(time.perf_counter() - t)
  return times, compile_s


def _percentile(xs: list[float], q: float) -> float:
  xs = sorted(xs)
  k = (len(xs) - 1) * q
  lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
  return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def row(torch, device, args, case: str, batch: int, examples: int, timed, **meta) -> dict:
  """One JSON-able line for a timed peer step."""
  times, compile_s = timed
  med = statistics.median(times)
  name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
  return {
    "case": case,
    "peer": "pytorch",
    "torch_version": torch.__version__,
    "compiled": bool(args.compile),
    "dtype": args.dtype,
    "devices": 1,
    "device_kind": name,
    "device_name": name,
    "batch_size": batch,
    "steps": len(times),
    "step_ms_median": 1e3 * med,
    "step_ms_p10": 1e3 * _percentile(times, 0.1),
    "step_ms_p90": 1e3 * _percentile(times, 0.9),
    "examples_per_s": examples / med,
    "compile_s": compile_s,
    "tiny": bool(args.tiny),
    **meta,
  }


def markdown(rows: list[dict]) -> str:
  lines = [
    "| case | compiled | dtype | batch | step ms (median) | examples/s |",
    "|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
      f"| {r['case']} | {'yes' if r['compiled'] else 'no'} | {r['dtype']} | {r['batch_size']} "
      f"| {r['step_ms_median']:.2f} | {r['examples_per_s']:,.0f} |"
    )
  return "\n".join(lines)


def emit(rows: list[dict], out: str) -> None:
  """Prints each row as a JSON line (appended to `out` too), then the table."""
  for r in rows:
    line = json.dumps(r)
    print(line, flush=True)
    if out:
      with open(out, "a") as f:
        f.write(line + "\n")
  print(markdown(rows))


def run(main: Callable[[Sequence[str] | None], int]) -> None:
  sys.exit(cli.guarded(main))
