"""`python -m mcae --config configs/mcae.py --workdir runs/mcae`."""

from mcae.train import train_and_evaluate
from shared import app

if __name__ == "__main__":
  app.main("mcae", train_and_evaluate)
