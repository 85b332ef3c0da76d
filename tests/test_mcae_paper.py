"""MCAE's `paper` path end to end on SSDG-style JSON lists of generated face crops (tiny sizes),
and bad input: one `error: ...` line and exit code 2, or the ConfigError / DataError behind it."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs.mcae import get_config
from mcae import train
from shared.data import fas_proxy
from shared.errors import ConfigError, DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOMAINS = ("oulu", "casia", "replay", "msu")
SIZES = {"train": 12, "val": 6, "test": 6}  # frames per domain; 3 frames per video


@pytest.fixture(scope="module")
def lists(tmp_path_factory):
  """<root>/<domain>/{train,val,test}_label.json over PNG face crops rendered by fas_proxy's
  cameras (live, print, replay; 3 frames per video, video ids in the lists)."""
  root = tmp_path_factory.mktemp("fas_lists")
  for split, n in SIZES.items():
    options = dict(resolution=16, num_train=n, num_val=n, num_test=n, frames_per_video=3)
    arrays = fas_proxy.build(split, str(root), photo_fraction=0.0, **options)
    for d, domain in enumerate(DOMAINS):
      (root / domain / "frames").mkdir(parents=True, exist_ok=True)
      entries = []
      for i in np.flatnonzero(arrays["domain"] == d):
        path = f"frames/{split}_{i}.png"
        Image.fromarray(arrays["image"][i]).save(root / domain / path)
        video = f"{domain}_{split}_{arrays['video'][i]}"
        entries.append(
          {
            "photo_path": path,
            "photo_label": int(arrays["label"][i]),
            "photo_belong_to_video_ID": video,
          }  # fmt: skip
        )
      (root / domain / f"{split}_label.json").write_text(json.dumps(entries))
  return root


# The `paper` variant with tiny's model, steps and batches (as command-line overrides).
TINY = {
  "data.options.image_size": 16,
  "model.size": "mu",
  "model.patch_size": 4,
  "model.width": 32,
  "model.depth": 1,
  "model.num_heads": 2,
  "model.decoder_width": 32,
  "model.decoder_num_heads": 2,
  "model.proj_hidden": 32,
  "model.proj_dim": 32,
  "pretrain.num_steps": 4,
  "pretrain.batch_size": 16,
  "pretrain.decoder_depth": 1,
  "pretrain.optimizer.warmup_steps": 1,
  "finetune.num_steps": 4,
  "finetune.batch_size": 16,
  "finetune.optimizer.warmup_steps": 1,
  "baselines.supervised_steps": 8,
  "baselines.scratch_optimizer.warmup_steps": 1,
  "convergence.eval_every": 2,
  "convergence.patience": 1,
  "run.dtype": "float32",
  "run.progress": False,
  "run.log_every": 2,
  "run.checkpoint_every": 4,
  "eval_batch_size": 32,
  # One label-only method: the data path is what is new here; MCAE's pre-training, the
  # mechanism check and every other method run end to end in test_mcae.py's tiny run.
  "methods": "('vit_scratch',)",
  "protocols": "('msu',)",
  "seeds": "(0,)",
}


def run_paper(root, workdir, **overrides):
  flags = {**TINY, "data.options.root": str(root), **overrides}
  cmd = [sys.executable, "-m", "mcae", "--config", "configs/mcae.py:paper", "--workdir"]
  cmd += [str(workdir), *(f"--config.{k}={v}" for k, v in flags.items())]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def assert_one_error_line(proc, *words):
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  for w in words:
    assert w in last, last


def test_paper_path_on_json_lists_of_face_crops(lists, tmp_path):
  assert get_config("paper").data.options.allow_outside_root is False
  proc = run_paper(lists, tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  metrics = json.loads((tmp_path / "results.json").read_text())["metrics"]
  assert metrics["protocols"] == ["oulu&casia&replay->msu"]
  (run,) = json.loads((tmp_path / metrics["runs_file"]).read_text())["runs"]
  assert run["method"] == "vit_scratch" and 0.0 <= run["hter_val"] <= 1.0
  assert run["num_test_videos"] == 3 and run["num_val_videos"] == 3 * 3  # from the lists' ids
  assert run["examples_seen"] == run["steps"] * 16 and run["steps"] <= 8
  assert "Video HTER" in (tmp_path / "table.md").read_text()


def test_bad_input_is_one_error_line(lists, tmp_path):
  """Through the command line: a list naming a missing image is one `error: ...` line naming
  the entry and the file, exit code 2 (the other bad values below raise the same UserErrors)."""
  broken = tmp_path / "lists"
  shutil.copytree(lists, broken)
  entries = json.loads((broken / "msu" / "test_label.json").read_text())
  entries[0]["photo_path"] = "frames/gone.png"
  (broken / "msu" / "test_label.json").write_text(json.dumps(entries))
  proc = run_paper(broken, tmp_path / "run")
  assert_one_error_line(proc, "entry 0", "gone.png", "does not exist")


@pytest.mark.parametrize(
  "change, error, words",
  [
    (dict(protocols=("msu", "d0")), ConfigError, ["'d0'", "not a domain", "oulu"]),
    (dict(protocols=("oulu&nope->msu",)), ConfigError, ["'nope'"]),
    (dict(methods=("mcae:pretrain.mask_ratio=1.0",)), ConfigError, ["mask_ratio=1.0"]),
    (dict(methods=("mae_ft:pretrain.mask_ratio=0.0",)), ConfigError, ["mask_ratio=0.0", "(0, 1)"]),
    (dict(methods=("supcon_ft:baselines.supcon_mask_ratio=1.0",)), ConfigError, ["ratio 1.0"]),
    (dict(frames_per_video=-1), DataError, ["frames_per_video", "-1"]),
  ],
)
def test_bad_values_fail_before_training(lists, tmp_path, change, error, words):
  """In-process: the ConfigError / DataError behind each one-line error (shared.app prints any
  UserError as one line, exit 2), raised before anything trains or is written."""
  cfg = get_config("paper")
  cfg.unlock()
  cfg.data.options.update(root=str(lists), image_size=16)
  if "frames_per_video" in change:
    cfg.data.options.frames_per_video = change.pop("frames_per_video")
  cfg.update(change)
  with pytest.raises(error) as e:
    train.train_and_evaluate(cfg, str(tmp_path))
  for w in words:
    assert w in str(e.value), str(e.value)
  assert not os.listdir(tmp_path)
