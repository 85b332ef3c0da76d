"""Samples from an exported pruned U-Net: `python -m gradflow_prune.sample MODEL_DIR OUT.png`.

    python -m gradflow_prune.sample runs/gp/runs/keep0.7/iterative/grasp/seed0/model grid.png \
        [--num 64] [--seed 0] [--ddim_steps 100] [--npz samples.npz]

A missing, foreign or inconsistent model folder: one line `error: ...` on stderr, exit code 2
(`shared.cli`).
"""

from __future__ import annotations

import argparse
import sys

from shared import cli
from shared.errors import ConfigError


def _args(argv):
  p = argparse.ArgumentParser(prog="python -m gradflow_prune.sample", description=__doc__)
  p.add_argument("model_dir", help="a run's model/ folder (model.safetensors + unet.json)")
  p.add_argument("out", help="PNG grid to write")
  p.add_argument("--num", type=int, default=64, help="number of samples")
  p.add_argument("--seed", type=int, default=0, help="seed of the initial noise")
  p.add_argument("--ddim_steps", type=int, default=None, help="default: as evaluated")
  p.add_argument("--npz", default="", help="also save the samples ([0, 1], NHWC) here")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = _args(sys.argv[1:] if argv is None else argv)
  if args.num < 1:
    raise ConfigError(f"--num must be >= 1, got {args.num}")
  import jax  # noqa: PLC0415

  from gradflow_prune import api, evaluate, export  # noqa: PLC0415
  from shared.workdir import save_npz  # noqa: PLC0415

  model = export.load(args.model_dir)
  images = api.sample(model, args.num, jax.random.PRNGKey(args.seed), steps=args.ddim_steps)
  evaluate.save_grid(images, args.out, title=args.model_dir)
  if args.npz:
    save_npz(args.npz, {"samples": images})
  print(f"wrote {args.out} ({args.num} samples)")
  return 0


if __name__ == "__main__":
  sys.exit(cli.guarded(main))
