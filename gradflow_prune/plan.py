"""Which pruning runs a config asks for, and the soft-mask flow settings of each procedure."""

from __future__ import annotations

from gradflow_prune import criteria, prune
from shared.errors import ConfigError

ABLATIONS = {"lam0": dict(lam=0.0), "gamma0": dict(gamma=0.0), "k1": dict(iterations=1)}


def runs(config) -> list[tuple[str, str]]:
  """(criterion, procedure) pairs: procedures x criteria, then ablations x ablation criteria."""
  pc = config.prune
  for p in pc.procedures:
    if p not in prune.PROCEDURES:
      raise ConfigError(f"unknown procedure {p!r}; known: {', '.join(prune.PROCEDURES)}")
  for a in pc.ablations:
    if a not in ABLATIONS:
      raise ConfigError(f"unknown ablation {a!r}; known: {', '.join(ABLATIONS)}")
  for c in (*pc.criteria, *pc.ablation_criteria):
    if c not in criteria.CRITERIA:
      raise ConfigError(f"unknown criterion {c!r}; known: {', '.join(criteria.CRITERIA)}")
  if not pc.keep_ratios or not all(0 < r <= 1 for r in pc.keep_ratios):
    raise ConfigError(f"prune.keep_ratios must be in (0, 1], got {pc.keep_ratios}")
  out = [(c, p) for p in pc.procedures for c in pc.criteria]
  out += [(c, f"iterative_{a}") for a in pc.ablations for c in pc.ablation_criteria]
  return out


def flow_config(config, procedure: str) -> prune.FlowConfig:
  """The flow of 'iterative' or of an ablation 'iterative_<name>'; checked against the budget."""
  pc = config.prune
  fc = prune.FlowConfig(
    iterations=pc.iterations,
    n_flow=pc.n_flow,
    eta=pc.eta,
    lam=pc.lam,
    gamma=pc.gamma,
    n_train=pc.n_train,
    power=pc.power,
  )
  if procedure != "iterative":
    fc = prune.FlowConfig(**{**fc.__dict__, **ABLATIONS[procedure.split("_", 1)[1]]})
  if fc.iterations * fc.n_train > pc.total_steps:
    raise ConfigError(
      f"{procedure}: iterations x n_train = {fc.iterations * fc.n_train} exceeds "
      f"prune.total_steps = {pc.total_steps} (the budget shared with one-shot)"
    )
  return fc
