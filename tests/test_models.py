"""Shapes, parameter counts and semantic properties of the shared models (tiniest sizes)."""

import functools

import chex
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from shared.errors import ConfigError
from shared.masks import random_masking
from shared.models import (
  MAE,
  MLP,
  VGG16,
  ResNet18,
  SmallCNN,
  TransformerLM,
  ViTClassifier,
  ViTEncoder,
  causal_mask,
  get_classifier,
  init_classifier_from_mae,
  mae_loss,
  patchify,
  prefix_causal_mask,
  sincos_2d,
  span_bidirectional_mask,
  unpatchify,
)

KEY = jax.random.key(0)
# Compiling threefry random bits is slow on CPU; where a test draws inside a jitted function
# (a real init, dropout), an RBG key compiles in a fraction of the time.
FAST_KEY = jax.random.key(0, impl="rbg")


def n_params(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def fake_init(model, *args, seed=0, **kwargs):
  """Variables with `model.init`'s tree, filled from numpy.

  Compiling `init` (dozens of RNG calls) costs seconds per model on CPU; tracing it with
  `eval_shape` checks the same code for a fraction of that. One test runs a real `init`.
  """
  shapes = jax.eval_shape(functools.partial(model.init, **kwargs), KEY, *args)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    if path[-1].key in ("scale", "var"):  # LayerNorm / BatchNorm scales, running variances
      return jnp.ones(leaf.shape, leaf.dtype)
    return jnp.asarray(0.2 * rng.normal(size=leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


_JITTED = {}


def apply(model, *args, **kwargs):
  """`model.apply` with static `kwargs`, jitted once per (model, kwargs): XLA compiles the whole
  tiny model faster than eager mode compiles each op."""
  key = (model, repr(sorted(kwargs.items())))
  if key not in _JITTED:
    _JITTED[key] = jax.jit(functools.partial(model.apply, **kwargs))
  return _JITTED[key](*args)


def images(batch=2, h=16, w=16, c=3, seed=0):
  return jax.random.uniform(jax.random.key(seed), (batch, h, w, c))


def tiny_mae(**kw):
  kw = dict(size="mu", patch_size=4, decoder_width=16, decoder_depth=1, decoder_num_heads=2, **kw)
  return MAE(**kw)


# ------------------------------------------------------------------------------------------------
# ViT / MAE


def shapes_of(model, *args, **kwargs):
  """Output shapes of `model.apply` on fake variables, by tracing only (no compile)."""
  variables = fake_init(model, *args, **kwargs)
  return jax.eval_shape(functools.partial(model.apply, **kwargs), variables, *args)


@pytest.mark.parametrize("use_cls_token", [True, False])
def test_vit_encoder_shapes(use_cls_token):
  model = ViTEncoder(size="mu", patch_size=4, use_cls_token=use_cls_token)
  x = images(h=16, w=8)
  chex.assert_shape(shapes_of(model, x), (2, 8 + int(use_cls_token), 32))
  ids_keep = jnp.array([[0, 5, 7], [1, 2, 3]])
  chex.assert_shape(shapes_of(model, x, ids_keep), (2, 3 + int(use_cls_token), 32))


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_vit_classifier_shapes(pool):
  x = images()
  logits = shapes_of(ViTClassifier(num_classes=5, size="mu", patch_size=4, pool=pool), x)
  assert logits.shape == (2, 5) and logits.dtype == jnp.float32
  features = shapes_of(ViTClassifier(num_classes=None, size="mu", patch_size=4, pool=pool), x)
  chex.assert_shape(features, (2, 32))


def test_vit_b16_param_count():
  model = ViTClassifier(num_classes=1000, size="B", patch_size=16)
  shapes = jax.eval_shape(model.init, KEY, jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  count = n_params(shapes["params"])
  # timm's vit_base_patch16_224 has 86,567,656 = this + 197 x 768 learned position embeddings.
  assert count == 86_567_656 - 197 * 768
  assert abs(count - 86e6) / 86e6 < 0.01


def test_vit_sizes_and_overrides():
  shapes = jax.eval_shape(
    ViTEncoder(size="Ti", patch_size=8, depth=1).init,
    KEY,
    jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32),
  )
  assert shapes["params"]["cls_token"].shape == (1, 1, 192)
  assert [k for k in shapes["params"] if k.startswith("block_")] == ["block_0"]
  with pytest.raises(ConfigError, match="unknown ViT size"):
    fake_init(ViTEncoder(size="XXL"), images())
  with pytest.raises(ConfigError, match="divisible"):
    fake_init(ViTEncoder(size="mu", patch_size=5), images())
  with pytest.raises(ConfigError):
    get_classifier("vgg", num_classes=10)


def test_sincos_matches_direct_formula():
  dim, gh, gw = 16, 3, 5
  emb = sincos_2d(dim, (gh, gw), cls_token=True)
  assert emb.shape == (1 + gh * gw, dim) and emb.dtype == np.float32
  np.testing.assert_array_equal(emb[0], 0.0)
  quarter = dim // 4
  for i in range(gh):
    for j in range(gw):
      row = emb[1 + i * gw + j]
      for k in range(quarter):
        omega = 1.0 / 10000 ** (k / quarter)
        # MAE: first half encodes the column (w) coordinate, second half the row (h).
        np.testing.assert_allclose(row[k], np.sin(j * omega), atol=1e-6)
        np.testing.assert_allclose(row[quarter + k], np.cos(j * omega), atol=1e-6)
        np.testing.assert_allclose(row[2 * quarter + k], np.sin(i * omega), atol=1e-6)
        np.testing.assert_allclose(row[3 * quarter + k], np.cos(i * omega), atol=1e-6)
  np.testing.assert_array_equal(sincos_2d(dim, 4), sincos_2d(dim, (4, 4)))


def test_patchify_roundtrip_and_mae_order():
  x = np.asarray(images(batch=2, h=8, w=12, c=3))
  p = 4
  patches = patchify(x, p)
  chex.assert_shape(patches, (2, 6, p * p * 3))
  np.testing.assert_array_equal(unpatchify(patches, p, (2, 3)), x)
  sq = x[:, :, :8]
  np.testing.assert_array_equal(unpatchify(patchify(sq, p), p), sq)
  # MAE's NCHW formula: reshape (N,C,h,p,w,q), einsum nchpwq->nhwpqc, reshape (N, h*w, p*q*C).
  ref = x.transpose(0, 3, 1, 2).reshape(2, 3, 2, p, 3, p)
  ref = np.einsum("nchpwq->nhwpqc", ref).reshape(2, 6, p * p * 3)
  np.testing.assert_array_equal(patches, ref)


def test_mae_loss_counts_only_masked_patches():
  rng = np.random.default_rng(0)
  pred = rng.normal(size=(2, 6, 12)).astype(np.float32)
  target = rng.normal(size=(2, 6, 12)).astype(np.float32)
  mask = np.array([[1, 0, 1, 0, 0, 1], [0, 0, 1, 1, 1, 0]], np.float32)
  loss = float(mae_loss(pred, target, mask))
  visible = (mask == 0)[..., None]
  np.testing.assert_allclose(mae_loss(np.where(visible, pred + 100, pred), target, mask), loss)
  assert abs(float(mae_loss(np.where(visible, pred, pred + 1), target, mask)) - loss) > 0.1
  # Direct formula with normalised-pixel targets.
  t = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, keepdims=True) + 1e-6)
  per_patch = ((pred - t) ** 2).mean(-1)
  np.testing.assert_allclose(loss, (per_patch * mask).sum() / mask.sum(), rtol=1e-5)
  raw = ((pred - target) ** 2).mean(-1)
  np.testing.assert_allclose(
    mae_loss(pred, target, mask, norm_pix=False), (raw * mask).sum() / mask.sum(), rtol=1e-5
  )


def test_mae_encoder_sees_exactly_the_visible_tokens():
  model = tiny_mae(mask_ratio=0.75)
  x = images(batch=3, h=16, w=16)  # 16 patches of 4x4, K = 4 visible
  mask_key = jax.random.key(1)
  params = fake_init(model, x, mask_key)
  run = lambda *a, **k: apply(
    model, params, *a, capture_intermediates=True, mutable=["intermediates"], **k
  )
  (pred, mask, pooled), state = run(x, mask_key)
  chex.assert_shape(pred, (3, 16, 4 * 4 * 3))
  chex.assert_shape(pooled, (3, 32))
  encoder_out = state["intermediates"]["encoder"]["__call__"][0]
  chex.assert_shape(encoder_out, (3, 1 + 4, 32))  # cls + K visible tokens
  ids_keep, ref_mask, _ = random_masking(mask_key, 16, 0.75, 3)
  np.testing.assert_array_equal(mask, ref_mask)
  np.testing.assert_array_equal(mask.sum(axis=1), 12)
  # Pixels of masked patches never reach the encoder: changing them leaves the features alone.
  noise = patchify(images(batch=3, seed=7), 4)
  x_changed = unpatchify(jnp.where(mask[..., None] == 1, noise, patchify(x, 4)), 4)
  (_, _, pooled_changed), _ = run(x_changed, mask_key)
  np.testing.assert_allclose(pooled_changed, pooled, atol=1e-6)
  # Given visible indices give the same result as the key that drew them.
  (pred_ids, mask_ids, pooled_ids), _ = run(x, ids_keep=ids_keep)
  np.testing.assert_array_equal(mask_ids, mask)
  np.testing.assert_allclose(pooled_ids, pooled, atol=1e-6)
  np.testing.assert_allclose(pred_ids, pred, atol=1e-5)
  assert np.isfinite(float(mae_loss(pred, patchify(x, 4), mask)))


def test_classifier_initialised_from_mae_encoder():
  x = images()
  mae = tiny_mae(depth=1)
  mae_vars = jax.jit(mae.init)(FAST_KEY, x, jax.random.key(1))  # the one real `init`
  assert np.isfinite(jax.flatten_util.ravel_pytree(mae_vars)[0]).all()
  clf = ViTClassifier(num_classes=3, size="mu", patch_size=4, depth=1)
  clf_vars = fake_init(clf, x, seed=2)
  new_vars = init_classifier_from_mae(clf_vars, mae_vars)
  chex.assert_trees_all_equal(new_vars["params"]["encoder"], mae_vars["params"]["encoder"])
  chex.assert_trees_all_equal(new_vars["params"]["head"], clf_vars["params"]["head"])
  # Bare params trees work too.
  bare = init_classifier_from_mae(clf_vars["params"], mae_vars["params"])
  chex.assert_trees_all_equal(bare["encoder"], mae_vars["params"]["encoder"])
  other = fake_init(clf.clone(width=64), x)
  with pytest.raises(ConfigError, match="does not match"):
    init_classifier_from_mae(other, mae_vars)


def test_vit_remat_matches_and_differentiates():
  x = images()
  plain = ViTClassifier(num_classes=4, size="mu", patch_size=4, depth=1)
  remat = plain.clone(remat=True)
  params = fake_init(plain, x)
  chex.assert_trees_all_equal_structs(params, fake_init(remat, x))
  loss, grads = jax.jit(jax.value_and_grad(lambda p: remat.apply(p, x)[:, 0].sum()))(params)
  np.testing.assert_allclose(loss, apply(plain, params, x)[:, 0].sum(), rtol=1e-5)
  assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))


# ------------------------------------------------------------------------------------------------
# ResNet / CNN / MLP


def test_resnet18_param_count():
  shapes = jax.eval_shape(
    ResNet18(num_classes=10).init, KEY, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  )
  assert n_params(shapes["params"]) == 11_173_962  # PyTorch CIFAR ResNet-18, 10 classes


def test_vgg16_param_count():
  shapes = jax.eval_shape(
    VGG16(num_classes=10).init, KEY, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  )
  # kuangliu/pytorch-cifar VGG('VGG16'): 13 conv (bias) + BN, Linear(512, 10): 14,728,266
  assert n_params(shapes["params"]) == 14_728_266


@pytest.mark.parametrize(
  "model",
  [
    ResNet18(num_classes=7, width=4),
    VGG16(num_classes=7, width=4),
    SmallCNN(num_classes=7, widths=(4, 8)),
    MLP(7, hidden=(16,)),
  ],
  ids=["resnet18", "vgg16", "small_cnn", "mlp"],
)
@pytest.mark.parametrize("shape", [(8, 8, 1), (12, 12, 3), (32, 32, 3)])
def test_classifier_shapes(model, shape):
  x = jax.ShapeDtypeStruct((3, *shape), jnp.float32)
  chex.assert_shape(shapes_of(model, x, train=False), (3, 7))
  variables = fake_init(model, x)
  mutable = ["batch_stats"] if "batch_stats" in variables else []
  out = jax.eval_shape(
    functools.partial(model.apply, train=True, mutable=mutable, rngs={"dropout": KEY}),
    variables,
    x,
  )
  chex.assert_shape(out[0], (3, 7))
  features = shapes_of(model.clone(num_classes=None), x)
  assert features.ndim == 2 and features.shape[0] == 3


def test_resnet_bf16_train_mode_updates_batch_stats():
  model = ResNet18(num_classes=3, width=4, dtype=jnp.bfloat16)
  x = images(batch=4, h=8, w=8, c=1)
  variables = fake_init(model, x)
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables))
  logits, updates = apply(model, variables, x, train=True, mutable=["batch_stats"])
  assert logits.dtype == jnp.float32 and np.isfinite(logits).all()
  before = variables["batch_stats"]["stem_bn"]["mean"]
  assert not np.allclose(updates["batch_stats"]["stem_bn"]["mean"], before)


# ------------------------------------------------------------------------------------------------
# Transformer LM


def tiny_lm(**kw):
  return TransformerLM(vocab_size=11, width=16, depth=2, num_heads=2, max_len=12, **kw)


def test_lm_causal_logits_ignore_the_future():
  model = tiny_lm()
  tokens = jax.random.randint(KEY, (2, 10), 0, 11)
  params = fake_init(model, tokens)
  logits = apply(model, params, tokens)
  chex.assert_shape(logits, (2, 10, 11))
  t = 4
  future_changed = tokens.at[:, t + 1 :].set((tokens[:, t + 1 :] + 3) % 11)
  logits2 = apply(model, params, future_changed)
  np.testing.assert_allclose(logits2[:, : t + 1], logits[:, : t + 1], atol=1e-5)
  assert not np.allclose(logits2[:, t + 1 :], logits[:, t + 1 :])
  # Bidirectional: the first position now sees the change.
  full = apply(model, params, tokens, causal=False)
  full2 = apply(model, params, future_changed, causal=False)
  assert not np.allclose(full[:, 0], full2[:, 0])


def test_lm_custom_mask_is_honoured():
  model = tiny_lm()
  tokens = jax.random.randint(KEY, (2, 10), 0, 11)
  params = fake_init(model, tokens)
  # Explicit masks replace the default: a causal one reproduces it (per-head [B, H, L, L] too).
  np.testing.assert_allclose(
    apply(model, params, tokens, jnp.broadcast_to(causal_mask(10), (2, 2, 10, 10))),
    apply(model, params, tokens),
    atol=1e-5,
  )
  # Show-o: text 0..3 causal, image tokens 4..7 bidirectional among themselves, text 8..9.
  bidir = jnp.array([[0, 0, 0, 0, 1, 1, 1, 1, 0, 0]] * 2, bool)
  mask = jnp.broadcast_to(span_bidirectional_mask(bidir), (2, 2, 10, 10))
  changed = tokens.at[:, 7].set((tokens[:, 7] + 1) % 11)
  a = apply(model, params, tokens, mask)
  b = apply(model, params, changed, mask)
  np.testing.assert_allclose(a[:, :4], b[:, :4], atol=1e-5)  # text before the image
  assert not np.allclose(a[:, 4], b[:, 4])  # the first image token sees the last one


def test_mask_helpers():
  m = np.asarray(span_bidirectional_mask(jnp.array([[0, 1, 1, 0, 1, 1]], bool)))
  assert m.shape == (1, 1, 6, 6)
  expected = np.tril(np.ones((6, 6), bool))
  expected[1, 2] = expected[4, 5] = True
  np.testing.assert_array_equal(m[0, 0], expected)
  p = np.asarray(prefix_causal_mask(jnp.array([2, 0]), 4))
  assert p.shape == (2, 1, 4, 4)
  np.testing.assert_array_equal(p[1, 0], np.tril(np.ones((4, 4), bool)))
  assert p[0, 0, 0, 1] and not p[0, 0, 1, 2]
  np.testing.assert_array_equal(causal_mask(4)[0, 0], np.tril(np.ones((4, 4), bool)))
  with pytest.raises(ConfigError, match="max_len"):
    fake_init(tiny_lm(), jnp.zeros((1, 13), jnp.int32))


def test_lm_heads_and_hidden_shapes():
  tokens = jnp.zeros((2, 6), jnp.int32)
  for tie in (True, False):
    model = tiny_lm(tie_embeddings=tie)
    assert ("head" in fake_init(model, tokens)["params"]) != tie
    chex.assert_shape(shapes_of(model, tokens), (2, 6, 11))
  hidden = shapes_of(tiny_lm(), tokens, method=TransformerLM.hidden)
  chex.assert_shape(hidden, (2, 6, 16))


def test_lm_remat_with_dropout_differentiates():
  model = tiny_lm(remat=True, dropout_rate=0.1)
  tokens = jax.random.randint(KEY, (2, 6), 0, 11)
  params = fake_init(model, tokens)
  loss = lambda p: model.apply(p, tokens, train=True, rngs={"dropout": FAST_KEY}).mean()
  grads = jax.jit(jax.grad(loss))(params)
  assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))


# ------------------------------------------------------------------------------------------------
# bf16 compute with f32 params


def test_bf16_compute_runs():
  bf16 = jnp.bfloat16
  x = images()
  mae = tiny_mae(dtype=bf16)
  variables = fake_init(mae, x, jax.random.key(1))
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables))
  pred, mask, pooled = apply(mae, variables, x, jax.random.key(1))
  assert pred.dtype == jnp.float32 and np.isfinite(pred).all() and np.isfinite(pooled).all()
  assert np.isfinite(float(mae_loss(pred, patchify(x, 4), mask)))
  lm = tiny_lm(dtype=bf16)
  tokens = jnp.zeros((1, 5), jnp.int32)
  logits = apply(lm, fake_init(lm, tokens), tokens)
  assert logits.dtype == jnp.float32 and np.isfinite(logits).all()
  for model in (ViTClassifier(3, size="mu", patch_size=4, dtype=bf16), SmallCNN(3, dtype=bf16)):
    assert shapes_of(model, x).dtype == jnp.float32


def test_padded_attention_equals_unpadded_attention():
  import jax
  import jax.numpy as jnp

  from shared.models.transformer import padded_attention

  q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 197, 4, 8))
  want = jax.nn.dot_product_attention(q, k, v)
  got = padded_attention(q, k, v)
  assert got.shape == want.shape
  assert jnp.allclose(got, want, atol=1e-5)
  grad = lambda f: jax.grad(lambda q: jnp.sum(f(q, k, v) ** 2))(q)
  assert jnp.allclose(grad(padded_attention), grad(jax.nn.dot_product_attention), atol=1e-4)


def test_transformer_lm_cached_decoding_equals_the_full_forward():
  """Prefill then one token at a time with `decode` gives the logits of the full forward, under
  a causal mask and under a mask with a bidirectional span (Show-o's)."""
  from shared.models.transformer import TransformerLM, causal_mask, span_bidirectional_mask

  model = TransformerLM(vocab_size=50, width=32, depth=2, num_heads=4, max_len=16)
  tokens = jax.random.randint(jax.random.key(0), (3, 16), 0, 50)
  params = model.init(jax.random.key(1), tokens)["params"]
  span = np.zeros((3, 16), bool)
  span[:, 2:8] = True
  for mask in (jnp.broadcast_to(causal_mask(16), (3, 1, 16, 16)), span_bidirectional_mask(span)):
    full = model.apply({"params": params}, tokens, mask)
    decode = lambda *a: model.apply({"params": params}, *a, method=TransformerLM.decode)
    logits, cache = decode(tokens[:, :9], 0, model.init_cache(3), mask[:, :, :9])
    pieces = [logits]
    for p in range(9, 16):
      logits, cache = decode(tokens[:, p : p + 1], p, cache, mask[:, :, p : p + 1])
      pieces.append(logits)
    np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, atol=1e-5)
