"""MCAE's Python API (`mcae.pretrain / finetune / score`, the encoder export) on a tiny
fas_proxy bed: the API reproduces the CLI's sub-run bit for bit, a saved encoder reloads to the
same scores, and bad input is one-line UserErrors."""

import json

import chex
import jax
import numpy as np
import pytest

import mcae
from configs.mcae import get_config
from mcae import subrun
from mcae.protocols import parse_protocols, select
from shared import data as data_lib
from shared import train_lib
from shared.errors import ConfigError, DataError, UserError
from shared.metrics import fas_metrics
from tests import background

fewer_compiler_optimisations = pytest.fixture(scope="module", autouse=True)(
  background.fewer_compiler_optimisations
)


def tiny_config():
  cfg = get_config("tiny")  # 16 px, a 32-wide 1-block ViT on 4x4 patches, 4 + 4 steps
  cfg.mechanism.enabled = False  # the CLI sub-run below need not fit the domain classifier
  return cfg


@pytest.fixture(scope="module")
def bed():
  """The tiny variant's fas_proxy splits and its protocol d0 (sources d1, d2, d3)."""
  cfg = tiny_config()
  opts = cfg.data.options.to_dict()
  splits = {s: data_lib.load("fas_proxy", s, **opts) for s in ("train", "val", "test")}
  (proto,) = parse_protocols(data_lib.info("fas_proxy", **opts)["domains"], cfg.protocols)
  return dict(
    cfg=cfg,
    splits=splits,
    proto=proto,
    train=select(splits["train"], proto.sources, "train"),
    val=select(splits["val"], proto.sources, "val"),
    test=select(splits["test"], proto.targets, "test"),
  )


@pytest.fixture(scope="module")
def trained(bed):
  """MCAE pre-trained and fine-tuned through the API with the CLI's seed 0."""
  train, val, cfg = bed["train"], bed["val"], bed["cfg"]
  encoder = mcae.pretrain(
    train["image"], train["label"], train["domain"], train["attack"], config=cfg, key=0
  )
  clf = mcae.finetune(
    encoder, train["image"], train["label"], val=(val["image"], val["label"]), config=cfg, key=0
  )
  return encoder, clf


def test_pretrain_finetune_score_metrics(bed, trained):
  encoder, clf = trained
  width = 32
  chex.assert_shape(encoder.params["patch_embed"]["kernel"], (4, 4, 3, width))
  chex.assert_shape(encoder.params["cls_token"], (1, 1, width))
  assert set(encoder.params) >= {"block_0", "norm", "cls_token"} and "decoder" not in encoder.params
  assert encoder.image_shape == (16, 16, 3) and encoder.info["method"] == "mcae"
  assert isinstance(jax.tree.leaves(encoder.params)[0], np.ndarray)  # host copies
  assert 0 < clf.selected_step <= clf.steps <= 4 and clf.val["val_auc"] >= 0
  test = bed["test"]
  scores = mcae.score(clf, test["image"])
  assert scores.shape == (len(test["label"]),) and scores.dtype == np.float64
  assert np.isfinite(scores).all()
  metrics = fas_metrics(scores, test["label"])
  assert all(0.0 <= metrics[k] <= 1.0 for k in ("hter", "eer", "auc"))
  # A ViT from scratch through the same call (with the fine-tuning recipe, so that it reuses the
  # compiled fine-tuning program); an odd batch size is rounded up to the devices.
  cfg = bed["cfg"].copy_and_resolve_references()
  cfg.baselines.update(scratch_optimizer=cfg.finetune.optimizer, supervised_steps=4)
  scratch = mcae.finetune(None, bed["train"]["image"], bed["train"]["label"], config=cfg)
  assert scratch.method == "vit_scratch" and scratch.val is None and scratch.steps == 4
  np.testing.assert_allclose(
    mcae.score(scratch, test["image"], batch_size=5), mcae.score(scratch, test["image"]), rtol=1e-5
  )
  feats = mcae.features(encoder, test["image"][:10])
  assert feats.shape == (10, width)


def test_api_is_the_cli_subrun(bed, trained, tmp_path):
  """`key=0` with the CLI's config gives the CLI's sub-run of seed 0 exactly: one path."""
  cfg, splits = bed["cfg"], bed["splits"]
  mesh = train_lib.make_mesh(cfg.run.model_axis)
  ctx = subrun.RunContext(
    config=cfg,
    workdir=str(tmp_path),
    mesh=mesh,
    data_sharding=train_lib.batch_sharding(mesh),
    image_shape=(16, 16, 3),
    num_domains=4,
    num_attacks=3,
  )
  result = subrun.run_subrun(ctx, "mcae", 0, bed["proto"], splits)
  saved = np.load(tmp_path / "seed_0" / bed["proto"].slug / "mcae" / "scores.npz")
  _, clf = trained
  np.testing.assert_array_equal(mcae.score(clf, bed["test"]["image"]), saved["test_scores"])
  np.testing.assert_array_equal(mcae.score(clf, bed["val"]["image"]), saved["val_scores"])
  assert result["selected_step"] == clf.selected_step and result["steps"] == clf.steps


def test_encoder_export_round_trip(bed, trained, tmp_path):
  encoder, _ = trained
  folder = mcae.save_encoder(str(tmp_path / "enc"), encoder)
  from safetensors.numpy import load_file

  flat = load_file(f"{folder}/encoder.safetensors")
  assert "block_0/mlp/fc1/kernel" in flat and "patch_embed/kernel" in flat
  meta = json.loads((tmp_path / "enc" / "encoder.json").read_text())
  assert meta["model"]["patch_size"] == 4 and meta["image_shape"] == [16, 16, 3]
  loaded = mcae.load_encoder(folder)
  chex.assert_trees_all_equal(loaded.params, encoder.params)
  assert loaded.model == encoder.model and loaded.image_shape == encoder.image_shape
  train, test, cfg = bed["train"], bed["test"], bed["cfg"]
  runs = [mcae.finetune(e, train["image"], train["label"], config=cfg) for e in (encoder, loaded)]
  a, b = (mcae.score(c, test["image"]) for c in runs)
  np.testing.assert_array_equal(a, b)  # bit-identical


def one_line(excinfo) -> str:
  message = str(excinfo.value)
  assert isinstance(excinfo.value, UserError) and "\n" not in message
  return message


def test_bad_input_is_one_line_errors(bed, trained, tmp_path):
  encoder, clf = trained
  cfg, train = bed["cfg"], bed["train"]
  images, labels, domains = train["image"], train["label"], train["domain"]
  with pytest.raises(DataError) as e:
    mcae.load_encoder(str(tmp_path / "nowhere"))
  assert "nowhere" in one_line(e)
  (tmp_path / "half").mkdir()
  (tmp_path / "half" / "encoder.json").write_text("{not json")
  with pytest.raises(DataError) as e:
    mcae.load_encoder(str(tmp_path / "half"))
  assert "encoder.safetensors is missing" in one_line(e)
  folder = mcae.save_encoder(str(tmp_path / "enc"), encoder)
  meta = json.loads((tmp_path / "enc" / "encoder.json").read_text())
  meta["model"]["width"] = 48  # weights of a 32-wide encoder
  (tmp_path / "enc" / "encoder.json").write_text(json.dumps(meta))
  with pytest.raises(DataError) as e:
    mcae.load_encoder(folder)
  assert "shape" in one_line(e)
  for ratio in (0.0, 1.0):
    bad = cfg.copy_and_resolve_references()
    bad.pretrain.mask_ratio = ratio
    with pytest.raises(ConfigError) as e:
      mcae.pretrain(images, labels, domains, config=bad)
    assert f"mask_ratio={ratio}" in one_line(e)
  with pytest.raises(DataError) as e:
    mcae.pretrain(images, labels[:-1], domains, config=cfg)
  assert "labels has shape" in one_line(e)
  with pytest.raises(DataError) as e:
    mcae.finetune(encoder, images, labels, val=(images[:5], labels), config=cfg)
  assert "labels has shape" in one_line(e)
  with pytest.raises(DataError) as e:
    mcae.pretrain(images, labels + 1, domains, config=cfg)
  assert "1 (live) or 0 (spoof)" in one_line(e)
  with pytest.raises(DataError) as e:
    mcae.score(clf, images[:, :8, :8])
  assert "classifier takes" in one_line(e)
  with pytest.raises(ConfigError) as e:
    mcae.finetune(None, images, labels, method="mcae", config=cfg)
  assert "pre-trained encoder" in one_line(e)
  with pytest.raises(ConfigError) as e:
    mcae.pretrain(images, labels, domains, method="vit_scratch", config=cfg)
  assert "no pre-training" in one_line(e)
