"""Toy config: `python -m tests.toy --config tests/toy/config.py:tiny --workdir /tmp/toy`."""

import ml_collections

from shared import config_utils

VARIANTS = ("tiny",)


def get_config(arg=None):
  args = config_utils.parse_arg(arg, variants=VARIANTS)
  cfg = ml_collections.ConfigDict()
  cfg.method = "toy"
  cfg.variant = args.variant
  cfg.seed = 0
  cfg.data = ml_collections.ConfigDict(dict(name="digits", data_dir=""))
  cfg.batch_size = 64
  cfg.num_steps = 60 if args.variant == "tiny" else 300
  cfg.hidden = 64
  cfg.nan_at_step = -1  # test hook: poison the loss from this step on
  cfg.slow_data_s = 0.0  # test hook: sleep per batch (to SIGTERM a run mid-way)
  cfg.optimizer = config_utils.optimizer_config(lr=3e-3, warmup_steps=5, ema_decay=0.9)
  cfg.run = config_utils.run_config(log_every=10, checkpoint_every=20, progress=False)
  return cfg
