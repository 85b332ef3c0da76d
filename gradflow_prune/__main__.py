"""`python -m gradflow_prune --config configs/gradflow_prune.py[:variant] --workdir DIR`."""

from gradflow_prune.train import train_and_evaluate
from shared import app

if __name__ == "__main__":
  app.main("gradflow_prune", train_and_evaluate)
