"""`python -m unlearnable --config configs/unlearnable.py[:variant] --workdir DIR`."""

from shared import app
from unlearnable.train import train_and_evaluate

if __name__ == "__main__":
  app.main("unlearnable", train_and_evaluate)
