"""Model selection during fine-tuning: keep the params with the lowest source-val EER.

The held-out domain plays no part: selection reads the sources' val split only. The best params
and their step are saved in the sub-run's folder, so an interrupted fine-tuning resumes with the
best seen before the interruption.
"""

from __future__ import annotations

import os

import jax

from mcae import evaluate
from shared import workdir
from shared.metrics import fas_metrics


class BestValSelection:
  """A `train_loop` hook: scores source val, saves the params when the EER is the lowest yet."""

  def __init__(self, stage, folder: str, source_val, eval_batch_size: int, data_sharding):
    self.stage, self.source_val = stage, source_val
    self.eval_batch_size, self.data_sharding = eval_batch_size, data_sharding
    self.params_path = os.path.join(folder, "selected_params.npz")
    self.info_path = os.path.join(folder, "selection.json")
    self.folder = folder
    self.best = workdir.read_result(self.info_path)  # {"step", "val_eer", "val_auc"} or None

  def __call__(self, step, state):
    scores = evaluate.predict(
      self.stage.score,
      state.params,
      state.model_state,
      self.source_val,
      self.eval_batch_size,
      self.data_sharding,
    )
    val = fas_metrics(scores, self.source_val["label"])
    if self.best is None or val["eer"] <= self.best["val_eer"]:
      self.best = {"step": int(step), "val_eer": val["eer"], "val_auc": val["auc"]}
      workdir.save_params(
        self.params_path, {"params": state.params, "model_state": state.model_state}
      )
      workdir.write_result(self.info_path, self.best)
    return {"select_val_eer": val["eer"], "select_val_auc": val["auc"]}

  def restore(self, state):
    """(params, model_state): the selected ones when there are, else the state's own."""
    if self.best is None or not os.path.exists(self.params_path):
      return state.params, state.model_state
    restored = workdir.load_params(
      self.params_path,
      recover=f"delete the folder {self.folder} and re-run the same command (it trains again)",
    )
    model_state = restored.get("model_state", {})  # a ViT has none (an empty tree is not saved)
    return (
      jax.device_put(restored["params"], self.stage.sharding.params),
      jax.device_put(model_state, self.stage.sharding.model_state),
    )
