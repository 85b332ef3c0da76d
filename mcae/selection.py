"""Training to convergence: evaluate source val every K steps, keep the best, stop on a plateau.

The held-out domain plays no part: selection reads the sources' val split only. Every
`convergence.eval_every` steps the classifier scores source val; the params with the highest
source-val AUC (ties: the lower EER) are saved with their step, and after `convergence.patience`
evaluations without a better one training stops (`EarlyStop`); the step cap (`finetune.num_steps`,
`baselines.supervised_steps`) bounds the rest. The best and its step live in the sub-run's folder,
so an interrupted run resumes with the best seen before the interruption and the same patience;
without a folder (the Python API) they are kept in memory, as host copies.
"""

from __future__ import annotations

import os

import jax

from mcae import evaluate
from shared import workdir
from shared.metrics import fas_metrics


class EarlyStop(Exception):  # noqa: N818  (a signal, not an error)
  """Raised from the hook when source val has not improved for `patience` evaluations."""

  def __init__(self, step: int):
    super().__init__(f"early stop at step {step}")
    self.step = step


class BestValSelection:
  """A `train_loop` hook: scores source val, keeps the params with the best AUC, stops when it
  plateaus (patience 0 = never stop early). `folder` None keeps the best in memory."""

  def __init__(self, stage, folder: str | None, source_val, eval_batch_size: int, data_sharding,
               *, every: int, patience: int):  # fmt: skip
    self.stage, self.source_val = stage, source_val
    self.eval_batch_size, self.data_sharding = eval_batch_size, data_sharding
    self.every, self.patience = every, patience
    self.folder = folder
    self.kept = None  # in memory (folder None): host copies of the best params and model state
    self.best = None  # {"step", "val_auc", "val_eer"}
    if folder is not None:
      self.params_path = os.path.join(folder, "selected_params.npz")
      self.info_path = os.path.join(folder, "selection.json")
      self.best = workdir.read_result(self.info_path)

  def _better(self, val) -> bool:
    if self.best is None:
      return True
    return (val["auc"], -val["eer"]) > (self.best["val_auc"], -self.best["val_eer"])

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
    if self._better(val):
      self.best = {"step": int(step), "val_auc": val["auc"], "val_eer": val["eer"]}
      if self.folder is None:
        self.kept = jax.device_get((state.params, state.model_state))
      else:
        workdir.save_params(
          self.params_path, {"params": state.params, "model_state": state.model_state}
        )
        workdir.write_result(self.info_path, self.best)
    elif self.patience and (step - self.best["step"]) >= self.patience * self.every:
      raise EarlyStop(int(step))
    return {"select_val_auc": val["auc"], "select_val_eer": val["eer"]}

  def restore(self, state=None):
    """(params, model_state): the selected ones when there are, else the state's own."""
    if self.folder is None:
      if self.kept is None:
        return state.params, state.model_state
      params, model_state = self.kept
      return (
        jax.device_put(params, self.stage.sharding.params),
        jax.device_put(model_state, self.stage.sharding.model_state),
      )
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
