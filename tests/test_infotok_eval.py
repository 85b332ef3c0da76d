"""InfoTok's evaluations run each judge once per image set (`infotok.judge.Judgement`), and their
metrics equal those of the one-quantity judge calls, each a pass of its own (the code path before
the restructuring), exactly: on a tiny bed of each judge kind (shapes' attribute judge,
cifar_grid's fixed CIFAR-10 judge, the retrieval judge of image-caption sets)."""

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infotok import captions, evaluate, grid_bed, quantizers, regularizers
from infotok import judge as judge_lib
from infotok.tokenizer_trainer import TokenizerTrainer
from shared import config_utils, data, mi, train_lib
from shared import judge as shared_judge
from shared import metrics as metrics_lib
from tests.fake_cifar10 import write_prepared_cifar10
from tests.test_infotok import small_tokenizer_cfg

N = 16  # images per set: one chunk of every judge's batched apply
VOCAB, LENGTH = 10, 6
BEDS = ("shapes", "cifar_grid", "captions")


class Calls:
  """A network's apply function that records a digest of the inputs of every call."""

  def __init__(self, fn):
    self.fn, self.inputs = fn, []

  def __call__(self, *args):
    self.inputs.append(hashlib.sha1(np.ascontiguousarray(args[-1]).tobytes()).hexdigest())
    return self.fn(*args)


class Codes:
  """A stand-in unified model: fixed codes for every prompt (the judge is what is tested)."""

  def __init__(self, num_codes: int, num_tokens: int):
    self.num_codes, self.num_tokens = num_codes, num_tokens

  def generate_images(self, params, prompts, key):
    rng = np.random.default_rng(7)
    return rng.integers(0, self.num_codes, (len(prompts), self.num_tokens), dtype=np.int32)


def caption_ids(n: int, seed: int = 1) -> np.ndarray:
  return np.random.default_rng(seed).integers(3, VOCAB, (n, LENGTH)).astype(np.int32)


@pytest.fixture(scope="module")
def beds(tmp_path_factory):
  """bed -> (arrays of N scenes with 'image', 'clean', 'caption_ids', ..., an untrained or fixed
  judge of that kind)."""
  root = tmp_path_factory.mktemp("data")
  sizes = dict(num_train=N, num_val=N, num_test=N, num_heldout=N)
  scene = dict(resolution=48, grid=3, min_objects=1, max_objects=2, nuisance=1.0, seed=0)
  shapes = data.images_to_float(data.load("shapes", "test", data_dir=str(root), **scene, **sizes))
  net = judge_lib.JudgeNet(3, (8, 16), 32)
  side, _ = judge_lib.cell_windows(48, 3)
  crop = np.zeros((1, side, side, 3), np.float32)
  params = net.init(jax.random.key(0), crop, method=judge_lib.JudgeNet.classify)["params"]
  write_prepared_cifar10(root)
  grid = data.images_to_float(data.load("cifar_grid", "test", data_dir=str(root), **sizes))
  image = np.random.default_rng(3).random((N, 32, 32, 3)).astype(np.float32)
  pairs = {"image": image, "clean": image}
  dual = captions.DualEncoder(VOCAB, LENGTH, (8, 16), 16)
  dual_params = dual.init(jax.random.key(0), image[:1], caption_ids(1))["params"]
  out = {
    "shapes": (shapes, judge_lib.Judge(params, 3, (8, 16), 32)),
    "cifar_grid": (grid, grid_bed.GridJudge(batch_size=4 * N)),
    "captions": (pairs, captions.RetrievalJudge(dual_params, dual, group=8)),
  }
  for arrays, _ in out.values():
    arrays["caption_ids"] = caption_ids(len(arrays["image"]))
  return out


@pytest.fixture(scope="module")
def tokenizer():
  """An untrained FSQ tokenizer and its params (decodes any code grid, reconstructs any size)."""
  cfg = small_tokenizer_cfg()  # patch 8: 6x6, 8x8 and 4x4 tokens on the three beds
  cfg.optimizer = config_utils.optimizer_config(lr=1e-3, warmup_steps=1)
  cfg.entropy_temperature = 0.01
  trainer = TokenizerTrainer(cfg, VOCAB, LENGTH, train_lib.make_mesh(), 10)
  state, _ = trainer.init_state(0, np.zeros((1, 48, 48, 3), np.float32), caption_ids(1))
  return trainer, jax.device_get(state.params)


def count_calls(bed: str, judge, monkeypatch) -> dict[str, Calls]:
  """Wraps the judge's networks: 'image' (the image network), 'text' (the retrieval judge's
  caption tower)."""
  if bed == "cifar_grid":  # GridJudge calls shared.judge.probabilities once per image set
    calls = {"image": Calls(shared_judge.probabilities)}
    monkeypatch.setattr(shared_judge, "probabilities", calls["image"])
  elif bed == "shapes":
    calls = {"image": Calls(judge._logits)}
    monkeypatch.setattr(judge, "_logits", calls["image"])
  else:
    calls = {"image": Calls(judge._image), "text": Calls(judge._text)}
    monkeypatch.setattr(judge, "_image", calls["image"])
    monkeypatch.setattr(judge, "_text", calls["text"])
  return calls


def assert_once_per_set(calls: dict[str, Calls], images: int, texts: int) -> None:
  for name, want in (("image", images), ("text", texts)):
    got = calls[name].inputs if name in calls else []
    assert len(got) == len(set(got)) == (want if name in calls else 0), (name, len(got))
    got.clear()


def fd(features_a, features_b) -> float:
  a = metrics_lib.FeatureStats().update(features_a)
  return a.frechet_distance(metrics_lib.FeatureStats().update(features_b))


@pytest.mark.parametrize("bed", BEDS)
def test_each_evaluation_runs_the_judge_once_per_image_set_with_the_same_metrics(
  bed, beds, tokenizer, monkeypatch
):
  arrays, judge = beds[bed]
  tok, tok_params = tokenizer
  clean = arrays["clean"][:N]
  judge.__dict__.pop("_reference_cache", None)  # the real images' features not yet computed
  calls = count_calls(bed, judge, monkeypatch)

  rec, recon = evaluate.reconstruction(tok, tok_params, arrays, judge, N)
  assert_once_per_set(calls, images=2, texts=1)  # reconstructions and clean; their captions
  g = tok.grid(arrays["image"].shape[1])
  unified = Codes(tok.num_codes, g * g)
  gen, generated = evaluate.generation(
    unified, None, tok, tok_params, arrays, judge, jax.random.key(0), N
  )
  assert_once_per_set(calls, images=1, texts=1)  # generated (clean: cached); their prompts
  monkeypatch.undo()

  # The one-quantity calls, each its own pass (what the evaluations called before).
  scores = judge.judge_images(recon, arrays)
  assert rec["relevance"] == scores[judge.relevance_key]
  assert {k: rec[f"recon_{k}"] for k in scores} == scores
  critic = jnp.asarray(judge.critic_scores(recon, arrays), jnp.float32)
  assert rec["relevance_nce_nats"] == float(mi.infonce(critic))
  assert rec["recon_fd"] == fd(judge.features(recon), judge.features(clean))
  scores = judge.judge_images(generated, arrays)
  assert {k: gen[f"gen_{k}"] for k in scores} == scores
  assert gen["item_generation"] == evaluate._rounded(judge.item_scores(generated, arrays))
  assert gen["gen_fd"] == fd(judge.features(generated), judge.features(clean))


def test_generated_captions_are_judged_with_one_pass_per_tower(beds, monkeypatch):
  arrays, judge = beds["captions"]
  ids = caption_ids(N, seed=2)
  cos = judge.text_features(ids) @ judge.features(arrays["image"]).T  # before: two passes each
  calls = count_calls("captions", judge, monkeypatch)
  scores, hits = judge.judge_captions(arrays["image"], ids)
  assert_once_per_set(calls, images=1, texts=1)
  assert scores == {"caption_r_precision": metrics_lib.r_precision(cos, judge.group)}
  np.testing.assert_array_equal(hits, captions.retrieval_hits(cos, judge.group))


def test_a_judgement_derives_every_quantity_from_its_one_pass(beds):
  arrays, judge = beds["shapes"]
  judged = judge.judgement(arrays["image"], arrays)
  judged.outputs = tuple(np.zeros_like(a) for a in judged.outputs)  # uniform logits
  assert judged.scores()["shape"] == 0.0  # every cell predicted empty
  np.testing.assert_array_equal(judged.critic(), judged.critic()[:1].repeat(N, axis=0))
  with pytest.raises(ValueError, match="no arrays"):
    judge.judgement(arrays["image"]).scores()


class MapCalls:
  """A tokenizer trainer's evaluation-time maps, counting the calls of each."""

  def __init__(self, maps):
    self.maps, self.calls = maps, []

  def __getitem__(self, name):
    def call(*args):
      self.calls.append(name)
      return self.maps[name](*args)

    return call


def test_reconstruction_runs_the_tokenizer_once_with_the_metrics_of_three_passes(
  beds, tokenizer, monkeypatch
):
  arrays, judge = beds["shapes"]
  tok, params = tokenizer
  images = arrays["image"][:N]
  # Before: the reconstructions, the posterior and the codes, each from a pass of its own.
  recon_before = tok.reconstruct(params, images)
  mu, logvar = tok.posterior(params, images)
  idx_before = tok.tokens(params, images)
  counted = MapCalls(tok._maps)
  monkeypatch.setattr(tok, "_maps", counted)
  passes = {}
  rec, recon = evaluate.reconstruction(tok, params, arrays, judge, N, passes)
  assert counted.calls == ["evaluate"]  # one map, one batch of N rows: one encoder pass
  monkeypatch.undo()
  np.testing.assert_array_equal(recon, recon_before)
  np.testing.assert_array_equal(passes["indices"], idx_before)  # the split's tokens (pipeline)
  assert passes["indices"].dtype == np.int32
  np.testing.assert_array_equal(passes["mu"], mu)
  np.testing.assert_array_equal(passes["logvar"], logvar)
  rate = regularizers.vib_rate(jnp.asarray(mu), jnp.asarray(logvar))
  assert rec["kl_nats"] == float(np.mean(np.asarray(rate)))
  usage = quantizers.code_usage(idx_before, tok.num_codes)
  assert {k: rec[k] for k in usage} == usage
  assert rec["rate_nats"] == evaluate.per_position_rate(idx_before, tok.num_codes)
  psnr = metrics_lib.psnr(jnp.asarray(recon_before), jnp.asarray(images))
  assert rec["psnr_image"] == float(jnp.mean(psnr))


def test_the_real_images_features_are_computed_once_per_split_and_n(beds, tokenizer, monkeypatch):
  arrays, judge = beds["shapes"]
  tok, params = tokenizer
  judge.__dict__.pop("_reference_cache", None)
  before = judge.features(arrays["clean"][:N])
  passes = []
  features = judge.features
  monkeypatch.setattr(
    judge, "features", lambda images: passes.append(len(images)) or features(images)
  )
  other = jax.tree.map(lambda p: p * 0.5, params)  # a second tokenizer of the run
  first, _ = evaluate.reconstruction(tok, params, arrays, judge, N)
  second, _ = evaluate.reconstruction(tok, other, arrays, judge, N)
  unified = Codes(tok.num_codes, tok.grid(48) ** 2)
  evaluate.generation(unified, None, tok, params, arrays, judge, jax.random.key(0), N)
  assert passes == [N]  # two tokenizers and a unified model on one split: one pass
  np.testing.assert_array_equal(judge.reference_features(arrays, N), before)
  assert first["recon_fd"] != second["recon_fd"]
  judge.reference_features(arrays, N // 2)  # another n
  judge.reference_features({**arrays, "clean": arrays["clean"].copy()}, N)  # another split
  assert passes == [N, N // 2, N]
