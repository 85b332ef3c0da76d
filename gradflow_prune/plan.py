"""Which pruning runs a config asks for, and the soft-mask flow settings of each procedure."""

from __future__ import annotations

from gradflow_prune import criteria, procedures
from shared.errors import ConfigError

ABLATIONS = {"lam0": dict(lam=0.0), "gamma0": dict(gamma=0.0), "k1": dict(iterations=1)}


BUDGETS = ("total", "finetune")


def runs(config) -> list[tuple[str, str]]:
  """(criterion, procedure) pairs: one-shot x criteria, iterative x iterative_criteria, then
  ablations x ablation criteria. Checks every choice (ConfigError: one line, exit 2)."""
  pc = config.prune
  for p in pc.procedures:
    if p not in procedures.PROCEDURES:
      raise ConfigError(f"unknown procedure {p!r}; known: {', '.join(procedures.PROCEDURES)}")
  for a in pc.ablations:
    if a not in ABLATIONS:
      raise ConfigError(f"unknown ablation {a!r}; known: {', '.join(ABLATIONS)}")
  for c in (*pc.criteria, *pc.iterative_criteria, *pc.ablation_criteria):
    if c not in criteria.CRITERIA:
      raise ConfigError(f"unknown criterion {c!r}; known: {', '.join(criteria.CRITERIA)}")
  if not pc.keep_ratios or not all(0 < r <= 1 for r in pc.keep_ratios):
    raise ConfigError(f"prune.keep_ratios must be in (0, 1], got {tuple(pc.keep_ratios)}")
  choices = {
    "budget": BUDGETS, "rank_within": procedures.RANK_WITHIN, "normalize": procedures.NORMALIZE,
    "grasp_protocol": criteria.GRASP_PROTOCOLS, "score_dtype": ("float32", "run"),
  }  # fmt: skip
  for field, known in choices.items():
    if pc[field] not in known:
      raise ConfigError(f"prune.{field}={pc[field]!r}; known: {', '.join(known)}")
  if any(s < 0 for s in pc.convergence_steps):
    raise ConfigError(f"prune.convergence_steps must be >= 0, got {tuple(pc.convergence_steps)}")
  arms = {"oneshot": pc.criteria, "iterative": pc.iterative_criteria}
  out = [(c, p) for p in pc.procedures for c in arms[p]]
  out += [(c, f"iterative_{a}") for a in pc.ablations for c in pc.ablation_criteria]
  return out


def flow_config(config, procedure: str) -> procedures.FlowConfig:
  """The flow of 'iterative' or of an ablation 'iterative_<name>'; checked against the budget."""
  pc = config.prune
  fc = procedures.FlowConfig(
    iterations=pc.iterations,
    n_flow=pc.n_flow,
    eta=pc.eta,
    lam=pc.lam,
    gamma=pc.gamma,
    n_train=pc.n_train,
    power=pc.power,
    rank_within=pc.rank_within,
    normalize=pc.normalize,
  )
  if procedure != "iterative":
    fc = procedures.FlowConfig(**{**fc.__dict__, **ABLATIONS[procedure.split("_", 1)[1]]})
  if pc.budget == "total" and fc.iterations * fc.n_train > pc.total_steps:
    raise ConfigError(
      f"{procedure}: iterations x n_train = {fc.iterations * fc.n_train} exceeds "
      f"prune.total_steps = {pc.total_steps} (the budget shared with one-shot)"
    )
  return fc


def finetune_steps(config, procedure: str) -> tuple[int, int]:
  """(interleaved, fine-tune) training steps of a run under `prune.budget`."""
  pc = config.prune
  interleaved = 0
  if procedure != "oneshot":
    fc = flow_config(config, procedure)
    interleaved = fc.iterations * fc.n_train
  if pc.budget == "finetune":
    return interleaved, pc.total_steps
  return interleaved, pc.total_steps - interleaved


def convergence_points(config, finetune: int) -> list[int]:
  """The fine-tune steps to evaluate at: `prune.convergence_steps` up to `finetune`, and it."""
  return sorted({int(s) for s in config.prune.convergence_steps if s <= finetune} | {finetune})
