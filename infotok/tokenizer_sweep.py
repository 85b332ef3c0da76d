"""The tokenizer sweep of one seed: which tokenizers to train (name -> loss weights) and which
of each beta sweep stands for its variant, chosen on the validation split."""

from __future__ import annotations

from infotok import evaluate


def tokenizer_specs(config) -> dict[str, dict]:
  """Every tokenizer to train for the AR / masked styles: name -> loss weights."""
  specs = {"baseline": {}, "entropy": {"entropy": config.entropy.weight}}
  for beta in config.vib.betas:
    specs[f"vib_{beta:g}"] = {
      "noise": 1.0,
      "vib": beta,
      "consistency": config.vib.consistency,
    }
  for bx in config.hsic.beta_x:
    specs[f"hsic_{bx:g}"] = {"hsic_beta_x": bx, "hsic_lambda_y": config.hsic.lambda_y}
  return specs


def semantic_weights(config, weights: dict) -> dict:
  """The semantic-aligned style's tokenizer: a chosen variant's weights plus the image-text
  contrastive term."""
  return dict(weights, align=config.semantic.align_weight)


def choose(config, results: dict) -> tuple[dict[str, str], list[dict], list[dict]]:
  """The tokenizer of each variant (the largest beta within `select.tolerance` of the baseline's
  validation relevance, `evaluate.select_largest_within`), and the VIB / HSIC sweeps' validation
  points (with their beta).

  Args:
    results: tokenizer name -> its result (with 'val' metrics), every name of `tokenizer_specs`.
  """
  reference = results["baseline"]["val"]["relevance"]
  tol = config.select.tolerance
  vib_names = [f"vib_{b:g}" for b in config.vib.betas]
  hsic_names = [f"hsic_{b:g}" for b in config.hsic.beta_x]
  vib_points = [
    dict(results[n]["val"], beta=b) for n, b in zip(vib_names, config.vib.betas, strict=True)
  ]
  hsic_points = [
    dict(results[n]["val"], beta=b) for n, b in zip(hsic_names, config.hsic.beta_x, strict=True)
  ]
  vib_pick = vib_names[evaluate.select_largest_within(vib_points, "beta", reference, tol)]
  hsic_pick = hsic_names[evaluate.select_largest_within(hsic_points, "beta", reference, tol)]
  chosen = {
    "baseline": "baseline",
    "entropy": "entropy",
    "infotok_vib": vib_pick,
    "infotok_hsic": hsic_pick,
  }
  return chosen, vib_points, hsic_points
