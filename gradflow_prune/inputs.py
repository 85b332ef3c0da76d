"""The data of a run: its splits (uint8 images) and the training batches in the model's range."""

from __future__ import annotations

import numpy as np

from gradflow_prune import diffusion
from shared import data as data_lib
from shared.data import pipeline


def load_split(config, split: str) -> dict:
  options = {"image_size": config.data.image_size} if config.data.image_size else {}
  return data_lib.load(config.data.name, split, data_dir=config.data.data_dir or None, **options)


def train_batches(config, images01: np.ndarray, batch_size: int, seed: int, cache_dir: str):
  """`start_step -> batches` in the model's [-1, 1] range, from `config.data.pipeline`."""

  def to_model(b):
    return {"image": diffusion.to_model_range(data_lib.to_float(b["image"])).astype(np.float32)}

  return pipeline.train_batches(
    config.data, {"image": images01}, batch_size, seed=seed, cache_dir=cache_dir, transform=to_model
  )
