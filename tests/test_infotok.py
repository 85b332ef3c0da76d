"""InfoTok: regularisers against shared.mi, the rate-vs-beta property, layouts, decoding, judge,
text side, selection, and the `tiny` variant end to end through the command line."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from infotok import beds, evaluate, tokenizer, unified, unified_trainer
from infotok import judge as judge_lib
from infotok import regularizers as reg
from infotok import text as text_lib
from shared import mi, train_lib
from shared.data import shapes
from shared.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_tokenizer_cfg(quantizer="fsq"):
  return ml_collections.ConfigDict(
    dict(
      widths=(16,),
      patch_size=8,
      patch_hidden=0,
      blocks_per_stage=0,
      latent_blocks=1,
      quantizer=quantizer,
      fsq_levels=(5, 5, 5),
      codebook_size=16,
      code_dim=4,
      commitment=0.25,
      normalize_codes=True,
      embed_dim=16,
    )
  )


def batch_and_model(quantizer="fsq", n=8):
  rng = np.random.default_rng(0)
  batch = {
    "image": rng.uniform(size=(n, 16, 16, 3)).astype(np.float32),
    "caption": rng.integers(0, 10, size=(n, 6)).astype(np.int32),
  }
  batch["target"] = batch["image"]
  model = tokenizer.make_tokenizer(small_tokenizer_cfg(quantizer), 10, 6)
  params = model.init(jax.random.key(0), batch["image"], batch["caption"], jax.random.key(1), 0.0)[
    "params"
  ]
  return model, params, batch


def weights(**kw):
  return {k: jnp.float32(kw.get(k, 0.0)) for k in tokenizer.WEIGHT_NAMES}


# ------------------------------------------------------------------------------------------------
# Regularisers = shared.mi called directly


def test_regularizers_equal_shared_mi():
  k = jax.random.split(jax.random.key(0), 5)
  mu, logvar = jax.random.normal(k[0], (4, 9, 3)), jax.random.normal(k[1], (4, 9, 3))
  np.testing.assert_allclose(
    reg.vib_rate(mu, logvar), mi.gaussian_kl(mu, logvar).sum(-1), rtol=1e-6
  )
  x, z = (jax.random.normal(k[i], (6, 5 + i)) for i in (2, 3))
  ids = jax.random.randint(k[4], (6, 5), 0, 4)
  y = reg.caption_onehot(ids, 4)  # the definition; the term uses its distances only
  term, parts = reg.hsic_bottleneck(x, z, ids, 0.3, 2.0)
  np.testing.assert_allclose(parts["hsic_xz"], mi.hsic(x, z), rtol=1e-6)
  np.testing.assert_allclose(parts["hsic_zy"], mi.hsic(z, y), rtol=1e-5)
  np.testing.assert_allclose(term, 0.3 * mi.hsic(x, z) - 2.0 * mi.hsic(z, y), rtol=1e-5)
  s = jax.random.normal(k[0], (6, 6))
  np.testing.assert_allclose(reg.consistency(s), mi.infonce(s), rtol=1e-6)
  np.testing.assert_allclose(
    reg.clip_loss(s), np.log(6) - 0.5 * (mi.infonce(s) + mi.infonce(s.T)), rtol=1e-6
  )
  onehot = reg.caption_onehot(jnp.array([[1, 2], [1, 3]]), 4)
  np.testing.assert_allclose(jnp.sum((onehot[0] - onehot[1]) ** 2), 2.0)  # one word differs


def test_objective_logs_the_shared_mi_values_of_its_own_outputs():
  model, params, batch = batch_and_model()
  key = jax.random.key(3)
  w = weights(noise=1.0, vib=0.1, hsic_beta_x=0.5, hsic_lambda_y=0.2, consistency=0.3)
  loss, (m, _, _) = tokenizer.objective(model, params, batch, key, w, entropy_temperature=0.01)
  out = model.apply({"params": params}, batch["image"], batch["caption"], key, 1.0)
  b = batch["image"].shape[0]
  np.testing.assert_allclose(
    m["kl_nats"], mi.gaussian_kl(out["mu"], out["logvar"]).sum(-1).mean(), rtol=1e-5
  )
  np.testing.assert_allclose(
    m["hsic_xz"], mi.hsic(batch["image"].reshape(b, -1), out["zq"].reshape(b, -1)), rtol=1e-5
  )
  y = jax.nn.one_hot(batch["caption"], 10).reshape(b, -1)
  np.testing.assert_allclose(m["hsic_zy"], mi.hsic(out["zq"].reshape(b, -1), y), rtol=1e-5)
  n, d = out["mu"].shape[1:]
  expected = (
    m["mse"]
    + 0.1 * m["kl_nats"] / (n * d)
    + 0.5 * m["hsic_xz"]
    - 0.2 * m["hsic_zy"]
    - 0.3 * m["infonce"]
  )
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_larger_beta_gives_lower_rate_after_training():
  """VIB: after the same steps on a fixed batch, a larger beta leaves a smaller KL (rate)."""
  model, params0, batch = batch_and_model(n=16)
  tx = optax.adam(3e-3)

  def train(beta):
    w = weights(noise=1.0, vib=beta)

    @jax.jit
    def step(params, opt, i):
      grad = jax.grad(
        lambda p: tokenizer.objective(
          model, p, batch, jax.random.fold_in(jax.random.key(0), i), w, entropy_temperature=0.01
        )[0]
      )(params)
      upd, opt = tx.update(grad, opt, params)
      return optax.apply_updates(params, upd), opt

    params, opt = params0, tx.init(params0)
    for i in range(60):
      params, opt = step(params, opt, i)
    mu, logvar = model.apply(
      {"params": params}, batch["image"], method=tokenizer.Tokenizer.posterior
    )
    return float(reg.vib_rate(mu, logvar).mean())

  low, high = train(1e-3), train(1.0)
  assert high < 0.5 * low, (low, high)


# ------------------------------------------------------------------------------------------------
# Unified layouts and decoding


def layout():
  return unified.Layout(
    text_vocab=10,
    num_codes=7,
    num_image_tokens=4,
    caption_len=6,
    question_len=3,
    answer_len=3,
    pad_id=0,
    bos_id=1,
    eos_id=2,
  )


def test_layout_vocab_and_sequences():
  lay = layout()
  assert lay.vocab_size == 10 + 7 + 6 and lay.seq_len == 3 + 4 + 6
  img = np.array([[0, 1, 2, 6]])
  cap = np.array([[1, 5, 6, 2, 0, 0]])
  t2i = unified.build_sequences(lay, "t2i", img, caption_BxLc=cap)
  assert t2i["tokens"][0].tolist() == [
    lay.special("<t2i>"), 1, 5, 6, 2, 0, 0, lay.special("<boi>"), 10, 11, 12, 16,
    lay.special("<eoi>"),
  ]  # fmt: skip
  assert t2i["target"][0].tolist() == [False] * 8 + [True] * 4 + [False]
  i2t = unified.build_sequences(lay, "i2t", img, caption_BxLc=cap)
  # Targets: the caption words after <bos>, through <eos>, not the padding.
  assert np.flatnonzero(i2t["target"][0]).tolist() == [8, 9, 10]
  assert np.flatnonzero(i2t["image"][0]).tolist() == [2, 3, 4, 5]
  q, a = np.array([[1, 5, 2]]), np.array([[1, 7, 2]])
  vqa = unified.build_sequences(lay, "vqa", img, question_BxLq=q, answer_BxLa=a)
  assert vqa["tokens"][0, lay.answer_start : lay.answer_start + 3].tolist() == [1, 7, 2]
  assert np.flatnonzero(vqa["target"][0]).tolist() == [lay.answer_start + 1, lay.answer_start + 2]


def unified_cfg(**kw):
  base = dict(
    width=16,
    depth=1,
    num_heads=2,
    mlp_ratio=2.0,
    dropout=0.0,
    num_steps=5,
    batch_size=8,
    task_fractions=(0.5, 0.25, 0.25),
    optimizer=ml_collections.ConfigDict(
      dict(
        name="adamw", lr=1e-3, b1=0.9, b2=0.999, momentum=0.9, nesterov=False, weight_decay=0.0,
        decay_mask="all", warmup_steps=0, schedule="constant", end_lr_factor=0.0, grad_clip=0.0,
        ema_decay=0.0,
      )
    ),
    temperature=1.0,
    top_k=0,
    masked_steps=3,
    choice_temperature=4.5,
    eval_batch_size=4,
    checkpoint_every=100,
    log_every=5,
  )  # fmt: skip
  base.update(kw)
  return ml_collections.ConfigDict(base)


def raw_batch(n=8):
  rng = np.random.default_rng(0)
  cap = np.zeros((n, 6), np.int32)
  cap[:, 0], cap[:, 1:4], cap[:, 4] = 1, rng.integers(3, 10, (n, 3)), 2
  q = np.tile(np.array([[1, 5, 2]], np.int32), (n, 1))
  a = np.tile(np.array([[1, 7, 2]], np.int32), (n, 1))
  return {
    "image_tokens": rng.integers(0, 7, (n, 4)).astype(np.int32),
    "caption": cap,
    "question": q,
    "answer": a,
  }  # noqa: E501


@pytest.mark.parametrize("style", ["ar", "masked"])
def test_unified_loss_and_sampling_stay_in_their_vocabularies(style):
  lay = layout()
  trainer = unified_trainer.UnifiedTrainer(unified_cfg(), style, lay, train_lib.make_mesh())
  params = trainer.model.init(jax.random.key(0), jnp.zeros((1, lay.seq_len), jnp.int32))["params"]
  batch = {
    k: jnp.asarray(v) for k, v in unified.mixed_batch(lay, raw_batch(), (0.5, 0.25, 0.25)).items()
  }
  loss, metrics = unified.loss_fn(
    trainer.model, trainer.style, lay, params, batch, jax.random.key(1)
  )
  assert np.isfinite(loss) and set(metrics) == {"loss_t2i", "loss_i2t", "loss_vqa"}
  # Untrained logits are near uniform: each task's CE is about log V.
  np.testing.assert_allclose(metrics["loss_t2i"], np.log(lay.vocab_size), rtol=0.2)
  raw = raw_batch(6)
  codes = trainer.generate_images(params, raw["caption"], jax.random.key(2))
  assert codes.shape == (6, 4) and codes.min() >= 0 and codes.max() < lay.num_codes
  cap = trainer.caption(params, raw["image_tokens"])
  assert cap.shape == (6, 6) and (cap[:, 0] == 1).all()
  assert cap.max() < lay.text_vocab and not np.isin(cap[:, 1:], [0, 1]).any()
  ans = trainer.answer(params, raw["image_tokens"], raw["question"])
  assert ans.shape == (6, 3) and ans.max() < lay.text_vocab


@pytest.mark.parametrize("style", ["ar", "masked"])
def test_kv_cache_decoding_equals_full_recompute(style):
  """Captions, answers and AR image codes decoded with cached keys / values equal those of the
  full recompute per token (random params, so the outputs are not trivially constant)."""
  lay = layout()
  cached = unified_trainer.UnifiedTrainer(unified_cfg(depth=2), style, lay, train_lib.make_mesh())
  full = unified_trainer.UnifiedTrainer(
    unified_cfg(depth=2, kv_cache=False), style, lay, train_lib.make_mesh()
  )
  params = cached.model.init(jax.random.key(3), jnp.zeros((1, lay.seq_len), jnp.int32))["params"]
  params = jax.tree.map(lambda p: p * 4.0, params)  # sharper logits: argmax ties are unlikely
  raw = raw_batch(6)
  for fn in ("caption", "answer"):
    args = (raw["image_tokens"],) + ((raw["question"],) if fn == "answer" else ())
    np.testing.assert_array_equal(
      getattr(cached, fn)(params, *args), getattr(full, fn)(params, *args)
    )
  if style == "ar":  # the masked style generates images by MaskGIT decoding (no cache)
    key = jax.random.key(4)
    np.testing.assert_array_equal(
      cached.generate_images(params, raw["caption"], key),
      full.generate_images(params, raw["caption"], key),
    )


def test_masked_loss_only_scores_masked_image_codes_of_t2i_rows():
  lay = layout()
  trainer = unified_trainer.UnifiedTrainer(unified_cfg(), "masked", lay, train_lib.make_mesh())
  params = trainer.model.init(jax.random.key(0), jnp.zeros((1, lay.seq_len), jnp.int32))["params"]
  batch = unified.mixed_batch(lay, raw_batch(), (1.0, 0.0, 0.0))  # all t2i
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  _, m = unified.loss_fn(trainer.model, "masked", lay, params, batch, jax.random.key(1))
  assert np.isfinite(m["loss_t2i"])
  # Changing unmasked text targets cannot change the loss: t2i rows have none.
  other = dict(batch, target=jnp.zeros_like(batch["target"]))
  _, m2 = unified.loss_fn(trainer.model, "masked", lay, params, other, jax.random.key(1))
  np.testing.assert_allclose(m["loss_t2i"], m2["loss_t2i"], rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# Judge, text, evaluation helpers


def test_judge_targets_windows_and_scores():
  arrays = {
    "shape": np.array([[2, -1], [0, 4]]),
    "colour": np.array([[5, -1], [1, 3]]),
    "size": np.array([[1, -1], [0, 1]]),
    "pos": np.array([[4, -1], [0, 8]]),
  }
  t = judge_lib.cell_targets(arrays, 9)
  assert t["cell_shape"][0].tolist() == [0, 0, 0, 0, 3, 0, 0, 0, 0]
  assert t["cell_shape"][1, [0, 8]].tolist() == [1, 5] and t["cell_colour"][1, 8] == 3
  perfect = judge_lib.score_predictions(t, t)
  assert perfect["all_correct"] == 1.0 and perfect["attribute_mean"] == 1.0
  wrong = {k: v.copy() for k, v in t.items()}
  wrong["cell_colour"][1, 8] = 0
  scored = judge_lib.score_predictions(wrong, t)
  assert scored["colour"] == 2 / 3 and scored["all_correct"] == 0.5
  # Each object lies inside its cell's window (objects never leave their cell).
  side, starts = judge_lib.cell_windows(48, 3)
  img = shapes.render([[("cross", "red", "large", "bottom right")]], resolution=48)
  win = judge_lib.crops(img, 3)[0, 8]
  bg = img[0, 0, 0]
  assert side == 17 and np.abs(win - bg).sum() > 0.98 * np.abs(img[0] - bg).sum() > 0


def test_word_level_text_tokenizer_matches_the_data_ids(tmp_path):
  vocab = list(shapes.txt.VOCAB)
  tok = text_lib.build_word_level(vocab, str(tmp_path))
  text = "a large red circle at the top left ."
  ids = text_lib.encode(tok, [text], 20)
  np.testing.assert_array_equal(ids[0], shapes.encode(text, 20))
  assert text_lib.decode(tok, ids) == [text]
  assert os.path.exists(tmp_path / "tokenizer.json")
  with pytest.raises(ConfigError, match="not available locally"):
    text_lib.load_pretrained(str(tmp_path / "no_such_tokenizer"))


def test_caption_scores_and_selection_rule():
  arrays = {
    "shape": np.array([[0, 1]]),
    "colour": np.array([[0, 2]]),
    "size": np.array([[1, 0]]),
    "pos": np.array([[0, 8]]),
  }
  good = "a large red circle at the top left and a small blue square at the bottom right ."
  half = "a large red circle at the top left and a small red square at the top ."
  s = evaluate.caption_scores(
    [good, half, "garbage"], {k: np.repeat(v, 3, 0) for k, v in arrays.items()}, beds.SHAPES, 3
  )
  assert s["caption_parsed"] == pytest.approx(2 / 3)
  assert s["caption_colour"] == pytest.approx(3 / 6) and s["caption_shape"] == pytest.approx(4 / 6)
  points = [
    {"beta": 1e-3, "relevance": 0.9},
    {"beta": 1e-2, "relevance": 0.85},
    {"beta": 1e-1, "relevance": 0.5},
  ]  # noqa: E501
  assert evaluate.select_largest_within(points, "beta", reference=0.88, tolerance=0.05) == 1
  assert evaluate.select_largest_within(points, "beta", reference=0.99, tolerance=0.01) == 0


# ------------------------------------------------------------------------------------------------
# End to end


def _run(*args, workdir):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "infotok",
      "--config",
      "configs/infotok.py:tiny",
      *args,
      "--workdir",
      str(workdir),
    ],  # noqa: E501
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )


@pytest.mark.slow
def test_tiny_end_to_end_and_resume(tmp_path):
  proc = _run(workdir=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "infotok: done" in proc.stdout
  results = json.loads((tmp_path / "results.json").read_text())
  m = results["metrics"]
  from infotok.tokenizer_sweep import FACTORIAL

  assert len(m["rows"]) == 3 * len(FACTORIAL)
  assert {(r["style"], r["variant"]) for r in m["rows"]} == {
    (s, v) for s in ("ar", "masked", "semantic") for v in FACTORIAL
  }
  for row in m["rows"]:
    for key in ("und_vqa_test", "gen_attr_heldout", "gen_all_correct_test", "tok_psnr_image"):
      assert 0.0 <= row[key] <= 1.0 or key == "tok_psnr_image"
  seed0 = m["per_seed"]["0"]
  chosen = seed0["chosen"]
  assert chosen["ar"] == chosen["masked"]  # the same frozen tokenizers
  for variant in ("vib_kl", "vib_nce", "infotok_vib", "infotok_hsic", "entropy"):
    assert chosen["ar"][variant].startswith(f"{variant}_")
    assert chosen["semantic"][variant].startswith(f"semantic_{variant}_")  # its own selection
  # The rate-matched control: the baseline's objective on a codebook of about the chosen
  # InfoTok-VIB tokenizer's validation code perplexity, measured in this run.
  for family, style in (("plain", "ar"), ("semantic", "semantic")):
    matched = seed0["rate_matched"][family]
    vib = seed0["tokenizers"][chosen[style]["infotok_vib"]]["val"]["code_perplexity"]
    assert matched["vib_code_perplexity"] == vib
    assert matched["num_codes"] == int(np.prod(matched["fsq_levels"]))
    assert 0.5 * max(vib, 2) <= matched["num_codes"] <= 2 * max(vib, 2)
    tok_result = lambda name: json.loads(
      (tmp_path / "tokenizers" / name / "result.json").read_text()
    )
    assert (
      tok_result(matched["tokenizer"])["weights"]
      == tok_result(chosen[style]["baseline"])["weights"]
    )
  # Per-item scores of every unified model (the paired statistics), the same items per variant.
  items = m["item_scores"]
  n_items = {len(items[s][v]["0"]["understanding"]["test"]) for s in items for v in items[s]}
  assert n_items == {results["config"]["eval"]["num_examples"]}
  assert all(0 <= x <= 1 for x in items["ar"]["vib_kl"]["0"]["generation"]["heldout"])
  from infotok import report

  text = report.render(str(tmp_path))
  claim = [x for x in text.splitlines() if x.startswith("| semantic | rate_matched | 1 x ")]
  assert len(claim) == 1 and claim[0].count("[") == 2  # mean [lo, hi], both kinds
  assert "| masked | vib_nce |" in text.split("Information plane per style")[1]
  for png in (
    "information_plane_plain.png",
    "information_plane_semantic.png",
    "information_plane_styles.png",
    "reconstructions.png",
    "generated_ar.png",
  ):
    assert (tmp_path / png).stat().st_size > 1000
  assert (tmp_path / "text_tokenizer" / "tokenizer.json").exists()
  assert "| ar | baseline |" in (tmp_path / "summary.md").read_text()
  # Same command again: every stage is read back, same metrics.
  again = _run(workdir=tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  rows_again = json.loads((tmp_path / "results.json").read_text())["metrics"]["rows"]
  assert rows_again == m["rows"]


def test_continuous_quantizer_is_a_one_line_error(tmp_path):
  proc = _run("--config.tokenizer.quantizer=continuous", workdir=tmp_path)
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: ")
  assert "continuous" in proc.stderr


@pytest.mark.slow
def test_default_config_judge_above_95_percent_on_real_renders(tmp_path):
  """The default run's judge, trained as that run trains it, on fresh real test renders."""
  from configs import infotok as config_file
  from shared import data as data_lib

  cfg = config_file.get_config()
  d = cfg.data
  scene = beds.scene_options(d)
  train = judge_lib.render_scenes(cfg.judge.num_scenes, **scene, seed=cfg.seed + 1)
  judge = judge_lib.train_judge(cfg.judge, train, d.grid, cfg.seed, str(tmp_path))
  test = data_lib.load(
    "shapes", "test", data_dir=str(tmp_path / "data"), **scene, seed=d.seed, num_test=500
  )
  for field in ("clean", "image"):
    score = judge.judge_images(test[field], test)
    assert score["attribute_mean"] > cfg.judge.min_accuracy, (field, score)


def test_pretrained_style_tokenizer_without_pad_or_template(tmp_path):
  """A GPT-2-like tokenizer (one <|endoftext|> for bos / eos, no pad, no template) gives the
  same <bos> text <eos> layout, cut when `truncate`, and decodes back."""
  from tokenizers import Tokenizer, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast

  words = ["<|endoftext|>", "a", "man", "riding", "horse", "."]
  raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<|endoftext|>"))
  raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  end = "<|endoftext|>"
  PreTrainedTokenizerFast(
    tokenizer_object=raw, bos_token=end, eos_token=end, unk_token=end
  ).save_pretrained(str(tmp_path))
  tok = text_lib.load_pretrained(str(tmp_path))
  assert tok.pad_token_id == tok.eos_token_id == tok.bos_token_id == 0
  ids = text_lib.encode(tok, ["a man riding a horse ."], 10)
  np.testing.assert_array_equal(ids[0], [0, 1, 2, 3, 1, 4, 5, 0, 0, 0])
  assert text_lib.decode(tok, ids) == ["a man riding a horse ."]
  cut = text_lib.encode(tok, ["a man riding a horse ."], 5, truncate=True)
  np.testing.assert_array_equal(cut[0], [0, 1, 2, 3, 0])
  with pytest.raises(ConfigError, match="more than 5 tokens"):
    text_lib.encode(tok, ["a man riding a horse ."], 5)


def test_pick_captions_draws_one_per_row_and_resumes_identically():
  ids = np.arange(4 * 3 * 2).reshape(4, 3, 2)  # 4 images x 3 captions x 2 tokens
  stream = lambda start: ({"caption": ids, "image": np.zeros(4)} for _ in range(start, 6))
  full = list(text_lib.pick_captions(stream(0), seed=1))
  resumed = list(text_lib.pick_captions(stream(4), seed=1, start=4))
  for a, b in zip(full[4:], resumed, strict=True):
    np.testing.assert_array_equal(a["caption"], b["caption"])
  drawn = np.stack([b["caption"] for b in full])  # [steps, 4, 2]
  assert drawn.shape == (6, 4, 2)
  for row in range(4):  # each row gets one of its own captions, not always the same one
    choices = {tuple(c) for c in drawn[:, row]}
    assert choices <= {tuple(c) for c in ids[row]} and len(choices) > 1
  flat = {"caption": ids[:, 0]}
  assert next(text_lib.pick_captions(iter([flat]), seed=0))["caption"] is flat["caption"]


def test_caption_ids_cycle_through_each_images_captions(tmp_path):
  from infotok import captions
  from shared.data.tfds_source import TEXT_SEPARATOR

  texts = np.asarray([TEXT_SEPARATOR.join(["A dog.", "A cat!"]), "Two birds"])
  splits = {"train": {"captions": texts}}
  tok = text_lib.build_word_level(text_lib.caption_vocab(list(texts)), str(tmp_path))
  cfg = ml_collections.ConfigDict(dict(captions_per_image=3, caption_len=5))
  captions.add_text_ids(splits, tok, cfg, word_level=True)
  all_ids = splits["train"]["caption_ids_all"]
  assert all_ids.shape == (2, 3, 5)
  decoded = [text_lib.decode(tok, all_ids[i]) for i in range(2)]
  assert decoded == [["a dog .", "a cat !", "a dog ."], ["two birds"] * 3]
  np.testing.assert_array_equal(splits["train"]["caption_ids"], all_ids[:, 0])


def test_caption_vocabulary_and_normalization():
  assert text_lib.normalize("A man, riding a Horse!") == "a man , riding a horse !"
  vocab = text_lib.caption_vocab(["A dog.", "a DOG runs", "a cat"], min_count=2)
  assert vocab == ["<pad>", "<bos>", "<eos>", "<unk>", "a", "dog"]
  assert text_lib.caption_vocab(["a b c", "a b", "a"], max_size=6)[4:] == ["a", "b"]


def test_caption_sets_refuse_a_vqa_fraction(tmp_path):
  from configs import infotok as config_file
  from infotok import pipeline

  cfg = config_file.get_config("tiny,captions=true")
  cfg.unified.task_fractions = (0.5, 0.25, 0.25)
  splits = {"train": {}}
  info = {"image_shape": (48, 48, 3), "grid": None}
  vocab = text_lib.caption_vocab(["a dog"])
  tok = text_lib.build_word_level(vocab, str(tmp_path))
  with pytest.raises(ConfigError, match="no questions"):
    pipeline.Pipeline(cfg, str(tmp_path), splits, info, tok, judge=None)


def test_report_renders_image_caption_runs(tmp_path):
  from infotok import report

  def row(variant, seed, und, gen):
    r = {"style": "ar", "variant": variant, "seed": seed, "gen_clip_score_test": 0.1}
    r.update(und_bleu4_test=und, und_caption_rprec_test=und, gen_rprec_test=gen, gen_fd_test=1.0)
    r.update({k: 0.5 for k in report.TOKENIZER})
    return r

  rows = [row("baseline", s, 0.1, 0.2) for s in (0, 1)] + [
    row("infotok_vib", 0, 0.2, 0.1),
    row("infotok_vib", 1, 0.4, 0.1),
  ]
  val = {"rate_nats": 1.0, "kl_nats": 2.0, "relevance": 0.3, "psnr_image": 20.0, "psnr_clean": 20.0}
  info = {"chosen": {"infotok_vib": "vib_0.001"}, "tokenizers": {"baseline": {"val": val}}}
  per_seed = {str(s): {**info, "figures": {}} for s in (0, 1)}
  ceiling = {"test_image": {"r_precision": 0.6, "clip_score": 0.4}}
  metrics = {"rows": rows, "per_seed": per_seed, "judge_ceiling": ceiling}
  (tmp_path / "results.json").write_text(json.dumps({"variant": "paper", "metrics": metrics}))
  text = report.render(str(tmp_path))
  assert "| ar | infotok_vib | 2 | 0.300 ± 0.141 | 0.300 ± 0.141 |" in text  # BLEU, R-prec
  no = "no per-item scores: no verdict"  # an older results.json: seed-level means, no verdict
  assert f"| ar | infotok_vib | 2 x - | 0.200 ± 0.141 | {no} | -0.100 ± 0.000 | {no} |" in text
  assert "R-precision 0.6000" in text and "VQA" not in text


def test_report_claim_table_pairs_items_of_the_same_seed_with_the_baseline():
  from infotok import report

  rows = [
    {"style": "ar", "variant": v, "seed": s} for v in ("baseline", "infotok_vib") for s in (0, 1)
  ]
  rng = np.random.default_rng(0)
  base = {str(s): rng.uniform(size=(2, 40)) for s in (0, 1)}  # [test, heldout] x 40 items

  def scores(shift_und, shift_gen):
    return {
      s: {
        "understanding": {"test": list(b[0] + shift_und), "heldout": list(b[1] + shift_und)},
        "generation": {"test": list(b[0] + shift_gen), "heldout": list(b[1] + shift_gen)},
      }
      for s, b in base.items()
    }

  flip = np.where(np.arange(40) % 2, 0.5, -0.5)  # per-item differences of mean 0
  items = {"ar": {"baseline": scores(0.0, 0.0), "infotok_vib": scores(0.1, flip)}}
  table = report.claim_table(rows, items)
  line = next(x for x in table.splitlines() if x.startswith("| ar | infotok_vib |"))
  cells = [c.strip() for c in line.strip("|").split("|")]
  assert cells[2] == "2 x 80"  # seeds x items (test and held-out pooled)
  assert cells[3] == "+0.100 [+0.100, +0.100]" and cells[4] == "yes"
  mean, interval = cells[5].split(" ", 1)
  lo, hi = (float(x) for x in interval.strip("[]").split(","))
  assert float(mean) == pytest.approx(0.0, abs=1e-9) and lo < 0 < hi
  assert cells[6] == "no difference shown"
  assert "| ar | baseline |" not in table
