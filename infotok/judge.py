"""The attribute judge: a scene parser trained on real renders, used to score generated images.

For each of the grid x grid cells of a `shapes` scene it predicts the shape (or 'empty'), the
colour and the size of the object there. It is trained once, independently of every tokenizer
and unified model, on real renders of the training split (never on reconstructions or generations),
and its accuracy on real test renders is reported as the ceiling of the generation scores.

Why not `shared.models.resnet.SmallCNN`: it pools globally, which throws away the positions the
judge must read; this net flattens its last feature map instead.
"""

from __future__ import annotations

import logging
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from shared import stages, train_lib
from shared.data.convert import to_float
from shared.workdir import load_params, save_params

RETRAIN = "delete {path} and re-run the same command to train the judge again"

NUM_SHAPES, NUM_COLOURS, NUM_SIZES = 5, 6, 2


def cell_windows(resolution: int, grid: int) -> tuple[int, list[int]]:
  """A square window per grid cell: (side, top-left offsets along one axis).

  Windows are centred on the cells and slightly larger than them (side = ceil(cell) + 1), clipped
  to the image; objects never leave their cell, so a window holds its cell's object whole.
  """
  cell = resolution / grid
  side = min(int(np.ceil(cell)) + 1, resolution)
  starts = [
    int(np.clip(round((i + 0.5) * cell - side / 2), 0, resolution - side)) for i in range(grid)
  ]
  return side, starts


class JudgeNet(nn.Module):
  """Images [B, H, W, 3] -> per-cell logits: shape [B, C, 1 + S] (0 = empty), colour, size.

  Each cell's window goes through one small CNN shared by all cells (translation equivariance
  makes the judge data-efficient: every image gives grid**2 training crops):
  conv3x3 -> conv3x3/2 -> conv3x3/2 -> flatten -> dense -> heads.
  """

  grid: int = 3
  widths: tuple[int, ...] = (16, 32, 64)
  hidden: int = 128

  @nn.compact
  def classify(self, crops_MxSxSxC):
    """Cell crops -> (shape [M, 1 + S], colour [M, 6], size [M, 2]) logits."""
    x = (crops_MxSxSxC - 0.5) / 0.25
    for i, w in enumerate(self.widths):
      x = nn.relu(nn.Conv(w, (3, 3), strides=(1, 1) if i == 0 else (2, 2), padding="SAME")(x))
    feat = nn.relu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
    shape = nn.Dense(1 + NUM_SHAPES, name="shape")(feat)
    colour = nn.Dense(NUM_COLOURS, name="colour")(feat)
    size = nn.Dense(NUM_SIZES, name="size")(feat)
    return shape, colour, size

  def __call__(self, images_BxHxWxC):
    b = images_BxHxWxC.shape[0]
    logits = self.classify(
      crops(images_BxHxWxC, self.grid).reshape(-1, *crop_shape(images_BxHxWxC, self.grid))
    )
    return tuple(t.reshape(b, self.grid**2, -1) for t in logits)


def crop_shape(images, grid):
  side, _ = cell_windows(images.shape[1], grid)
  return (side, side, images.shape[-1])


def crops(images_BxHxWxC, grid: int):
  """[B, grid**2, side, side, C] cell windows, cells in reading order (numpy or jax arrays)."""
  side, starts = cell_windows(images_BxHxWxC.shape[1], grid)
  xp = jnp if isinstance(images_BxHxWxC, jax.Array) else np
  windows = [images_BxHxWxC[:, r : r + side, q : q + side] for r in starts for q in starts]
  return xp.stack(windows, axis=1)


def cell_targets(arrays: dict, num_cells: int) -> dict[str, np.ndarray]:
  """Per-cell targets [N, C] from object arrays ([N, K], -1 = absent): shape 0 = empty, else 1+s."""
  n = len(arrays["shape"])
  out = {k: np.zeros((n, num_cells), np.int32) for k in ("cell_shape", "cell_colour", "cell_size")}
  rows, slots = np.nonzero(arrays["shape"] >= 0)
  cells = arrays["pos"][rows, slots]
  out["cell_shape"][rows, cells] = arrays["shape"][rows, slots] + 1
  out["cell_colour"][rows, cells] = arrays["colour"][rows, slots]
  out["cell_size"][rows, cells] = arrays["size"][rows, slots]
  return out


def judge_loss(logits, targets):
  """CE of the shape (or empty) of every crop, and of colour and size where there is an object."""
  shape, colour, size = logits
  occupied = (targets["cell_shape"] > 0).astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels
  l_shape = ce(shape, targets["cell_shape"]).mean()
  denom = jnp.maximum(occupied.sum(), 1.0)
  l_colour = (ce(colour, targets["cell_colour"]) * occupied).sum() / denom
  l_size = (ce(size, targets["cell_size"]) * occupied).sum() / denom
  return l_shape + l_colour + l_size


def score_predictions(pred: dict[str, np.ndarray], targets: dict[str, np.ndarray]) -> dict:
  """Per-attribute and all-correct rates of per-cell predictions against per-cell targets.

  Object-level attributes are scored on the cells that hold an object in the target:
  'shape', 'colour', 'size' (correct attribute there) and 'position' (an object detected there).
  'empty' is the rate at which target-empty cells are predicted empty (no spurious objects).
  'all_correct': every cell right (empty or the right shape, colour and size).
  """
  occupied = targets["cell_shape"] > 0
  present = pred["cell_shape"] > 0
  shape_ok = pred["cell_shape"] == targets["cell_shape"]
  colour_ok = pred["cell_colour"] == targets["cell_colour"]
  size_ok = pred["cell_size"] == targets["cell_size"]
  cell_ok = np.where(occupied, shape_ok & colour_ok & size_ok, ~present)
  n_obj = max(int(occupied.sum()), 1)
  out = {
    "shape": float((shape_ok & occupied).sum() / n_obj),
    "colour": float((colour_ok & occupied).sum() / n_obj),
    "size": float((size_ok & occupied).sum() / n_obj),
    "position": float((present & occupied).sum() / n_obj),
    "empty": float((~present & ~occupied).sum() / max(int((~occupied).sum()), 1)),
    "all_correct": float(cell_ok.all(axis=1).mean()),
  }
  out["attribute_mean"] = float(np.mean([out[k] for k in ("shape", "colour", "size", "position")]))
  return out


CRITIC_SMOOTHING = 0.1  # of `Judge.critic_scores`


def item_attribute_mean(pred: dict[str, np.ndarray], targets: dict[str, np.ndarray]) -> np.ndarray:
  """Per image: the fraction right of (shape, colour, size, detected) over its objects' cells, [B]
  (images without objects score 1). The per-item form of `score_predictions`' attribute mean,
  which weights objects, not images."""
  occupied = targets["cell_shape"] > 0
  hits = sum(
    (pred[k] == targets[k]) & occupied for k in ("cell_shape", "cell_colour", "cell_size")
  ) + ((pred["cell_shape"] > 0) & occupied)
  n_obj = occupied.sum(axis=1)
  return np.where(n_obj > 0, hits.sum(axis=1) / np.maximum(4 * n_obj, 1), 1.0)


class Batched:
  """`_batched(fn, x)`: fn(self.params, chunk) over fixed-size chunks of x (the last one padded,
  so each jitted fn compiles once: `shared.stages.batched_apply`), outputs concatenated."""

  params = None
  batch_size = 500

  def _batched(self, fn, inputs):
    return stages.batched_apply(lambda chunk: fn(self.params, chunk), inputs, self.batch_size)


class Judgement:
  """One pass of a judge over a set of images (`Judging.judgement`), scored against the first
  len(images) rows of `arrays` (their scenes or captions).

  Scores, per-image scores, FD features and the InfoNCE critic all derive from the same network
  outputs, so an evaluation that needs several of them runs the judge once per image set. What
  the images are compared with (`targets`: per-cell targets, or the judge's caption embeddings)
  is computed once too, on first use.
  """

  def __init__(self, judge, outputs, arrays=None):
    self.judge = judge
    self.outputs = outputs
    self.arrays = arrays
    self._targets = None

  @property
  def targets(self):
    if self._targets is None:
      if self.arrays is None:
        raise ValueError("this judgement has no arrays to score the images against")
      self._targets = self.judge.targets_of(self.arrays)
    return self._targets

  def scores(self) -> dict:
    """The judge's scores of the set (`judge_images`)."""
    return self.judge.scores_of(self.outputs, self.targets)

  def items(self) -> np.ndarray:
    """Per-image scores (`item_scores`), [N]."""
    return self.judge.items_of(self.outputs, self.targets)

  def critic(self) -> np.ndarray:
    """The fixed critic s_ij (`critic_scores`), [N, N]."""
    return self.judge.critic_of(self.outputs, self.targets)

  def features(self) -> np.ndarray:
    """FD features of the images (`features`), [N, D]."""
    return self.judge.features_of(self.outputs)


class Judging:
  """The interface of every InfoTok judge (`Judge`, `grid_bed.GridJudge`,
  `captions.RetrievalJudge`), built on what each defines: `outputs(images)` (its one network pass)
  and the pure `targets_of`, `scores_of`, `items_of`, `critic_of`, `features_of`.

  `judgement(images, arrays)` is the pass to derive several quantities from; `judge_images`,
  `item_scores`, `critic_scores` and `features` are one quantity each (one pass each);
  `reference_features(arrays, n)` is `features` of a split's real images, cached per judge.
  """

  relevance_key = "attribute_mean"  # the score that measures task relevance (tokenizer selection)

  def judgement(self, images, arrays=None) -> Judgement:
    sub = None if arrays is None else {k: v[: len(images)] for k, v in arrays.items()}
    return Judgement(self, self.outputs(images), sub)

  def judge_images(self, images, arrays) -> dict:
    return self.judgement(images, arrays).scores()

  def item_scores(self, images, arrays) -> np.ndarray:
    return self.judgement(images, arrays).items()

  def critic_scores(self, images, arrays) -> np.ndarray:
    return self.judgement(images, arrays).critic()

  def features(self, images) -> np.ndarray:
    return self.judgement(images).features()

  def reference_features(self, arrays, n: int) -> np.ndarray:
    """FD features (`features`) of the real images `arrays['clean'][:n]`, the reference of every
    reconstruction and generation FD on that split: computed on the first call for a split and n,
    then read from this judge's cache (one pass per split and n in a run, not one per tokenizer
    or unified model). Splits are keyed by the identity of their 'clean' array, which the cache
    holds on to (splits are never modified in place)."""
    clean = arrays["clean"]
    cache = self.__dict__.setdefault("_reference_cache", {})
    key = (id(clean), min(n, len(clean)))
    hit = cache.get(key)
    if hit is None or hit[0] is not clean:
      hit = cache[key] = (clean, self.features(clean[:n]))
    return hit[1]


class Judge(Batched, Judging):
  """A trained JudgeNet: `predict(images)` -> per-cell predictions, `features(images)` for FD.

  `judge_images(images, arrays)` scores images against the scenes in `arrays` (their rows in
  order); `judgement(images, arrays)` is one pass for several quantities (`Judging`).
  """

  def __init__(self, params, grid: int, widths, hidden: int, batch_size: int = 500):
    self.params = params
    self.grid = grid
    self.num_cells = grid**2
    self.net = JudgeNet(grid, tuple(widths), hidden)
    self.batch_size = batch_size
    net = self.net
    key = stages.stage_key("infotok/judge/logits", grid, tuple(widths), hidden)
    self._logits = stages.compiled(key, lambda: jax.jit(lambda p, x: net.apply({"params": p}, x)))

  def _batched(self, fn, images):
    return super()._batched(fn, to_float(np.asarray(images)).astype(np.float32))

  def outputs(self, images):
    """Per-cell logits (shape [N, C, 1 + S], colour [N, C, 6], size [N, C, 2]): one pass."""
    return self._batched(self._logits, images)

  @staticmethod
  def predictions_of(logits) -> dict[str, np.ndarray]:
    shape, colour, size = logits
    return {
      "cell_shape": shape.argmax(-1),
      "cell_colour": colour.argmax(-1),
      "cell_size": size.argmax(-1),
    }

  def predict(self, images) -> dict[str, np.ndarray]:
    return self.predictions_of(self.outputs(images))

  def targets_of(self, arrays) -> dict[str, np.ndarray]:
    return cell_targets(arrays, self.num_cells)

  def scores_of(self, logits, targets) -> dict:
    return score_predictions(self.predictions_of(logits), targets)

  def items_of(self, logits, targets) -> np.ndarray:
    """Per image, the attribute mean of its described objects (`item_attribute_mean`)."""
    return item_attribute_mean(self.predictions_of(logits), targets)

  @staticmethod
  def features_of(logits) -> np.ndarray:
    """Concatenated per-cell log-probabilities, clipped at -10 (a scene-level feature for FD).

    Log-probabilities rather than probabilities: near-one-hot probabilities give near-singular
    covariances, on which the matrix square root of the FD is slow and unstable.
    """
    shape, colour, size = logits
    lp = lambda a: np.maximum(np.asarray(jax.nn.log_softmax(a, axis=-1)), -10.0).reshape(len(a), -1)
    return np.concatenate([lp(shape), lp(colour), lp(size)], axis=1)

  @staticmethod
  def critic_of(logits, targets) -> np.ndarray:
    """s_ij = log q(scene j | image i) [N, N] under the judge's per-cell posteriors, each mixed
    with `CRITIC_SMOOTHING` of the uniform (one confident mistake must not sink a row): the log
    probability of scene j's shape (or empty) in every cell and of its colour and size in the
    cells it occupies. A fixed critic, so `shared.mi.infonce(s)` is a lower bound on
    I(image; scene) (any critic gives one)."""
    occupied = (targets["cell_shape"] > 0).astype(np.float32)
    n = len(logits[0])
    scores = np.zeros((n, n), np.float64)
    heads = zip(logits, ("cell_shape", "cell_colour", "cell_size"), strict=True)
    for i, (logits_NxCxK, key) in enumerate(heads):
      p_NxCxK = np.asarray(jax.nn.softmax(logits_NxCxK, axis=-1), np.float64)
      k = p_NxCxK.shape[-1]
      logp_NxCxK = np.log((1 - CRITIC_SMOOTHING) * p_NxCxK + CRITIC_SMOOTHING / k)
      onehot_NxCxK = np.eye(logits_NxCxK.shape[-1])[targets[key]]
      if i > 0:  # colour and size only where scene j has an object
        onehot_NxCxK = onehot_NxCxK * occupied[..., None]
      scores += np.einsum("ick,jck->ij", logp_NxCxK, onehot_NxCxK)
    return scores

  def save(self, path: str) -> None:
    save_params(path, self.params)

  @classmethod
  def load(cls, path: str, grid: int, widths, hidden: int) -> Judge:
    return cls(load_params(path, recover=RETRAIN.format(path=path)), grid, widths, hidden)


def render_scenes(
  n: int,
  *,
  resolution: int,
  grid: int,
  min_objects: int,
  max_objects: int,
  nuisance: float,
  seed: int,
) -> dict[str, np.ndarray]:
  """Fresh `shapes` scenes over *all* (shape, colour) pairs, rendered clean and with nuisance.

  The judge is an instrument, not a model under test: it may see the combinations held out from
  the models (otherwise its own compositional failures would be charged to the models). Drawn
  from its own seed with the data set's own sampler and renderer.
  """
  from shared.data import shapes, shapes_render

  pairs = [(s, c) for s in range(NUM_SHAPES) for c in range(NUM_COLOURS)]
  rng = np.random.default_rng([seed, 7])
  attrs = shapes.sample_attributes(rng, n, pairs, grid, min_objects, max_objects)
  image, clean = shapes_render.render_pair(
    rng,
    *(attrs[k] for k in ("shape", "colour", "size", "pos", "offset")),
    resolution=resolution,
    grid=grid,
    strength=nuisance,
  )
  return {"image": to_float(image), "clean": to_float(clean), **attrs}


def train_judge(cfg, train: dict, grid: int, seed: int, workdir: str) -> Judge:
  """Trains (or loads from `workdir/judge.npz`) the judge on real renders.

  Args:
    cfg: `config.judge`: inputs (which renders: 'clean', 'image'), steps, batch_size, lr,
      widths, hidden.
    train: arrays with the renders in `cfg.inputs` and per-object 'shape', 'colour', 'size',
      'pos' (the output of `render_scenes`, or a data split).
  """
  path = os.path.join(workdir, "judge.npz")
  if os.path.exists(path):
    return Judge.load(path, grid, cfg.widths, cfg.hidden)
  start = time.time()
  cell = cell_targets(train, grid**2)
  sources = [train[k] for k in cfg.inputs]
  occupied = np.argwhere(cell["cell_shape"] > 0)  # (image, cell) pairs with an object
  empty = np.argwhere(cell["cell_shape"] == 0)
  net = JudgeNet(grid, tuple(cfg.widths), cfg.hidden)
  side, starts = cell_windows(sources[0].shape[1], grid)
  dummy = np.zeros((1, side, side, sources[0].shape[-1]), np.float32)
  params = net.init(jax.random.key(seed), dummy, method=JudgeNet.classify)["params"]
  tx = optax.adam(train_lib.learning_rate_schedule(_sched(cfg), cfg.steps))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, t):
    def loss_fn(p):
      return judge_loss(net.apply({"params": p}, x, method=JudgeNet.classify), t)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  # Crops, not images: an image holds 1-2 objects in 9 cells, so sampling cells with a fixed
  # share of objects spends the compute on what is hard to judge (shapes).
  rng = np.random.default_rng(seed)
  n_obj = int(round(cfg.batch_size * cfg.object_fraction))
  for i in range(cfg.steps):
    pairs = np.concatenate(
      [
        occupied[rng.integers(0, len(occupied), n_obj)],
        empty[rng.integers(0, len(empty), cfg.batch_size - n_obj)],
      ]
    )
    src = rng.integers(0, len(sources), len(pairs))
    rows, cols = np.divmod(pairs[:, 1], grid)
    x = np.stack(
      [
        sources[s][img, starts[r] : starts[r] + side, starts[c] : starts[c] + side]
        for s, img, r, c in zip(src, pairs[:, 0], rows, cols, strict=True)
      ]
    )
    t = {k: v[pairs[:, 0], pairs[:, 1]] for k, v in cell.items()}
    params, opt_state, loss = step(params, opt_state, x, t)
    if (i + 1) % max(cfg.steps // 4, 1) == 0:
      logging.info("judge step %d/%d loss %.4f", i + 1, cfg.steps, float(loss))
  judge = Judge(params, grid, cfg.widths, cfg.hidden)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    judge.save(path)
  logging.info("judge trained in %.1fs", time.time() - start)
  return judge


def _sched(cfg):
  import ml_collections

  return ml_collections.ConfigDict(
    dict(lr=cfg.lr, warmup_steps=0, schedule="cosine", end_lr_factor=0.0)
  )
