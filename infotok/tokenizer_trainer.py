"""Training of the shared visual tokenizer (`infotok.tokenizer`) and its evaluation-time maps.

Every variant of a sweep has the same architecture and differs only in the loss weights, which
the step takes as traced arrays: one compiled initialiser, step and set of maps per process for
all of them (`shared.stages.compiled`, keyed on the tokenizer config, text shapes and mesh).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from infotok import quantizers, subrun
from infotok import text as text_lib
from infotok.tokenizer import WEIGHT_NAMES, Tokenizer, make_tokenizer, num_codes, objective
from shared import data as data_lib
from shared import stages, train_lib
from shared.errors import ConfigError
from shared.models.conv import grid_size

EVAL_BATCH = 500  # rows per call of an evaluation-time map (one compiled shape)


class TokenizerTrainer:
  """Trains tokenizer variants that share one architecture (one compiled step for all of them)."""

  def __init__(self, cfg, text_vocab_size: int, text_length: int, mesh, num_steps: int):
    self.cfg = cfg
    self.model = make_tokenizer(cfg, text_vocab_size, text_length)
    self.mesh = mesh
    self.num_steps = num_steps
    self.tx = train_lib.make_optimizer(cfg.optimizer, num_steps)
    self.num_codes = num_codes(cfg)
    self.data_sharding = train_lib.batch_sharding(mesh)
    # Everything the compiled pieces close over.
    self._key = ("infotok/tokenizer", cfg, text_vocab_size, text_length, num_steps)
    self._key += (subrun.mesh_key(mesh),)
    self._maps = stages.compiled(stages.stage_key(*self._key, "maps"), self._build_maps)

  def _build_maps(self):
    def jitted(method):
      return jax.jit(lambda p, x: self.model.apply({"params": p}, x, method=method))

    return {
      "tokens": jitted(Tokenizer.tokens),
      "reconstruct": jitted(Tokenizer.reconstruct),
      "decode": jitted(Tokenizer.decode_indices),
      "posterior": jitted(Tokenizer.posterior),
      "evaluate": jitted(Tokenizer.evaluate),
    }

  def init_state(self, seed: int, sample_image, sample_caption):
    """A fresh TrainState (and its sharding); the initialiser is compiled once per process."""

    def init_fn(key):
      params = self.model.init(key, sample_image, sample_caption, key, 0.0)["params"]
      usage = jnp.ones((max(self.num_codes, 1),), jnp.float32)
      return params, {"usage": usage}

    key = stages.stage_key(*self._key, "init", sample_image, sample_caption)
    return subrun.init_state(key, seed, init_fn, self.tx, self.mesh)

  def train_step(self, state_sharding):
    """The jitted `step(state, batch, weights) -> (state, metrics)` (compiled once per process)."""
    key = stages.stage_key(*self._key, "step")
    return stages.compiled(key, lambda: self._build_step(state_sharding))

  def _build_step(self, state_sharding):
    cfg = self.cfg
    revive = cfg.quantizer == "vq" and cfg.revive_dead_codes

    def step(state, batch, w):
      key = state.step_rng()
      grad_fn = jax.value_and_grad(
        lambda p: objective(
          self.model, p, batch, key, w, entropy_temperature=cfg.entropy_temperature
        ),
        has_aux=True,
      )
      (_, (metrics, indices, mu)), grads = grad_fn(state.params)
      usage = state.model_state["usage"]
      if self.num_codes:
        counts = jnp.bincount(indices.reshape(-1), length=self.num_codes).astype(jnp.float32)
        usage = cfg.usage_decay * usage + (1 - cfg.usage_decay) * counts
        p = counts / jnp.sum(counts)
        metrics["batch_code_entropy"] = -jnp.sum(jnp.where(p > 0, p * jnp.log(p), 0.0))
      new_state = state.apply_gradients(grads, model_state={"usage": usage})
      if revive:
        params = new_state.params
        codebook = params["quant"]["codebook"]
        fresh = quantizers.revive_dead_codes(
          jax.random.fold_in(key, 1),
          codebook,
          usage,
          mu.reshape(-1, mu.shape[-1]),
          cfg.revive_threshold,
        )
        params = {**params, "quant": {**params["quant"], "codebook": fresh}}
        new_state = new_state.replace(params=params)
        metrics["dead_codes"] = jnp.mean((usage < cfg.revive_threshold).astype(jnp.float32))
      metrics["grad_norm"] = optax.tree.norm(grads)
      return new_state, metrics

    replicated = NamedSharding(self.mesh, P())
    return jax.jit(
      step,
      in_shardings=(state_sharding, self.data_sharding, replicated),
      out_shardings=(state_sharding, replicated),
      donate_argnums=(0,),
    )

  def train(
    self,
    workdir: str | None,
    log_dir: str | None,
    stage: str,
    weights: Mapping[str, float],
    arrays,
    seed: int,
  ):
    """Trains one variant in `workdir` (resumable) and returns its params.

    Args:
      workdir: its checkpoints; None keeps none (`subrun.train`).
      log_dir: where metrics.jsonl is (rows tagged with `stage`); unused without a workdir.
      weights: the objective weights (see WEIGHT_NAMES); missing ones are 0.
      arrays: 'image', 'target', 'caption' of the training split ('caption' [N, K, L] holds K
        captions per image, one drawn per step: `text.pick_captions`).
    """
    unknown = set(weights) - set(WEIGHT_NAMES)
    if unknown:
      raise ConfigError(f"unknown tokenizer loss weights {sorted(unknown)}; known: {WEIGHT_NAMES}")
    w = {k: jnp.asarray(float(weights.get(k, 0.0)), jnp.float32) for k in WEIGHT_NAMES}
    first = arrays["caption"][:1]
    first = first[:, 0] if first.ndim == 3 else first  # [N, K, L]: every caption of an image
    state, sharding = self.init_state(seed, arrays["image"][:1], first)
    step = self.train_step(sharding)
    cfg = self.cfg

    def batches(start):
      stream = data_lib.batches(arrays, cfg.batch_size, seed=seed, start_step=start)
      return text_lib.pick_captions(stream, seed, start)

    step_fn = lambda s, b: step(s, b, w)
    state = subrun.train(
      cfg, state, step_fn, batches, self.num_steps, self.data_sharding, workdir, log_dir, stage
    )
    return jax.device_get(state.params)

  # -- evaluation-time maps (posterior mean, no noise), batched with one compiled shape ---------

  def _batched(self, name: str, params, x):
    return stages.batched_apply(lambda chunk: self._maps[name](params, chunk), x, EVAL_BATCH)

  def tokens(self, params, images) -> np.ndarray:
    if not self.num_codes:
      raise ConfigError("a continuous tokenizer has no discrete tokens for the unified models")
    return self._batched("tokens", params, images).astype(np.int32)

  def reconstruct(self, params, images) -> np.ndarray:
    return np.clip(self._batched("reconstruct", params, images), 0.0, 1.0)

  def decode(self, params, indices) -> np.ndarray:
    return np.clip(self._batched("decode", params, indices), 0.0, 1.0)

  def posterior(self, params, images):
    return self._batched("posterior", params, images)

  def evaluate(self, params, images) -> dict[str, np.ndarray]:
    """`reconstruct` ('recon'), `posterior` ('mu', 'logvar') and, with discrete codes, `tokens`
    ('indices') of the same images from one pass of the encoder (`Tokenizer.evaluate`)."""
    out = self._batched("evaluate", params, images)
    out["recon"] = np.clip(out["recon"], 0.0, 1.0)
    if self.num_codes:
      out["indices"] = out["indices"].astype(np.int32)
    else:
      del out["indices"]  # a continuous tokenizer has no discrete tokens
    return out

  def grid(self, image_size: int) -> int:
    return grid_size(image_size, self.cfg.patch_size, len(self.cfg.widths))


def log_summary(name: str, metrics: Mapping[str, float]) -> None:
  keys = ("psnr_image", "psnr_clean", "code_perplexity", "rate_nats", "kl_nats", "relevance")
  logging.info(
    "tokenizer %s: %s", name, ", ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics)
  )
