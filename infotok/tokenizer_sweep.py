"""The tokenizer factorial of one seed: which tokenizers to train (name -> loss weights), which
point of each variant's sweep stands for it (chosen on the validation split), and the codebook of
the rate-matched control.

Variants (`config.variants`, `FACTORIAL` is the full set), each a combination of the terms of
`infotok.tokenizer.objective`:

  baseline       reconstruction (+ VQ terms) only
  rate_matched   the baseline with a codebook shrunk to the chosen InfoTok-VIB tokenizer's code
                 perplexity measured on validation in the same run (`rate_matched_overrides`)
  entropy        + MaskGIT's codebook entropy loss (raises usage)     swept: entropy.weights
  vib_kl         + posterior noise and the KL term (no InfoNCE)       swept: vib.betas
  vib_nce        + the InfoNCE consistency term only                  swept: vib.consistency_weights
  infotok_vib    + noise, KL and InfoNCE (at vib.consistency)         swept: vib.betas
  infotok_hsic   + beta_x HSIC(X, Z) - lambda_y HSIC(Z, Y)            swept: hsic.beta_x

Families: the AR and masked styles use the same frozen tokenizers (family "plain"); the semantic
style trains its own, every term above plus the image-text alignment term, and selects its own
points against its own baseline (family "semantic", names prefixed `semantic_`).

Selection on validation (never test): a compressing knob (the KL beta, HSIC's beta_x) takes the
largest value whose relevance is within `select.tolerance` of the family baseline's
(`evaluate.select_largest_within`, the IB reading); a knob that does not compress (the entropy
weight, the consistency weight of vib_nce) takes its most relevant value, each control at its best.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable

import numpy as np

from infotok import evaluate

FACTORIAL = (
  "baseline",
  "rate_matched",
  "entropy",
  "vib_kl",
  "vib_nce",
  "infotok_vib",
  "infotok_hsic",
)
FAMILIES = {"ar": "plain", "masked": "plain", "semantic": "semantic"}


@dataclasses.dataclass(frozen=True)
class Sweep:
  """One variant's sweep: the config list it runs over, its selection rule, its weights."""

  field: str  # "<section>.<list>" of the config
  rule: str  # "compress": largest within tolerance; "best": most relevant
  weights: Callable  # (config, value) -> loss weights


SWEEPS = {
  "entropy": Sweep("entropy.weights", "best", lambda c, v: {"entropy": v}),
  "vib_kl": Sweep("vib.betas", "compress", lambda c, v: {"noise": 1.0, "vib": v}),
  "vib_nce": Sweep("vib.consistency_weights", "best", lambda c, v: {"consistency": v}),
  "infotok_vib": Sweep(
    "vib.betas",
    "compress",
    lambda c, v: {"noise": 1.0, "vib": v, "consistency": c.vib.consistency},
  ),
  "infotok_hsic": Sweep(
    "hsic.beta_x", "compress", lambda c, v: {"hsic_beta_x": v, "hsic_lambda_y": c.hsic.lambda_y}
  ),
}


def sweep_values(config, variant: str) -> tuple[float, ...]:
  section, name = SWEEPS[variant].field.split(".")
  return tuple(config[section][name])


def swept_variants(config) -> list[str]:
  """The variants whose sweeps a run trains: those asked for, and InfoTok-VIB for rate_matched."""
  wanted = set(config.variants) | ({"infotok_vib"} if "rate_matched" in config.variants else set())
  return [v for v in SWEEPS if v in wanted]


def prefix(family: str) -> str:
  return "semantic_" if family == "semantic" else ""


def point_name(family: str, variant: str, value: float) -> str:
  return f"{prefix(family)}{variant}_{value:g}"


def family_specs(config, family: str) -> dict[str, dict]:
  """Every tokenizer of a family's sweeps (the rate-matched one comes later): name -> weights."""
  extra = {"align": config.semantic.align_weight} if family == "semantic" else {}
  specs = {f"{prefix(family)}baseline": dict(extra)}
  for variant in swept_variants(config):
    for value in sweep_values(config, variant):
      specs[point_name(family, variant, value)] = {
        **SWEEPS[variant].weights(config, value),
        **extra,
      }
  return specs


def choose(config, family: str, results: dict) -> tuple[dict[str, str], dict[str, list[dict]]]:
  """(variant -> the tokenizer standing for it, variant -> its sweep's validation points with
  'value'), for every swept variant and the baseline of a family.

  Args:
    results: tokenizer name -> its result (with 'val' metrics), every name of `family_specs`.
  """
  base = f"{prefix(family)}baseline"
  reference = results[base]["val"]["relevance"]
  chosen, points = {"baseline": base}, {}
  for variant in swept_variants(config):
    values = sweep_values(config, variant)
    names = [point_name(family, variant, v) for v in values]
    pts = [dict(results[n]["val"], value=v) for n, v in zip(names, values, strict=True)]
    if SWEEPS[variant].rule == "compress":
      pick = evaluate.select_largest_within(pts, "value", reference, config.select.tolerance)
    else:
      pick = int(np.argmax([p["relevance"] for p in pts]))
    chosen[variant], points[variant] = names[pick], pts
  return chosen, points


def rate_matched_overrides(tok_cfg, perplexity: float) -> dict:
  """The tokenizer fields that shrink its codebook to `perplexity` codes.

  VQ: codebook_size = round(perplexity), at least 2. FSQ: the levels (each in [3, the largest
  configured level], at most as many channels as configured) whose product is nearest to the
  perplexity in log scale; ties go to the larger product, then to more channels, then to the more
  even levels. E.g. (8, 5, 5, 5) and a perplexity of 37.2 give (4, 3, 3) = 36. Level 2 is left
  out: `quantizers.FSQ` centres even levels with arctanh(0.5 / half_l), undefined for L = 2
  (half_l < 0.5), so a perplexity below 3 (a collapsed tokenizer) gets 3 codes.
  """
  if tok_cfg.quantizer == "vq":
    return {"codebook_size": max(2, int(round(perplexity)))}
  top, dims = max(tok_cfg.fsq_levels), len(tok_cfg.fsq_levels)
  target = math.log(max(perplexity, 1.0))
  best = None
  for d in range(1, dims + 1):
    for levels in itertools.combinations_with_replacement(range(top, 2, -1), d):
      prod = math.prod(levels)
      key = (round(abs(math.log(prod) - target), 12), -prod, -d, max(levels) - min(levels))
      if best is None or key < best[0]:
        best = (key, levels)
  return {"fsq_levels": tuple(int(v) for v in best[1])}
