"""Method specs: which method a sub-run trains, and the config it trains with.

The methods are config data, `config.method_table` (configs/mcae.py): each a classifier and,
for the pre-trained ones, the ConfigDict updates its pre-training applies to `config.pretrain`.
A method spec names a table entry, optionally with overrides of any config fields (the
ablations):

  "mcae"                                                  the table's `mcae`
  "mcae:pretrain.mask_ratio=0.9;finetune.train_blocks=0"  the same with two fields changed

Each override means what `--config.<field>=<value>` means on the command line: ml_collections'
own flag parser reads it into the field's type.
"""

from __future__ import annotations

import copy

import ml_collections
from absl import flags
from ml_collections import config_flags
from ml_collections.config_flags import config_path

from shared.errors import ConfigError

_FLAG = "method_config"  # the throw-away flag whose `--<_FLAG>.<field>=<value>` overrides apply


def parse_method(spec: str) -> tuple[str, list[tuple[str, str]]]:
  """'name:a.b=v;c=w' -> ('name', [('a.b', 'v'), ('c', 'w')]); values stay text."""
  name, _, rest = spec.partition(":")
  overrides = []
  for item in filter(None, (s.strip() for s in rest.split(";"))):
    key, eq, value = item.partition("=")
    if not eq:
      raise ConfigError(f"method {spec!r}: override {item!r} is not 'field=value'")
    overrides.append((key.strip(), value.strip()))
  return name, overrides


def _field_type(config: ml_collections.ConfigDict, spec: str, key: str) -> type:
  try:
    field_type = config_path.get_type(key, config)
  except (KeyError, AttributeError, IndexError, ValueError):
    field_type = None
  if field_type is None or issubclass(field_type, ml_collections.ConfigDict):
    raise ConfigError(f"method {spec!r}: no config field {key!r}")
  return field_type


def method_config(config: ml_collections.ConfigDict, spec: str) -> ml_collections.ConfigDict:
  """A copy of `config` with the spec's overrides applied (unknown fields are errors)."""
  name, overrides = parse_method(spec)
  if name not in config.method_table:
    known = ", ".join(config.method_table)
    raise ConfigError(f"unknown method {name!r} in {spec!r}; known: {known}")
  cfg = copy.deepcopy(config)  # keeps the table's references (supcon_ft's mask ratio) linked
  for key, value in overrides:
    field_type = _field_type(cfg, spec, key)
    argv = ["mcae", f"--{_FLAG}.{key}={value}"]
    flag_values = flags.FlagValues()  # the overrides land in `cfg` itself
    config_flags.DEFINE_config_dict(_FLAG, cfg, flag_values=flag_values, sys_argv=argv)
    try:
      flag_values(argv)
    except flags.IllegalFlagValueError:
      raise ConfigError(
        f"method {spec!r}: {key}={value!r} is not a {field_type.__name__}"
      ) from None
  return cfg


def pretrain_config(cfg: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """`cfg.pretrain` with the method's pre-training updates applied (after the spec's overrides)."""
  updates = cfg.method_table[name].pretrain
  if updates is None:
    raise ConfigError(f"method {name!r} has no pre-training")
  pretrain_cfg = ml_collections.ConfigDict(copy.deepcopy(cfg.pretrain.to_dict()))
  pretrain_cfg.update(updates.to_dict())
  return pretrain_cfg


def folder_name(spec: str) -> str:
  """The spec as a folder name: 'mcae:a.b=0.9' -> 'mcae__a.b_0.9'."""
  return "".join(c if c.isalnum() or c in "._-" else "_" for c in spec.replace(":", "__"))


def check_method(cfg: ml_collections.ConfigDict, spec: str) -> None:
  """Values that only make sense together: a mask ratio of 0 leaves MAE nothing to reconstruct
  (and its masked-patch loss divides by zero), 1 leaves the encoder no visible token."""
  name, _ = parse_method(spec)
  if cfg.method_table[name].pretrain is None:
    return
  pre = pretrain_config(cfg, name)
  if pre.mae_weight > 0 and not 0.0 < pre.mask_ratio < 1.0:
    raise ConfigError(
      f"method {spec!r}: pretrain.mask_ratio={pre.mask_ratio} must be in (0, 1) with the MAE "
      "term on (0 masks nothing to reconstruct, 1 leaves the encoder no visible patch)"
    )
  if not 0.0 <= pre.mask_ratio < 1.0:
    raise ConfigError(
      f"method {spec!r}: mask ratio {pre.mask_ratio} must be in [0, 1) (1 leaves the encoder no "
      "visible patch)"
    )
