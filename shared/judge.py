"""One fixed CIFAR-10 judge for every method that scores CIFAR-like images.

A CIFAR ResNet-18 (`shared.models.resnet.ResNetClassifier`, any width) trained once on the real
CIFAR-10 train split, then frozen and shipped small (float16 variables in one .npz). Its
penultimate features are the feature space of every CIFAR-10 FD in this repo (gradflow_prune's
samples against the data, InfoTok's generated cells), and its logits are the class judge
(per-sample class, confidence, class histogram). FDs only compare when they come from the same
extractor, which is why there is one, with its training command and test accuracy inside it.

    python -m shared.judge --out runs/cifar10_judge --width 32 --epochs 60     # train (resumable)
    judge = shared.judge.load("runs/cifar10_judge/judge.npz")  # a shared.fd.FeatureExtractor
    feats = judge(images)                  # (N, 8 * width) features; images uint8 or [0, 1] float
    probs = shared.judge.probabilities(judge, images)          # (N, 10) softmax

The recipe is the field's CIFAR one (kuangliu/pytorch-cifar, the unlearnable-examples victims):
SGD, momentum 0.9 (Nesterov), weight decay 5e-4, cosine schedule, pad-4 random crop and
horizontal flip; the lr scales as 0.1 * batch / 128. The inputs are standardised inside the
network with the train split's per-channel mean and std, computed from the data.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from shared import augment, cli, config_utils, data, fd, stages, train_lib, workdir
from shared.errors import ConfigError, DataError
from shared.models.resnet import ResNetClassifier

FILE = "judge.npz"
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_CIFAR10 = "shared/assets/cifar10_judge"  # ResNet-18 w32, 93.53% (docs/results.md)


def _float_images(images_BxHxWxC: jax.Array) -> jax.Array:
  if images_BxHxWxC.dtype == jnp.uint8:
    return images_BxHxWxC.astype(jnp.float32) / 255.0
  return images_BxHxWxC.astype(jnp.float32)


def crop_flip(key: jax.Array, images_BxHxWxC: jax.Array) -> jax.Array:
  """Zero-pad by H // 8 (torchvision's RandomCrop(32, padding=4) at 32x32), random crop, h-flip."""
  pad = max(1, images_BxHxWxC.shape[1] // 8)

  def one(k, img):
    k_crop, k_flip = jax.random.split(k)
    return augment.random_flip(k_flip, augment.pad_and_crop(k_crop, img, pad, "constant"))

  return augment.per_example(one, key, images_BxHxWxC)


def train(
  out: str,
  *,
  dataset: str = "cifar10",
  width: int = 32,
  stage_sizes: tuple[int, ...] = (2, 2, 2, 2),
  epochs: int = 60,
  batch_size: int = 256,
  seed: int = 0,
  dtype: str = "bfloat16",
  data_dir: str | None = None,
  command: str = "",
) -> dict:
  """Trains the judge into `out/` (checkpoints resume after a kill) and writes `out/judge.npz`.

  Returns the result also written to `out/result.json`: test accuracy of the saved (float16)
  judge, parameter count, steps, wall time, device.
  """
  if width < 1 or epochs < 1 or batch_size < 1:
    raise ConfigError(f"need width, epochs, batch_size >= 1; got {width}, {epochs}, {batch_size}")
  done = workdir.read_result(os.path.join(out, "result.json"))
  if done is not None and os.path.isfile(os.path.join(out, FILE)):
    return done
  start = time.time()
  train_split = data.load(dataset, "train", data_dir=data_dir)
  test_split = data.load(dataset, "test", data_dir=data_dir)
  images = train_split["image"]
  if images.dtype != np.uint8 or images.ndim != 4:
    raise DataError(f"{dataset}: expected uint8 NHWC images, got {images.dtype} {images.shape}")
  num_classes = int(train_split["label"].max()) + 1
  as_float = images.astype(np.float32) / 255.0
  mean = tuple(float(m) for m in as_float.mean(axis=(0, 1, 2)))
  std = tuple(float(s) for s in as_float.std(axis=(0, 1, 2)))
  del as_float
  arch_kwargs = dict(
    num_classes=num_classes,
    width=width,
    stage_sizes=list(stage_sizes),
    input_mean=mean,
    input_std=std,
  )
  model = ResNetClassifier(**arch_kwargs, dtype=train_lib.compute_dtype(dtype))

  steps_per_epoch = len(images) // batch_size
  total = steps_per_epoch * epochs
  opt = config_utils.optimizer_config(
    name="sgd", lr=0.1 * batch_size / 128, momentum=0.9, nesterov=True, weight_decay=5e-4
  )
  tx = train_lib.make_optimizer(opt, total)
  mesh = train_lib.make_mesh(devices=jax.local_devices()[:1])

  def init_fn(key):
    variables = model.init(key, jnp.zeros((1, *images.shape[1:]), jnp.float32))
    return variables["params"], {"batch_stats": variables["batch_stats"]}

  state, state_sharding = train_lib.init_state(init_fn, tx, jax.random.PRNGKey(seed), mesh)

  def loss_fn(params, model_state, batch, rng):
    x = crop_flip(rng, _float_images(batch["image"]))
    logits, new_state = model.apply(
      {"params": params, **model_state}, x, train=True, mutable=["batch_stats"]
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return loss, ({"accuracy": jnp.mean(logits.argmax(-1) == batch["label"])}, dict(new_state))

  data_sharding = train_lib.batch_sharding(mesh)
  step = train_lib.make_step(train_lib.loss_step(loss_fn), state_sharding, data_sharding)
  batches = lambda s: data.batches(train_split, batch_size, seed=seed, start_step=s)
  state = stages.run_stage(
    state=state,
    step_fn=step,
    batches=batches,
    num_steps=total,
    data_sharding=data_sharding,
    checkpoint_dir=os.path.join(out, "checkpoints"),
    log_dir=out,
    stage="judge",
    checkpoint_every=max(steps_per_epoch * 5, 1),
    log_every=steps_per_epoch,
    progress=True,
    tensorboard=False,
  )
  half = jax.tree.map(
    lambda a: np.asarray(a, np.float16),
    jax.device_get({"params": state.params, **state.model_state}),
  )
  n_params = int(sum(np.size(a) for a in jax.tree.leaves(state.params)))
  depth = "18" if tuple(stage_sizes) == (2, 2, 2, 2) else "-".join(map(str, stage_sizes))
  name = f"cifar_resnet{depth}_w{width}_{dataset}_seed{seed}"
  info = dict(
    dataset=dataset,
    width=width,
    stage_sizes=list(stage_sizes),
    params=n_params,
    epochs=epochs,
    steps=total,
    batch_size=batch_size,
    seed=seed,
    dtype=dtype,
    stored="float16",
    command=command,
  )
  judge = fd.FeatureExtractor(name, "resnet_classifier", arch_kwargs, half, images.shape[1:], info)
  judge = _as_float32(judge)  # what `load` gives: the float16 weights, computed in float32
  info["test_accuracy"] = accuracy(judge, test_split["image"], test_split["label"])
  info["train_accuracy"] = accuracy(judge, images, train_split["label"])
  info["wall_s"] = round(time.time() - start, 1)
  info["device"] = f"{len(jax.local_devices())} x {jax.devices()[0].device_kind}"
  fd.FeatureExtractor(name, "resnet_classifier", arch_kwargs, half, images.shape[1:], info).save(
    os.path.join(out, FILE)
  )
  workdir.write_result(os.path.join(out, "result.json"), info)
  return info


def _as_float32(extractor: fd.FeatureExtractor) -> fd.FeatureExtractor:
  extractor.variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), extractor.variables)
  return extractor


def load(path: str, batch_size: int = 500) -> fd.FeatureExtractor:
  """The judge saved by `train` (`path` the .npz or its folder; a relative path that does not
  exist here is taken from the repository root, so `SHIPPED_CIFAR10` works from any folder),
  computing in float32."""
  if not os.path.isabs(path) and not os.path.exists(path):  # e.g. shared/assets/... from any cwd
    path = os.path.join(_REPO_ROOT, path)
  if os.path.isdir(path):
    path = os.path.join(path, FILE)
  judge = fd.FeatureExtractor.load(path, batch_size=batch_size)
  if judge.arch != "resnet_classifier":
    raise DataError(f"{path} holds a {judge.arch!r} extractor, not a judge (resnet_classifier)")
  return _as_float32(judge)


@functools.lru_cache(maxsize=8)
def _softmax_fn(module):
  return jax.jit(lambda v, x: jax.nn.softmax(module.apply(v, _float_images(x)), axis=-1))


def probabilities(judge: fd.FeatureExtractor, images) -> np.ndarray:
  """(N, num_classes) class probabilities of the judge for NHWC images (uint8 or [0, 1])."""
  fn = _softmax_fn(judge.module)
  return stages.batched_apply(
    lambda x: fn(judge.variables, x), np.asarray(images), judge.batch_size
  )


def accuracy(judge: fd.FeatureExtractor, images, labels) -> float:
  """The fraction of images whose top class is their label."""
  return float(np.mean(probabilities(judge, images).argmax(-1) == np.asarray(labels)))


def evaluate(path: str, dataset: str = "cifar10", data_dir: str | None = None) -> dict:
  """The saved judge's accuracy and mean top-class probability on `dataset`'s test split."""
  loaded = load(path)
  test = data.load(dataset, "test", data_dir=data_dir)
  probs = probabilities(loaded, test["image"])
  return dict(
    test_accuracy=float(np.mean(probs.argmax(-1) == test["label"])),
    mean_confidence=float(probs.max(-1).mean()),
    n=len(test["label"]),
    recorded_test_accuracy=loaded.info.get("test_accuracy"),
  )


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m shared.judge", description=__doc__.split("\n")[0]
  )
  parser.add_argument("--out", help="folder for checkpoints, judge.npz, result.json")
  parser.add_argument(
    "--evaluate", metavar="PATH", help="only evaluate a saved judge (.npz or folder)"
  )
  parser.add_argument("--data", default="cifar10", help="a registered labelled image set")
  parser.add_argument(
    "--width", type=int, default=32, help="ResNet-18 first-stage width (64 = standard)"
  )
  parser.add_argument("--epochs", type=int, default=60)
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--dtype", default="bfloat16", help="compute dtype: float32 | bfloat16")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--gate", type=float, default=0.93, help="test accuracy it must reach")
  argv = sys.argv[1:] if argv is None else argv
  try:
    args = parser.parse_args(argv)
  except SystemExit as e:  # argparse's own usage error (exit 2) or --help (exit 0)
    return int(e.code or 0)
  if args.evaluate:
    r = evaluate(args.evaluate, args.data, args.data_dir)
    print(
      f"judge {args.evaluate}: {args.data} test accuracy {r['test_accuracy']:.4f} on {r['n']} "
      f"images (recorded: {r['recorded_test_accuracy']}), mean confidence "
      f"{r['mean_confidence']:.4f}, on {jax.devices()[0].device_kind}"
    )
    return 0
  if not args.out:
    raise ConfigError("--out DIR is required to train (or --evaluate PATH to evaluate)")
  command = "python -m shared.judge " + " ".join(argv)
  info = train(
    args.out,
    dataset=args.data,
    width=args.width,
    epochs=args.epochs,
    batch_size=args.batch_size,
    seed=args.seed,
    dtype=args.dtype,
    data_dir=args.data_dir,
    command=command,
  )
  verdict = "met" if info["test_accuracy"] >= args.gate else "MISSED"
  print(
    f"judge: test accuracy {info['test_accuracy']:.4f} (gate {args.gate}: {verdict}), "
    f"{info['params']:,} params, {info['wall_s']} s on {info['device']}"
  )
  return 0 if verdict == "met" else 1


if __name__ == "__main__":
  sys.exit(cli.guarded(main))
