"""Where a method's jitted step spends its device time: a `jax.profiler` trace, per op class.

    python -m benchmarks.profile --config configs/mcae.py:paper --what train_step --trace_dir T
    python -m benchmarks.profile --config configs/gradflow_prune.py:paper --what sample --steps 5
        --only forward_ --trace_dir runs/prof/traces --out runs/prof/profile.jsonl
    python -m benchmarks.profile --from_trace runs/prof/traces/gradflow_prune_ddpm_train_bfloat16

The step is the one `benchmarks.run` times (the method's `bench.cases`, `shared.benchmark.Case`):
compiled and warmed up untraced, then `--steps` calls traced, each blocked and marked with a
`StepTraceAnnotation`. The perfetto trace written under `<trace_dir>/<case>/plugins/profile/<run>/`
is read back and its device time split into classes (`classify`): gemm (GEMMs and convolutions),
attention, elementwise (norm, reduce and other fusions), optimizer, copy, collective, other, and
idle (the step's wall time outside every device op). Time where ops overlap (several streams) is
split evenly among them, so the classes add up to the step. One JSON line per case is appended to
--out and a markdown table printed. `--from_trace PATH` summarises a trace already written.

Which events are "device" ops: on a GPU, the kernels and memcpys on the `Stream #...` threads of the
first `/device:GPU:N` process (not its derived `XLA Ops` / `XLA Modules` / `Steps` lines, which
repeat them); on a device without stream lines, its `XLA Ops` line; on the CPU, the XLA thunks
(events whose args carry `hlo_op`) of the lowest `device_ordinal`, nested ones (a `while` and its
body) counted once, in the innermost. docs/benchmarks.md ("Profiling and peers") lists the rules.

Name stacks (the "optimizer" class and the grad-step rule need each op's JAX name stack): a trace
carries them in its events' args (`tf_op`, ...) only where XLA launched the op by itself. On the
GPU XLA runs nearly every kernel inside CUDA graphs (command buffers): each kernel event then says
`hlo_op: command_buffer_N`, `tf_op: XlaModule:`, and only its name is the HLO instruction's
(`loop_multiply_fusion_42` for `loop_multiply_fusion.42`); the CPU's thunks carry no stack at all.
So `profile` also reads the case's optimized HLO, `case.step.lower(*case.args).compile().as_text()`,
and maps each instruction (outside fusion bodies) to its metadata op_name, per HLO module
(`hlo_op_names`). That call hits JAX's in-memory lowering and compilation caches (the step was
just compiled for the same arguments): no recompilation, a few ms on the CPU (`hlo_names_s` in the
JSON line), where XLA's dump flags (`--xla_dump_to`) would have to be set before the backend starts
and write every module of the process. A step that is no jitted function (a Python wrapper around
one, e.g. gradflow_prune's sampler) has no `.lower`: its ops keep only the stacks the trace has.
The map is saved as `<trace_dir>/<case>/hlo_op_names.json`; `--from_trace` reads the one beside
the trace (in the trace's folder or one above it, up to the case's folder) or `--hlo_names FILE`.
An event without a stack of its own (or inside a command buffer) takes its kernel's, then its
`hlo_op`'s, from the map; library kernels (cuBLAS, cuDNN: `sm90_xmma_...`) are not HLO names and
keep their class by name. The JSON line's `name_stacks` says where the stacks came from: "trace
args", "compiled HLO", both ("trace args + compiled HLO") or "none".

Bad input (unknown --what, no --config, an unreadable trace) is one line `error: ...`, exit 2.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
import statistics
import sys
import time
from collections import defaultdict

from absl import flags
from ml_collections import config_flags

from shared import cli
from shared.errors import ConfigError, DataError

CLASSES = ("gemm", "attention", "elementwise", "optimizer", "copy", "collective", "other", "idle")
STEP_MARKER = "ibprune_profile_step"
TOP_KERNELS = 15

# Lines of a device process that xprof derives from the kernels (they repeat their time).
DERIVED_LINES = (
  "Steps",
  "XLA Modules",
  "XLA Ops",
  "Async XLA Ops",
  "XLA TraceMe",
  "Framework Ops",
  "TensorFlow Ops",
  "Framework Name Scope",
  "TensorFlow Name Scope",
  "Source code",
  "Launch Stats",
)

# Matched against the lower-cased kernel name and its `hlo_op`, in this order (first match wins).
_COLLECTIVE = re.compile(
  r"nccl|rccl|all[-_]?reduce|all[-_]?gather|reduce[-_]?scatter|collective[-_]permute|all[-_]to[-_]all"
)
_ATTENTION = re.compile(r"flash|fmha|sdpa|attention|attn|softmax")
_GEMM = re.compile(
  r"gemm|cublas|cutlass|xmma|wgmma|hmma|nvjet|matmul|cudnn|cijk|winograd|implicit_convolve"
  r"|sm\d{2,3}_|(?<![a-z])dot|conv(?!ert)"
)
_COPY = re.compile(
  r"memcpy|memset|copy|transpose|concatenate|dynamic[-_]update[-_]slice|nchwtonhwc|nhwctonchw"
)
_ELEMENTWISE = re.compile(
  r"fusion|reduce|norm|elementwise|broadcast|select|convert|wrapped|^loop|^input|triton"
)
# A name-stack component that names the update (`TrainState.apply_gradients` runs it under
# `jax.named_scope("optimizer")`).
_OPTIMIZER = re.compile(r"(^|[/(])(optimizer|apply_gradients|optax|adamw?|sgd|ema)(?=[/()\s]|$)")
# Arguments of a kernel event that may carry its JAX name stack (the HLO op's metadata op_name);
# `long_name` is the HLO text, whose metadata={op_name="..."} holds it.
_NAME_STACK_KEYS = ("tf_op", "op_name", "name", "scope")
_OP_NAME_IN_HLO = re.compile(r'op_name="([^"]*)"')


def name_stack(args: dict) -> str:
  """The JAX name stack(s) an event's args carry ("jit(step)/transpose(jvp(UNet))/..."), or ""."""
  parts = [
    str(args[k]) for k in _NAME_STACK_KEYS if isinstance(args.get(k), str) and "/" in args[k]
  ]
  parts += _OP_NAME_IN_HLO.findall(str(args.get("long_name", "")))
  return " ".join(parts)


def classify(
  name: str,
  args: dict,
  *,
  grad_step: bool = False,
  hlo_names: dict | None = None,
  stack: str | None = None,
) -> str:
  """The op class of one device event, from its kernel name and its trace args.

  Args:
    name: the event's name (a GPU kernel's name, or an XLA CPU thunk's HLO op name).
    args: the event's args (`hlo_op`, `tf_op`, ... where the trace has them).
    grad_step: the step differentiates something (some op's name stack has `transpose(jvp(`): an
      elementwise op whose name stack lies outside the differentiated function (no `jvp(` and no
      `transpose(` in it) is the update that follows the gradient (optimizer, EMA, the gradient
      norm; a PGD step's signed update and projection).
    hlo_names: {HLO module: {instruction: op_name}} (`hlo_op_names`) for events whose args carry
      no name stack of their own (`event_stack`).
    stack: the event's name stack when the caller already has it (`event_stack`'s first item);
      None = look it up here.

  Returns:
    One of CLASSES other than "idle".
  """
  text = f"{name} {args.get('hlo_op', '')}".lower()
  if _COLLECTIVE.search(text):
    return "collective"
  if _ATTENTION.search(text):
    return "attention"
  if _GEMM.search(text):
    return "gemm"
  if _COPY.search(text):
    return "copy"
  if stack is None:
    stack = event_stack(name, args, hlo_names)[0]
  if _OPTIMIZER.search(stack.lower()):
    return "optimizer"
  base = "elementwise" if _ELEMENTWISE.search(text) else "other"
  if grad_step and base == "elementwise" and stack and "jvp(" not in stack:
    return "optimizer"  # the backward pass's ops are under "transpose(jvp(...))" too
  return base


# ----------------------------------------------------------------------------------------------
# Name stacks from the compiled HLO (see the module docstring)

HLO_NAMES_FILE = "hlo_op_names.json"
_COMMAND_BUFFER = re.compile(r"command[-_]buffer")
_HLO_MODULE_LINE = re.compile(r"HloModule\s+([^\s,]+)")
_HLO_COMPUTATION_LINE = re.compile(r"(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_HLO_INSTRUCTION_LINE = re.compile(r"\s+(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_HLO_FUSION_CALLS = re.compile(r"\sfusion\(.*?\bcalls=%?([\w.\-]+)")
_HLO_OP_NAME = re.compile(r'metadata=\{[^{}]*?\bop_name="((?:[^"\\]|\\.)*)"')


def hlo_key(name: str) -> str:
  """An HLO instruction's name as its GPU kernel is named: `%loop_add_fusion.4` ->
  `loop_add_fusion_4` (no '%', '.' and '-' as '_')."""
  return re.sub(r"[.\-]", "_", name.strip().lstrip("%"))


def hlo_op_names(text: str) -> dict[str, dict[str, str]]:
  """{HLO module: {instruction (`hlo_key`): its metadata op_name}} of optimized HLO text.

  Only instructions outside fusion bodies (the ones a kernel or thunk is named after) with a
  non-empty op_name; parameters are left out (their op_name is the argument's path).
  """
  modules: dict[str, list] = {}  # module -> [(computation, instruction, rest of its line)]
  module, computation = "", ""
  for line in text.splitlines():
    if m := _HLO_MODULE_LINE.match(line):
      module, computation = m.group(1), ""
      modules.setdefault(module, [])
    elif m := _HLO_COMPUTATION_LINE.match(line):
      computation = m.group(1)
    elif computation and (m := _HLO_INSTRUCTION_LINE.match(line)):
      modules.setdefault(module, []).append((computation, m.group(1), m.group(2)))
  out: dict[str, dict[str, str]] = {}
  for module, instructions in modules.items():
    fused = {m.group(1) for _, _, rest in instructions if (m := _HLO_FUSION_CALLS.search(rest))}
    names = out.setdefault(module, {})
    for computation, name, rest in instructions:
      if computation in fused or " parameter(" in f" {rest}":
        continue
      if (m := _HLO_OP_NAME.search(rest)) and m.group(1):
        names[hlo_key(name)] = re.sub(r"\\(.)", r"\1", m.group(1))
  return out


def case_hlo_op_names(case) -> dict[str, dict[str, str]] | None:
  """`hlo_op_names` of the executable `case.step` runs for `case.args`, or None where the step
  has no `.lower` (no jitted function) or lowering it fails. For a step already called with these
  arguments this reuses JAX's cached lowering and executable: nothing is compiled again."""
  lower = getattr(case.step, "lower", None)
  if lower is None:
    return None
  try:
    text = lower(*case.args).compile().as_text()
  except Exception:  # a step that lowers differently outside a call: no map, the trace's stacks
    return None
  return hlo_op_names(text) if text else None


def save_hlo_names(path: str, names: dict[str, dict[str, str]]) -> None:
  with open(path, "w") as f:
    json.dump({"source": "compiled HLO", "modules": names}, f, indent=1, sort_keys=True)


def load_hlo_names(path: str) -> dict[str, dict[str, str]]:
  """A map `save_hlo_names` wrote ({"modules": {module: {instruction: op_name}}})."""
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    raise DataError(f"HLO op names {path}: {e}") from None
  modules = data.get("modules") if isinstance(data, dict) else None
  if not isinstance(modules, dict) or not all(isinstance(v, dict) for v in modules.values()):
    raise DataError(f"HLO op names {path}: no {{'modules': {{module: {{op: name}}}}}} in it")
  return modules


def find_hlo_names(trace: str, levels: int = 4) -> str | None:
  """The `HLO_NAMES_FILE` beside a trace file: in its folder or one of the `levels` above it
  (a case's folder holds `plugins/profile/<run>/<trace>`), the nearest first."""
  folder = os.path.dirname(os.path.abspath(trace))
  for _ in range(levels + 1):
    candidate = os.path.join(folder, HLO_NAMES_FILE)
    if os.path.isfile(candidate):
      return candidate
    folder = os.path.dirname(folder)
  return None


def event_stack(name: str, args: dict, hlo_names: dict | None = None) -> tuple[str, str]:
  """An event's name stack and where it came from ("trace args", "compiled HLO" or "none").

  Its own args' stack (`name_stack`) unless it has none or it ran inside a command buffer (whose
  args describe the buffer, not the kernel); then its kernel's name, else its `hlo_op`, looked up
  in `hlo_names` (`hlo_op_names`), in its `hlo_module` where the map has that module, else in all.
  """
  own = name_stack(args)
  hlo_op = str(args.get("hlo_op", ""))
  in_buffer = bool(_COMMAND_BUFFER.match(hlo_op))
  if own and not in_buffer:
    return own, "trace args"
  if hlo_names:
    module = args.get("hlo_module")
    tables = [hlo_names[module]] if module in hlo_names else list(hlo_names.values())
    keys = [hlo_key(name)] + ([hlo_key(hlo_op)] if hlo_op and not in_buffer else [])
    for key in keys:
      for table in tables:
        if table.get(key):
          return table[key], "compiled HLO"
  return "", "none"


# ----------------------------------------------------------------------------------------------
# Reading a trace


def find_trace(path: str) -> str:
  """The trace file at `path`: the file itself, or the newest run's under it (a case's folder,
  `plugins/profile/<run>`, ...), its `perfetto_trace.json.gz` before any `*.trace.json.gz`."""
  if os.path.isfile(path):
    return path
  if not os.path.isdir(path):
    raise DataError(f"trace {path!r}: no such file or directory")
  found = []
  for pattern in ("perfetto_trace.json.gz", "*.trace.json.gz", "*.trace.json"):
    found += glob.glob(os.path.join(path, "**", pattern), recursive=True)
  if not found:
    raise DataError(f"trace {path!r}: no perfetto_trace.json.gz or *.trace.json.gz under it")
  # Run folders are named by their start time (YYYY_MM_DD_HH_MM_SS): the newest name wins.
  newest = max((os.path.basename(os.path.dirname(f)), os.path.dirname(f)) for f in found)[1]
  in_newest = sorted(f for f in found if os.path.dirname(f) == newest)
  perfetto = [f for f in in_newest if os.path.basename(f) == "perfetto_trace.json.gz"]
  return (perfetto or in_newest)[0]


def read_events(path: str) -> list[dict]:
  """The `traceEvents` of a Chrome/perfetto JSON trace (gzipped or not)."""
  try:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
      data = json.load(f)
  except (OSError, EOFError, ValueError) as e:
    raise DataError(f"trace {path}: {e}") from None
  events = data.get("traceEvents") if isinstance(data, dict) else data
  if not isinstance(events, list):
    raise DataError(f"trace {path}: no traceEvents list")
  return events


def _names(events: list[dict]) -> tuple[dict, dict]:
  procs, threads = {}, {}
  for e in events:
    if e.get("ph") != "M":
      continue
    label = (e.get("args") or {}).get("name", "")
    if e.get("name") == "process_name":
      procs[e.get("pid")] = label
    elif e.get("name") == "thread_name":
      threads[(e.get("pid"), e.get("tid"))] = label
  return procs, threads


def _complete(events):
  return [e for e in events if e.get("ph") == "X" and "ts" in e and e.get("dur") is not None]


def device_events(events: list[dict]) -> tuple[list[dict], str]:
  """The device ops of the first device in the trace, and where they were read from."""
  procs, threads = _names(events)
  spans = _complete(events)
  accel = sorted(
    (int(m.group(2)), m.group(1), pid)
    for pid, label in procs.items()
    if (m := re.match(r"/device:(GPU|TPU|ROCM)[^:]*:(\d+)", label))
  )
  for _, _, pid in accel:
    tids = {t for (p, t), label in threads.items() if p == pid}
    streams = {t for t in tids if threads[(pid, t)].startswith("Stream")}
    if streams:
      picked = [e for e in spans if e.get("pid") == pid and e.get("tid") in streams]
      source = f"{procs[pid]} stream threads"
    else:
      ops = {t for t in tids if threads[(pid, t)] == "XLA Ops"}
      picked = [e for e in spans if e.get("pid") == pid and e.get("tid") in ops]
      source = f"{procs[pid]} XLA Ops line"
    if picked:
      return picked, source
  thunks = [
    e
    for e in spans
    if "hlo_op" in (e.get("args") or {}) and not str(e.get("name", "")).startswith("end: ")
  ]
  ordinals = {str(e["args"].get("device_ordinal", "")) for e in thunks}
  first = min(
    ordinals, key=lambda o: (not o.isdigit(), int(o) if o.isdigit() else 0, o), default=""
  )
  picked = [e for e in thunks if str(e["args"].get("device_ordinal", "")) == first]
  return picked, f"XLA CPU thunks (device_ordinal {first or '?'})"


# ----------------------------------------------------------------------------------------------
# Summarising


def _innermost_segments(track: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
  """Non-overlapping (start, end, event) pieces of one thread's events, each owned by the
  innermost event covering it (a parent keeps only its self time). An event that starts inside
  another but outside-ends it (not properly nested) takes the overlap from the earlier one."""
  out = []
  stack: list[tuple[float, int]] = []  # (end, event)
  cursor = 0.0
  for start, end, i in sorted(track, key=lambda s: (s[0], -s[1])):
    while stack and stack[-1][0] <= start:
      top_end, top = stack.pop()
      out.append((cursor, top_end, top))
      cursor = top_end
    if stack:
      out.append((cursor, start, stack[-1][1]))
    cursor = start
    while stack and stack[-1][0] < end:
      stack.pop()
    stack.append((end, i))
  while stack:
    top_end, top = stack.pop()
    out.append((cursor, top_end, top))
    cursor = top_end
  return [(s, e, i) for s, e, i in out if e > s]


def attribute(spans: list[tuple[float, float, tuple]]) -> tuple[list[float], float]:
  """Busy time of each event and the length of the union of all of them.

  Args:
    spans: (start, end, track) of each event; events of one track nest, tracks run concurrently.

  Returns:
    (time of each event, union): each instant's time goes to the innermost event of every track
    busy then, split evenly when several tracks are, so the times add up to the union.
  """
  tracks: dict = defaultdict(list)
  for i, (start, end, track) in enumerate(spans):
    tracks[track].append((start, end, i))
  boundaries = []
  for track in tracks.values():
    for start, end, i in _innermost_segments(track):
      boundaries.append((start, 1, i))
      boundaries.append((end, -1, i))
  boundaries.sort(key=lambda b: (b[0], b[1]))
  owned = [0.0] * len(spans)
  active: dict[int, int] = defaultdict(int)
  union, last = 0.0, None
  for t, kind, i in boundaries:
    if active and last is not None and t > last:
      share = (t - last) / len(active)
      for j in active:
        owned[j] += share
      union += t - last
    last = t
    if kind > 0:
      active[i] += 1
    else:
      active[i] -= 1
      if not active[i]:
        del active[i]
  return owned, union


def summarize(
  events: list[dict],
  steps: int | None = None,
  top: int = TOP_KERNELS,
  hlo_names: dict[str, dict[str, str]] | None = None,
) -> dict:
  """Device time per op class and the top kernels, per step, from a trace's events.

  Args:
    events: a Chrome/perfetto trace's `traceEvents` (metadata events name processes/threads).
    steps: steps traced; None = the number of `STEP_MARKER` events (each traced call is one).
    top: how many kernels to list.
    hlo_names: {HLO module: {instruction: op_name}} of the traced step (`hlo_op_names`): the
      name stacks of the ops whose args carry none (`event_stack`).

  Returns:
    {steps, step_ms, busy_ms, device_source, step_window, differentiated, name_stacks, classes:
    {class: {ms_per_step, share}}, top_kernels: [{name, ms_per_step, calls_per_step, class}]}.
    name_stacks: where the ops' name stacks came from ("trace args", "compiled HLO", both joined
    by " + ", or "none"). The wall
    time of the steps is the span of the step markers widened to every device op (the span of the
    device ops where there are no markers, or where most ops lie outside them: another clock);
    idle = wall - union of the device ops.
  """
  ops, source = device_events(events)
  if not ops:
    raise DataError("trace has no device ops (no GPU stream kernels, no XLA CPU thunks)")
  marks = [e for e in _complete(events) if e.get("name") == STEP_MARKER]
  steps = steps or len(marks)
  if not steps:
    raise DataError(f"trace has no {STEP_MARKER!r} events: pass the number of steps traced")
  spans = [
    (float(e["ts"]), float(e["ts"]) + float(e["dur"]), (e.get("pid"), e.get("tid"))) for e in ops
  ]
  window = "step markers"
  edges = [(s, e) for s, e, _ in spans]
  if marks:
    m0 = min(float(e["ts"]) for e in marks)
    m1 = max(float(e["ts"]) + float(e["dur"]) for e in marks)
    inside = sum(max(0.0, min(e, m1) - max(s, m0)) for s, e in edges)
    if inside >= 0.5 * sum(e - s for s, e in edges):
      edges.append((m0, m1))
    else:  # the device's clock is not the host's here: time the steps by the device ops
      window = "device ops (most lie outside the step markers)"
  else:
    window = "device ops (no step markers)"
  wall_us = max(e for _, e in edges) - min(s for s, _ in edges)
  owned, busy_us = attribute(spans)
  stacks: dict[tuple, tuple[str, str]] = {}  # (name, hlo_op, module, own stack) -> event_stack
  keys = []
  for e in ops:
    name, args = str(e.get("name", "")), e.get("args") or {}
    key = (name, str(args.get("hlo_op", "")), str(args.get("hlo_module", "")), name_stack(args))
    if key not in stacks:
      stacks[key] = event_stack(name, args, hlo_names)
    keys.append(key)
  grad_step = any("transpose(jvp(" in stack for stack, _ in stacks.values())
  found = {source for _, source in stacks.values()} - {"none"}
  origin = " + ".join(s for s in ("trace args", "compiled HLO") if s in found) or "none"
  per_class: dict[str, float] = dict.fromkeys(CLASSES, 0.0)
  per_kernel: dict[tuple[str, str], list] = {}  # (name, class) -> [us, calls]
  classes: dict[tuple, str] = {}  # one kernel name can serve several HLO ops: classify each
  for e, key, us in zip(ops, keys, owned, strict=True):
    name, args = key[0], e.get("args") or {}
    if key not in classes:
      classes[key] = classify(name, args, grad_step=grad_step, stack=stacks[key][0])
    entry = per_kernel.setdefault((name, classes[key]), [0.0, 0])
    entry[0] += us
    entry[1] += 1
    per_class[classes[key]] += us
  per_class["idle"] = max(wall_us - busy_us, 0.0)
  step_ms = wall_us / 1e3 / steps

  def ms(us):
    return round(us / 1e3 / steps, 6)

  kernels = sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:top]
  return {
    "steps": steps,
    "step_ms": round(step_ms, 6),
    "busy_ms": ms(busy_us),
    "device_source": source,
    "step_window": window,
    "differentiated": grad_step,
    "name_stacks": origin,
    "classes": {
      c: {"ms_per_step": ms(us), "share": round(us / wall_us, 6) if wall_us else 0.0}
      for c, us in per_class.items()
    },
    "top_kernels": [
      {"name": n, "ms_per_step": ms(v[0]), "calls_per_step": v[1] / steps, "class": c}
      for (n, c), v in kernels
    ],
  }


def markdown(rows: list[dict], top: int = 5) -> str:
  """One table of classes (ms per step and share) for all rows, then each row's top kernels."""
  head = "| case | batch | step ms | " + " | ".join(CLASSES) + " |"
  lines = [head, "|" + "---|" * (3 + len(CLASSES))]
  for r in rows:
    cells = [
      f"{r['classes'][c]['ms_per_step']:.2f} ({r['classes'][c]['share']:.0%})" for c in CLASSES
    ]
    batch = r.get("batch_size")
    lines.append(
      f"| {r['case']} | {batch if batch else '—'} | {r['step_ms']:.2f} | "
      + " | ".join(cells)
      + " |"
    )
  for r in rows:
    lines += ["", f"Top kernels of {r['case']} ({r['device_source']}):", ""]
    lines += ["| kernel | class | ms/step | calls/step |", "|---|---|---|---|"]
    for k in r["top_kernels"][:top]:
      name = k["name"] if len(k["name"]) <= 80 else k["name"][:77] + "..."
      name = name.replace("|", "\\|")
      lines.append(
        f"| `{name}` | {k['class']} | {k['ms_per_step']:.3f} | {k['calls_per_step']:g} |"
      )
  return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Tracing a case


def _case_folder(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def trace_case(case, steps: int, warmup: int, trace_dir: str) -> tuple[str, list[float]]:
  """Compiles and warms `case` up untraced, then traces `steps` blocked, marked calls.

  Returns the trace file written and the host wall time of each traced call (s).
  """
  import jax

  from shared import benchmark as harness

  harness.time_calls(case, steps=0, warmup=warmup)  # compile + warm-up; keeps the donation chain
  folder = os.path.join(trace_dir, _case_folder(case.name))
  os.makedirs(folder, exist_ok=True)
  args, times = case.args, []
  jax.profiler.start_trace(folder, create_perfetto_trace=True)
  try:
    for i in range(steps):
      t0 = time.perf_counter()
      with jax.profiler.StepTraceAnnotation(STEP_MARKER, step_num=i):
        out = case.step(*args)
        jax.block_until_ready(out)
      times.append(time.perf_counter() - t0)
      if case.carry:
        args = (out[0] if isinstance(out, tuple) else out, *args[1:])
  finally:
    jax.profiler.stop_trace()
  case.args = args
  return find_trace(folder), times


def profile(
  config, what: str, batch: int, steps: int, warmup: int, trace_dir: str, only: str = ""
) -> list[dict]:
  """Traces and summarises every case `benchmarks.run` would time for (config, what, batch), or
  those whose name `only` (a regular expression) matches."""
  import jax

  from benchmarks.cases import BENCH_MODULES

  method = config.get("method")
  if method not in BENCH_MODULES:
    raise ConfigError(f"no benchmark cases for method {method!r}; known: {sorted(BENCH_MODULES)}")
  if batch and batch % jax.device_count():
    raise ConfigError(f"--batch {batch} does not split over {jax.device_count()} devices")
  cases = BENCH_MODULES[method]().cases(config, what, batch or None)
  if only:
    cases = [c for c in cases if re.search(only, c.name)]
    if not cases:
      raise ConfigError(f"--only {only!r} matches no case of {method} --what {what}")
  rows = []
  for case in cases:
    path, times = trace_case(case, steps, warmup, trace_dir)
    t0 = time.perf_counter()
    names = case_hlo_op_names(case)  # after the calls: from JAX's caches, nothing recompiled
    hlo_names_s = time.perf_counter() - t0
    names_file = None
    if names:
      names_file = os.path.join(trace_dir, _case_folder(case.name), HLO_NAMES_FILE)
      save_hlo_names(names_file, names)
    summary = summarize(read_events(path), steps, hlo_names=names)
    rows.append(
      {
        "case": case.name,
        "what": what,
        "device_kind": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "batch_size": case.batch_size,
        "dtype": case.meta.get("dtype"),
        "step_ms_host_median": 1e3 * statistics.median(times),
        "trace": path,
        "hlo_names": names_file,
        "hlo_names_s": round(hlo_names_s, 4),
        **summary,
      }
    )
  return rows


# ----------------------------------------------------------------------------------------------
# Command line

FLAGS = flags.FlagValues()  # its own flag set: benchmarks.run's flags share these names
config_flags.DEFINE_config_file(
  "config", None, "Method config file[:variant].", lock_config=True, flag_values=FLAGS
)
flags.DEFINE_string(
  "what", "train_step", "train_step | sample | perturb (per method).", flag_values=FLAGS
)
flags.DEFINE_integer(
  "batch", 0, "Global batch size; 0 = the method's paper-scale default.", flag_values=FLAGS
)
flags.DEFINE_integer("steps", 5, "Traced calls after warm-up.", flag_values=FLAGS)
flags.DEFINE_integer("warmup", 3, "Untraced calls after the compiling one.", flag_values=FLAGS)
flags.DEFINE_string(
  "trace_dir", "", "Folder for the raw traces (one sub-folder per case).", flag_values=FLAGS
)
flags.DEFINE_string("out", "", "Append one JSON line per case here.", flag_values=FLAGS)
flags.DEFINE_string(
  "only",
  "",
  "Profile only the cases whose name this regular expression matches.",
  flag_values=FLAGS,
)
flags.DEFINE_string(
  "from_trace", "", "Only summarise this trace file or folder.", flag_values=FLAGS
)
flags.DEFINE_string(
  "case", "", "Case name for --from_trace (default: the folder's name).", flag_values=FLAGS
)
flags.DEFINE_string(
  "hlo_names",
  "",
  f"For --from_trace: the {HLO_NAMES_FILE} map of HLO ops to name stacks (default: the one "
  "beside the trace, if any).",
  flag_values=FLAGS,
)
USAGE = (
  "usage: python -m benchmarks.profile --config configs/<method>.py[:variant] "
  "--what train_step|sample|perturb [--batch N] [--steps K] [--only REGEX] --trace_dir DIR "
  "[--out FILE.jsonl] "
  "| --from_trace PATH [--case NAME] [--steps K] [--hlo_names FILE]"
)


def _parse(argv: list[str]):
  FLAGS.unparse_flags()  # defaults again: main() may run more than once in a process (tests)
  config = cli.parse_config_flags(FLAGS, argv)
  if FLAGS.from_trace:
    return None
  if config is None:
    raise ConfigError(f"--config is required (or --from_trace); {USAGE}")
  if not FLAGS.trace_dir:
    raise ConfigError(f"--trace_dir is required; {USAGE}")
  if FLAGS.steps < 1 or FLAGS.warmup < 0:
    raise ConfigError(f"--steps must be >= 1 and --warmup >= 0; {USAGE}")
  try:
    os.makedirs(FLAGS.trace_dir, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"--trace_dir {FLAGS.trace_dir}: {e.strerror or e}") from None
  if not os.access(FLAGS.trace_dir, os.W_OK | os.X_OK):
    raise ConfigError(f"--trace_dir {FLAGS.trace_dir}: not writable")
  return config


def main(argv=None) -> int:
  argv = sys.argv if argv is None else list(argv)
  if cli.printed_help(argv, USAGE, __doc__, FLAGS, __name__):
    return 0
  config = _parse(argv)
  if FLAGS.from_trace:
    path = find_trace(FLAGS.from_trace)
    name = FLAGS.case or os.path.basename(os.path.normpath(FLAGS.from_trace))
    steps = FLAGS.steps if FLAGS["steps"].present else None  # else: the step markers
    names_file = FLAGS.hlo_names or find_hlo_names(path)
    names = load_hlo_names(names_file) if names_file else None
    summary = summarize(read_events(path), steps, hlo_names=names)
    rows = [{"case": name, "trace": path, "hlo_names": names_file, **summary}]
  else:
    rows = profile(
      config, FLAGS.what, FLAGS.batch, FLAGS.steps, FLAGS.warmup, FLAGS.trace_dir, FLAGS.only
    )
  for r in rows:
    line = json.dumps(r)
    print(line)
    if FLAGS.out:
      with open(FLAGS.out, "a") as f:
        f.write(line + "\n")
  print(markdown(rows))
  return 0


if __name__ == "__main__":
  sys.exit(cli.guarded(main))
