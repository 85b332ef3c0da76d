from shared import app
from tests.toy.train import train_and_evaluate

if __name__ == "__main__":
  app.main("toy", train_and_evaluate)
