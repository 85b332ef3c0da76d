"""infotok's Python API on arrays: train a few steps, encode / decode, save / load bit for bit, and
the one-line errors of bad input."""

import json

import numpy as np
import pytest
from flax import traverse_util

import infotok
from shared import train_lib
from shared.errors import CheckpointError, ConfigError, DataError
from tests import background

N, SIDE, VOCAB, LENGTH = 16, 16, 10, 6

# Compile-bound: XLA's optimisations off, one device (the sharded path is test_infotok's).
fewer_compiler_optimisations = pytest.fixture(scope="module", autouse=True)(
  background.fewer_compiler_optimisations
)


def one_device():
  import jax

  return train_lib.make_mesh(devices=jax.devices()[:1])


def tiny_config(num_steps=3):
  cfg = infotok.default_config()
  cfg.update(
    dict(
      widths=(8,),
      patch_size=8,
      patch_hidden=0,
      fsq_levels=(5, 3),
      embed_dim=8,
      num_steps=num_steps,
      batch_size=8,
      log_every=1,
      checkpoint_every=2,
    )
  )
  cfg.optimizer.warmup_steps = 1
  return cfg


def data(seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (N, SIDE, SIDE, 3), dtype=np.uint8)
  captions = rng.integers(0, VOCAB, (N, LENGTH)).astype(np.int32)
  return images, captions


@pytest.fixture(scope="module")
def trained():
  images, captions = data()
  weights = {**infotok.variant_weights("infotok_vib", 1e-2), "hsic_lambda_y": 0.1}
  return infotok.train_tokenizer(
    images,
    captions,
    weights=weights,
    config=tiny_config(),
    text_vocab_size=VOCAB,
    seed=1,
    mesh=one_device(),
  )


def one_line(excinfo) -> str:
  text = str(excinfo.value)
  assert text and "\n" not in text, text
  return text


def test_encode_decode_shapes_and_ranges(trained):
  images, _ = data(1)
  assert trained.num_codes == 15 and trained.num_tokens == 4  # (16 / 8)^2 cells, 5 x 3 codes
  ids = trained.encode(images)
  assert ids.shape == (N, 4) and ids.dtype == np.int32
  assert ids.min() >= 0 and ids.max() < 15
  out = trained.decode(ids)
  assert out.shape == (N, SIDE, SIDE, 3) and out.dtype == np.float32
  assert out.min() >= 0.0 and out.max() <= 1.0
  # uint8 and the same images as [0, 1] floats encode alike; reconstruct = decode(encode(.))
  np.testing.assert_array_equal(trained.encode(images.astype(np.float32) / 255), ids)
  np.testing.assert_array_equal(trained.reconstruct(images), out)
  mu, logvar = trained.latents(images)
  assert mu.shape == logvar.shape == (N, 4, 2)


def test_save_load_round_trip_is_bit_for_bit(trained, tmp_path):
  images, _ = data(2)
  ids, out = trained.encode(images), trained.decode(trained.encode(images))
  infotok.save_tokenizer(str(tmp_path / "tok"), trained)
  meta = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
  assert meta["format"] == "infotok.tokenizer/1" and meta["image_shape"] == [SIDE, SIDE, 3]
  assert meta["weights"]["vib"] == 1e-2 and meta["config"]["fsq_levels"] == [5, 3]
  again = infotok.load_tokenizer(str(tmp_path / "tok"))
  assert (again.num_codes, again.num_tokens, again.text_vocab_size) == (15, 4, VOCAB)
  assert_same_params(trained.params, again.params)
  np.testing.assert_array_equal(again.encode(images), ids)
  np.testing.assert_array_equal(again.decode(ids), out)


def assert_same_params(a, b):
  flat_a, flat_b = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
  assert flat_a.keys() == flat_b.keys()
  for k in flat_a:
    np.testing.assert_array_equal(np.asarray(flat_a[k]), np.asarray(flat_b[k]), err_msg=str(k))


def test_a_workdir_run_resumes_to_the_same_params(tmp_path):
  images, captions = data()
  run = dict(config=tiny_config(), workdir=str(tmp_path / "run"), mesh=one_device())
  run.update(text_vocab_size=VOCAB)  # the shapes of the fixture's run: its compiled step
  first = infotok.train_tokenizer(images, captions, **run)
  assert (tmp_path / "run" / "metrics.jsonl").read_text().count('"stage": "tokenizer"') == 3
  again = infotok.train_tokenizer(
    images, captions, **run
  )  # resumes at its last step: nothing to train
  assert_same_params(first.params, again.params)
  ids = first.encode(images)
  np.testing.assert_array_equal(again.encode(images), ids)


def test_bad_input_is_one_line(trained, tmp_path):
  images, captions = data()
  with pytest.raises(CheckpointError) as e:
    infotok.load_tokenizer(str(tmp_path / "missing"))
  assert "holds no saved tokenizer" in one_line(e)
  with pytest.raises(DataError) as e:
    trained.encode(images[:, :8, :8])
  assert "[B, 16, 16, 3]" in one_line(e)
  with pytest.raises(DataError) as e:
    trained.encode(images[..., 0])  # grey, no channel axis
  assert "RGB" in one_line(e)
  with pytest.raises(DataError) as e:
    trained.decode(np.zeros((2, 5), np.int32))
  assert "[B, 4]" in one_line(e)
  with pytest.raises(DataError) as e:
    trained.decode(np.full((2, 4), 15, np.int32))
  assert "[0, 15)" in one_line(e)
  with pytest.raises(DataError) as e:
    infotok.train_tokenizer(images[:, :12, :12], config=tiny_config())
  assert "multiple of 8" in one_line(e)
  with pytest.raises(DataError) as e:
    infotok.train_tokenizer(images, captions[:3], config=tiny_config())
  assert "N = 16" in one_line(e)
  with pytest.raises(ConfigError) as e:
    infotok.train_tokenizer(images, weights={"consistency": 1e-3}, config=tiny_config())
  assert "pass captions" in one_line(e)
  with pytest.raises(ConfigError) as e:
    infotok.train_tokenizer(images, weights={"bogus": 1.0}, config=tiny_config())
  assert "bogus" in one_line(e)
  with pytest.raises(ConfigError) as e:
    infotok.variant_weights("vib_kl")
  assert "vib.betas" in one_line(e)
  # A folder whose tensors disagree with its JSON (another codebook's latent width).
  infotok.save_tokenizer(str(tmp_path / "tok"), trained)
  meta_path = tmp_path / "tok" / "tokenizer.json"
  meta = json.loads(meta_path.read_text())
  meta["config"]["fsq_levels"] = [5, 3, 3]
  meta_path.write_text(json.dumps(meta))
  with pytest.raises(CheckpointError) as e:
    infotok.load_tokenizer(str(tmp_path / "tok"))
  assert "disagrees with tokenizer.json" in one_line(e)
  meta_path.write_text("{not json")
  with pytest.raises(CheckpointError) as e:
    infotok.load_tokenizer(str(tmp_path / "tok"))
  one_line(e)
