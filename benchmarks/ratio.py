"""JAX step throughput against the PyTorch peers', per step, with the performance issue's targets.

    python -m benchmarks.ratio runs/bench/bench.jsonl runs/bench/peers.jsonl [more-peers.jsonl]

The first file holds `benchmarks.run` lines, the others `benchmarks.peers.*` lines. Each JAX case
of PAIRS (a `[label]` suffix is kept) is matched with every peer line of its peer case at the same
batch size (eager and compiled, each dtype), the last line of a kind winning (re-runs); a markdown
table of examples/s, ratio = JAX / peer and the target, met or not, is printed. Lines measured
with `--tiny` and JAX lines of more than one device are left out (the targets are single-device).
"""

from __future__ import annotations

import dataclasses
import sys

from benchmarks.report import TARGETS, read_lines
from shared import cli
from shared.errors import ConfigError, DataError


@dataclasses.dataclass(frozen=True)
class Pair:
  """A JAX case, its PyTorch peer case and the issue's target for it.

  Attributes:
    jax: case name of `benchmarks.run`'s line.
    peer: case name of the peer's line.
    min_rate: examples/s the JAX step must reach (None: no absolute target).
    min_ratio: JAX / peer examples/s it must reach (None: no relative target).
    compiled_only: the relative target is against `torch.compile` (eager rows: ratio shown only).
  """

  jax: str
  peer: str
  min_rate: float | None = None
  min_ratio: float | None = None
  compiled_only: bool = False

  def target(self) -> str:
    parts = []
    if self.min_rate:
      parts.append(f">= {self.min_rate:,.0f}/s")
    if self.min_ratio:
      parts.append(f">= {self.min_ratio:g}x {'torch.compile' if self.compiled_only else 'PyTorch'}")
    return " and ".join(parts) or "—"

  def met(self, rate: float, ratio: float, compiled: bool) -> str:
    checks = []
    if self.min_rate:
      checks.append(rate >= self.min_rate)
    if self.min_ratio and (compiled or not self.compiled_only):
      checks.append(ratio >= self.min_ratio)
    if not checks:
      return "—"
    return "yes" if all(checks) else "**no**"


# Issue 20's targets (one device): MAE ViT-B/16 b256 bf16 >= 1.3x torch.compile; DDPM train b128
# >= 5,000 img/s and >= 2.6x PyTorch; DDPM sampling forward b256 >= 30,000 image-steps/s;
# ResNet-18 PGD step >= 150,000 img/s, victim train step >= 100,000 img/s.
# The examples/s targets are benchmarks.report's (TARGETS): one list for both tables.
_RATE = {case: target for case, _, target, *_ in TARGETS}


def _rated(case: str, peer: str, **kw) -> Pair:
  return Pair(case, peer, min_rate=_RATE[case], **kw)


PAIRS = (
  Pair("mcae/mae_pretrain", "pytorch/mae_pretrain", min_ratio=1.3, compiled_only=True),
  _rated("gradflow_prune/ddpm_train_bfloat16", "pytorch/ddpm_train", min_ratio=2.6),
  _rated("gradflow_prune/ddpm_train_float32", "pytorch/ddpm_train", min_ratio=2.6),
  _rated("gradflow_prune/forward_teacher", "pytorch/ddpm_forward"),
  _rated("unlearnable/em_pgd_step", "pytorch/resnet18_pgd"),
  _rated("unlearnable/victim_train_step", "pytorch/resnet18_train"),
)
USAGE = "usage: python -m benchmarks.ratio JAX.jsonl PEER.jsonl [PEER.jsonl ...]"


def read(path: str) -> list[dict]:
  rows = read_lines(path, "lines of `benchmarks.run` or `benchmarks.peers.*`")
  for r in rows:
    if not isinstance(r, dict) or "case" not in r or "examples_per_s" not in r:
      raise DataError(f"{path}: a line without case / examples_per_s: {str(r)[:80]}")
  return rows


def _base(case: str) -> str:
  return case.split("[", 1)[0]


def table(jax_rows: list[dict], peer_rows: list[dict], pairs=PAIRS) -> str:
  """The markdown table of every (JAX line, peer line) pair the two sets hold."""
  by_pair = {p.jax: p for p in pairs}
  jax_last = {
    (r["case"], r.get("batch_size")): r
    for r in jax_rows
    if _base(r["case"]) in by_pair and r.get("devices", 1) == 1 and not r.get("tiny")
  }
  peer_last = {
    (r["case"], r.get("batch_size"), bool(r.get("compiled")), r.get("dtype")): r
    for r in peer_rows
    if not r.get("tiny")
  }
  lines = [
    "| step | batch | JAX img/s | peer img/s | ratio | target | met |",
    "|---|---|---|---|---|---|---|",
  ]
  for (case, batch), j in jax_last.items():
    pair = by_pair[_base(case)]
    peers = [r for (c, b, _, _), r in peer_last.items() if c == pair.peer and b == batch]
    if not peers:
      lines.append(
        f"| {case} | {batch} | {j['examples_per_s']:,.0f} | (no {pair.peer} line at batch "
        f"{batch}) | — | {pair.target()} | {pair.met(j['examples_per_s'], 0.0, False)} |"
      )
    for r in sorted(peers, key=lambda r: (bool(r.get("compiled")), str(r.get("dtype")))):
      compiled = bool(r.get("compiled"))
      ratio = j["examples_per_s"] / r["examples_per_s"]
      mode = "torch.compile" if compiled else "eager"
      lines.append(
        f"| {case} | {batch} | {j['examples_per_s']:,.0f} "
        f"| {r['examples_per_s']:,.0f} ({mode}, {r.get('dtype', '?')}) | {ratio:.2f}x "
        f"| {pair.target()} | {pair.met(j['examples_per_s'], ratio, compiled)} |"
      )
  return "\n".join(lines)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if any(a in ("-h", "--help") for a in argv):
    print(f"{USAGE}\n\n{__doc__.strip()}")
    return 0
  if any(a.startswith("-") for a in argv):
    raise ConfigError(f"unknown option {next(a for a in argv if a.startswith('-'))!r}; {USAGE}")
  if len(argv) < 2:
    raise ConfigError(f"need the JAX lines and at least one peer file; {USAGE}")
  jax_rows = read(argv[0])
  peer_rows = [r for path in argv[1:] for r in read(path)]
  print(table(jax_rows, peer_rows))
  return 0


if __name__ == "__main__":
  sys.exit(cli.guarded(main))
