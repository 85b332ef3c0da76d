"""InfoTok's own config checks, run first in `train_and_evaluate` (before any data or training):
every nonsense value is one ConfigError line (exit 2 through `shared.app`).

The generic value rules (steps, batch sizes, learning rates, ...) are `shared.validate`'s; these
are the ones only InfoTok knows: the bed (`config.data.name`), the variant names, the sweeps those
variants need, the styles, the compute dtypes and the quantizer.
"""

from __future__ import annotations

from infotok import beds, tokenizer_sweep
from infotok.unified import STYLES
from shared.errors import ConfigError

COMPUTE_DTYPES = ("float32", "bfloat16")


def check_config(config) -> None:
  beds.bed_of(config.data)  # an unknown data.name
  variants = list(config.variants)
  known = tokenizer_sweep.FACTORIAL
  unknown = [v for v in variants if v not in known]
  if unknown:
    raise ConfigError(f"config.variants: unknown variant {unknown[0]!r}; known: {', '.join(known)}")
  if len(set(variants)) != len(variants):
    raise ConfigError(f"config.variants={tuple(variants)} names a variant twice")
  if "baseline" not in variants:
    raise ConfigError(
      f"config.variants={tuple(variants)} lacks 'baseline': every verdict is a difference from it"
    )
  for variant in tokenizer_sweep.swept_variants(config):
    if not tokenizer_sweep.sweep_values(config, variant):
      field = tokenizer_sweep.SWEEPS[variant].field
      why = (
        " (rate_matched is matched to the chosen InfoTok-VIB)" if variant not in variants else ""
      )
      raise ConfigError(
        f"config.{field} is empty: variant {variant!r}{why} needs at least one value to choose from"
      )
  for style in config.unified.styles:
    if style not in STYLES:
      raise ConfigError(f"config.unified.styles: unknown style {style!r}; known: {STYLES}")
  for section in ("tokenizer", "unified"):
    dtype = config[section].get("compute_dtype", "float32")
    if dtype not in COMPUTE_DTYPES:
      raise ConfigError(
        f"config.{section}.compute_dtype={dtype!r}; known: {', '.join(COMPUTE_DTYPES)}"
      )
  if config.tokenizer.quantizer == "continuous":
    raise ConfigError("tokenizer.quantizer='continuous' has no codes for the unified models")
