"""infotok.unified.loss_fn's cross-entropy (logsumexp shared by the masked style's two terms)
equals optax's per-term formulation it replaced, in value and gradient, in both styles."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from infotok import unified


def _old_per_pos(logits, tokens, target, same_pos):
  ce_next = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:])
  ce_next = jnp.pad(ce_next, ((0, 0), (1, 0)))
  ce_same = optax.softmax_cross_entropy_with_integer_labels(logits, tokens)
  return jnp.where(target, ce_next, 0.0) + jnp.where(same_pos, ce_same, 0.0)


@pytest.mark.parametrize("style", ["ar", "masked"])
def test_shared_logsumexp_equals_optax_terms(style, monkeypatch):
  b, length, vocab, n_img = 4, 12, 50, 6
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, vocab - 1, (b, length)), jnp.int32)
  image = jnp.zeros((b, length), bool).at[:, 3 : 3 + n_img].set(True)
  target = jnp.asarray(rng.random((b, length)) < 0.6)
  batch = {"tokens": tokens, "target": target, "image": image, "task": jnp.array([0, 1, 0, 2])}
  layout = types.SimpleNamespace(num_image_tokens=n_img, special=lambda name: vocab - 1)
  seen = {}

  class Model:  # the "network" is the logits themselves, so the gradient is d loss / d logits
    dropout_rate = 0.0

    @staticmethod
    def apply(variables, inputs, mask, train, rngs):
      seen["inputs"] = inputs
      return variables["params"]

  logits = jnp.asarray(rng.normal(size=(b, length, vocab)) * 3, jnp.float32)
  key = jax.random.PRNGKey(1)

  def new_loss(p):
    return unified.loss_fn(Model, style, layout, p, batch, key)[0]

  # The old loss on the same masking: the <mask> positions loss_fn chose (tokens never equal the
  # <mask> id here), target and same_pos rebuilt as loss_fn builds them.
  def old_loss(p):
    t, same = target, jnp.zeros_like(target)
    if style == "masked":
      inputs = seen["inputs"]
      same = inputs == vocab - 1
      is_t2i = (batch["task"] == 0)[:, None]
      same = same & is_t2i & image
      t = target & ~(is_t2i & image)
    per_pos = _old_per_pos(p, tokens, t, same)
    counted = (t | same).astype(jnp.float32)
    losses = []
    for task_id in range(len(unified.TASKS)):
      rows = (batch["task"] == task_id)[:, None]
      denom = jnp.sum(counted * rows)
      losses.append(
        jnp.where(denom > 0, jnp.sum(per_pos * rows) / jnp.maximum(denom, 1.0), jnp.nan)
      )
    return jnp.nanmean(jnp.stack(losses))

  v_new, g_new = jax.value_and_grad(new_loss)(logits)
  if style == "masked":
    assert bool((seen["inputs"] == vocab - 1).any())  # some image codes were masked
  v_old, g_old = jax.value_and_grad(old_loss)(logits)
  np.testing.assert_allclose(v_new, v_old, rtol=1e-6)
  np.testing.assert_allclose(g_new, g_old, rtol=1e-5, atol=1e-7)


def test_masked_style_makes_one_pass_over_the_vocabulary():
  """One logsumexp (one reduce_max over the vocabulary axis) per step, not one per CE term."""
  b, length, vocab = 2, 8, 64
  tokens = jnp.zeros((b, length), jnp.int32)
  image = jnp.zeros((b, length), bool).at[:, 2:6].set(True)
  batch = {"tokens": tokens, "target": ~image, "image": image, "task": jnp.array([0, 1])}
  layout = types.SimpleNamespace(num_image_tokens=4, special=lambda name: vocab - 1)
  model = types.SimpleNamespace(dropout_rate=0.0, apply=lambda v, *a, **k: v["params"])
  logits = jnp.zeros((b, length, vocab), jnp.float32)

  def loss(p):
    return unified.loss_fn(model, "masked", layout, p, batch, jax.random.PRNGKey(0))[0]

  jaxpr = jax.make_jaxpr(loss)(logits)

  def vocab_max_reductions(jp):
    n = 0
    for eqn in jp.eqns:
      if eqn.primitive.name == "reduce_max" and eqn.invars[0].aval.shape[-1:] == (vocab,):
        n += 1
      for p in eqn.params.values():  # nested (pjit, custom_jvp) calls carry a ClosedJaxpr
        if hasattr(p, "jaxpr"):
          n += vocab_max_reductions(p.jaxpr)
    return n

  assert vocab_max_reductions(jaxpr.jaxpr) == 1
