"""`python -m infotok --config configs/infotok.py --workdir runs/infotok`."""

from infotok.train import train_and_evaluate
from shared import app

if __name__ == "__main__":
  app.main("infotok", train_and_evaluate)
