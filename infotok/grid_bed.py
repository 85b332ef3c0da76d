"""InfoTok on `cifar_grid` (issue 17's natural-image bed): its judge and its caption scores.

A `cifar_grid` scene is a 2x2 grid of 32x32 cells, 1-2 of them holding a real CIFAR-10 photograph,
the others a plain grey background (`shared.data.cifar_grid`). What the captions and answers name
is (class, position) per object; pose, background and texture are the high-entropy content they
never mention.

The judge (`GridJudge`) is not trained by the run: it is the shipped CIFAR-10 classifier
(`shared.judge.SHIPPED_CIFAR10`, a ResNet-18 trained on the real CIFAR-10 training images only,
93.53% on the test split), applied to each cell, with a cell called empty when its pixels stay
within `empty_threshold` (mean absolute difference) of the background grey. It offers the same
interface as the `shapes` attribute judge (`infotok.judge.Judging`): per-cell predictions, scores
('class', 'position', 'empty', 'all_correct', 'attribute_mean' = mean of class and position),
features for FD (per-cell log-probabilities of empty + 10 classes), a fixed critic for the
InfoNCE bound and per-image scores for the paired statistics.
"""

from __future__ import annotations

import numpy as np

from infotok.beds import GRID_ATTRS as ATTRS
from infotok.judge import Judging
from shared import judge as judge_lib
from shared.data import cifar_grid
from shared.data.convert import to_float

CRITIC_SMOOTHING = 0.1  # as `infotok.judge.CRITIC_SMOOTHING`
EMPTY_WIDTH = 0.01  # softness of the empty / occupied boundary in the critic's probabilities


def cells(images_NxHxWxC) -> np.ndarray:
  """[N, 4, 32, 32, C] float32 cells in reading order (top left, top right, bottom left, ...)."""
  x = np.asarray(to_float(np.asarray(images_NxHxWxC)), np.float32)
  c = cifar_grid.CELL
  return np.stack([x[:, r : r + c, q : q + c] for r in (0, c) for q in (0, c)], axis=1)


def cell_targets(arrays: dict) -> np.ndarray:
  """[N, 4] per-cell targets from the object arrays: 0 = empty, else 1 + CIFAR-10 class."""
  n = len(arrays["cls"])
  out = np.zeros((n, cifar_grid.GRID**2), np.int32)
  rows, slots = np.nonzero(np.asarray(arrays["cls"]) >= 0)
  out[rows, np.asarray(arrays["pos"])[rows, slots]] = np.asarray(arrays["cls"])[rows, slots] + 1
  return out


class GridJudge(Judging):
  """Per-cell class judge of `cifar_grid` scenes (see the module docstring)."""

  def __init__(
    self,
    path: str = judge_lib.SHIPPED_CIFAR10,
    background: int = 128,
    empty_threshold: float = 0.05,
    batch_size: int = 500,
  ):
    self.path = path
    self.classifier = judge_lib.load(path, batch_size=batch_size)
    self.background = float(background) / 255.0
    self.empty_threshold = float(empty_threshold)
    self.num_cells = cifar_grid.GRID**2

  def outputs(self, images) -> tuple[np.ndarray, np.ndarray]:
    """(class probabilities [N, 4, 10], deviation from the background [N, 4]): the classifier's
    one pass over every cell."""
    x = cells(images)
    n = len(x)
    flat = x.reshape(n * self.num_cells, *x.shape[2:])
    probs = judge_lib.probabilities(self.classifier, flat).reshape(n, self.num_cells, -1)
    deviation = np.abs(x - self.background).mean(axis=(2, 3, 4))
    return np.asarray(probs, np.float64), deviation

  def posterior_of(self, outputs) -> np.ndarray:
    """[N, 4, 11] probabilities of (empty, class 0..9) per cell: a soft empty test on the
    deviation from the background, the classifier's probabilities for the rest."""
    probs, deviation = outputs
    z = np.clip((self.empty_threshold - deviation) / EMPTY_WIDTH, -50.0, 50.0)
    p_empty = 1.0 / (1.0 + np.exp(-z))
    return np.concatenate([p_empty[..., None], (1.0 - p_empty)[..., None] * probs], axis=-1)

  def predictions_of(self, outputs) -> np.ndarray:
    """[N, 4] per-cell predictions: 0 = empty (deviation below the threshold), else 1 + class."""
    probs, deviation = outputs
    return np.where(deviation < self.empty_threshold, 0, 1 + probs.argmax(-1)).astype(np.int32)

  def predict(self, images) -> np.ndarray:
    return self.predictions_of(self.outputs(images))

  def features_of(self, outputs) -> np.ndarray:
    """Per-cell log-probabilities of (empty, 10 classes), clipped at -10, concatenated [N, 44]."""
    post = self.posterior_of(outputs)
    return np.maximum(np.log(post + 1e-12), -10.0).reshape(len(post), -1).astype(np.float32)

  @staticmethod
  def score_predictions(pred: np.ndarray, target: np.ndarray) -> dict:
    """'class' (right class where the scene has an object), 'position' (an object detected
    there), 'empty' (empty cells predicted empty), 'all_correct' (every cell right) and their
    'attribute_mean' (of class and position)."""
    occupied, present = target > 0, pred > 0
    n_obj = max(int(occupied.sum()), 1)
    cell_ok = np.where(occupied, pred == target, ~present)
    out = {
      "class": float(((pred == target) & occupied).sum() / n_obj),
      "position": float((present & occupied).sum() / n_obj),
      "empty": float((~present & ~occupied).sum() / max(int((~occupied).sum()), 1)),
      "all_correct": float(cell_ok.all(axis=1).mean()),
    }
    out["attribute_mean"] = float(np.mean([out[k] for k in ATTRS]))
    return out

  @staticmethod
  def targets_of(arrays) -> np.ndarray:
    return cell_targets(arrays)

  def scores_of(self, outputs, target) -> dict:
    return self.score_predictions(self.predictions_of(outputs), target)

  def items_of(self, outputs, target) -> np.ndarray:
    """Per image, the fraction right of (class, detected) over its objects' cells (1 if none)."""
    pred = self.predictions_of(outputs)
    occupied = target > 0
    hits = ((pred == target) & occupied).sum(1) + ((pred > 0) & occupied).sum(1)
    n_obj = occupied.sum(1)
    return np.where(n_obj > 0, hits / np.maximum(2 * n_obj, 1), 1.0)

  def critic_of(self, outputs, target) -> np.ndarray:
    """s_ij = log q(scene j | image i) [N, N]: the log probability, under the judge's per-cell
    posteriors mixed with `CRITIC_SMOOTHING` of the uniform, of scene j's content (empty or its
    class) in every cell. A fixed critic, so `shared.mi.infonce(s)` is a lower bound on
    I(image; scene)."""
    post = self.posterior_of(outputs)
    k = post.shape[-1]
    logp_NxCxK = np.log((1 - CRITIC_SMOOTHING) * post + CRITIC_SMOOTHING / k)
    onehot_NxCxK = np.eye(k)[target]
    return np.einsum("ick,jck->ij", logp_NxCxK, onehot_NxCxK)
