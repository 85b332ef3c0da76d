"""Config helpers: the typed variant parser every `configs/<pkg>.py` uses, and shared sub-configs.

A config file exposes `get_config(arg: str | None) -> ConfigDict`. The part after the colon in
`--config configs/mcae.py:tiny` arrives as `arg`; `parse_arg` turns it into a typed ConfigDict:

    parse_arg("tiny", variants=VARIANTS)                  -> variant='tiny'
    parse_arg("compare,seeds=5", variants=VARIANTS, seeds=3) -> variant='compare', seeds=5 (int)

Configs stay data: the only logic allowed is picking a variant's values.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections

from shared.errors import ConfigError

DEFAULT_VARIANT = "default"


def _coerce(key: str, text: str, default):
  """Parses `text` to the type of `default` (bool, int, float, str, or a tuple of those)."""
  try:
    if isinstance(default, bool):
      if text.lower() in ("1", "true", "yes"):
        return True
      if text.lower() in ("0", "false", "no"):
        return False
      raise ValueError(text)
    if isinstance(default, int):
      return int(text)
    if isinstance(default, float):
      return float(text)
    if isinstance(default, tuple):
      parts = [p for p in text.split("+") if p]
      kind = type(default[0]) if default else str
      return tuple(_coerce(key, p, kind()) for p in parts)
  except ValueError:
    raise ConfigError(
      f"config argument {key}={text!r}: expected {type(default).__name__}"
    ) from None
  return text


def parse_arg(arg: str | None, *, variants: Sequence[str], **defaults) -> ml_collections.ConfigDict:
  """Parses a config argument 'variant,key=value,...' against typed defaults.

  Args:
    arg: the text after ':' in `--config file.py:arg`, or None.
    variants: the variant names this config file knows; `DEFAULT_VARIANT` is always allowed.
    **defaults: other known keys with default values; their types are the parse types
      (tuples are written 'a+b+c').

  Returns:
    A locked ConfigDict with `variant` and every key of `defaults`.

  Raises:
    ConfigError: unknown variant, unknown key, or a value of the wrong type.
  """
  known = (DEFAULT_VARIANT, *variants)
  out = {"variant": DEFAULT_VARIANT, **defaults}
  for token in (arg or "").split(","):
    token = token.strip()
    if not token:
      continue
    if "=" not in token:
      if token not in known:
        raise ConfigError(f"unknown config variant {token!r}; known: {', '.join(known)}")
      out["variant"] = token
      continue
    key, value = token.split("=", 1)
    if key not in defaults:
      raise ConfigError(
        f"unknown config argument {key!r}; known: {', '.join(sorted(defaults)) or '(none)'}"
      )
    out[key] = _coerce(key, value, defaults[key])
  cfg = ml_collections.ConfigDict(out)
  cfg.lock()
  return cfg


def optimizer_config(**overrides) -> ml_collections.ConfigDict:
  """Fields read by `shared.train_lib.make_optimizer`, with neutral defaults."""
  cfg = ml_collections.ConfigDict(
    dict(
      name="adamw",  # adamw | sgd
      lr=1e-3,
      b1=0.9,
      b2=0.999,
      momentum=0.9,  # sgd only
      nesterov=False,  # sgd only
      weight_decay=0.0,
      decay_mask="no_bias_norm",  # no_bias_norm | all
      warmup_steps=0,
      schedule="cosine",  # cosine | constant
      end_lr_factor=0.0,
      grad_clip=0.0,  # 0 disables global-norm clipping
      ema_decay=0.0,  # 0 disables the EMA of params
    )
  )
  cfg.update(overrides)
  return cfg


def run_config(**overrides) -> ml_collections.ConfigDict:
  """Loop fields read by `shared.train_lib.train_loop` and the mesh."""
  cfg = ml_collections.ConfigDict(
    dict(
      log_every=50,
      checkpoint_every=500,
      keep_checkpoints=2,
      progress=True,
      fsdp=False,  # shard large params/opt-state over "data" instead of replicating
      model_axis=1,  # size of the mesh's "model" axis
      dtype="float32",  # compute dtype; params stay float32
    )
  )
  cfg.update(overrides)
  return cfg
