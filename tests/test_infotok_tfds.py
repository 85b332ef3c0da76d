"""InfoTok's `paper` pipeline on a (mocked) TFDS image-caption set, end to end.

Its own file so that the test runner (pytest-xdist, whole files per worker) can run it beside
tests/test_infotok.py's end-to-end run instead of after it.
"""

import numpy as np
import pytest


@pytest.mark.slow
def test_tiny_on_an_image_caption_tfds_set_end_to_end(tmp_path):
  """The `paper` pipeline (TFDS captions, retrieval judge, BLEU / R-precision) at tiny sizes on
  mocked coco_captions: every stage runs, metrics are in range, a second call reads back."""
  tfds = pytest.importorskip("tensorflow_datasets")
  from configs import infotok as config_file
  from infotok import train

  cfg = config_file.get_config("tiny,captions=true")
  assert cfg.data.name == "tfds:coco_captions" and cfg.unified.task_fractions[2] == 0
  cfg.data.data_dir = str(tmp_path / "tfds")
  cfg.text.min_count = 1
  cfg.vib.betas, cfg.hsic.beta_x = (1e-3,), (0.1,)
  cfg.variants = ("baseline", "rate_matched", "infotok_vib")  # the factorial runs on shapes
  cfg.unified.styles = ("ar", "masked")
  with tfds.testing.mock_data(num_examples=96):
    out = train.train_and_evaluate(cfg, str(tmp_path / "run"))
    again = train.train_and_evaluate(cfg, str(tmp_path / "run"))
  assert again["rows"] == out["rows"]
  assert set(out["judge_ceiling"]["test_image"]) == {"r_precision", "clip_score"}
  assert len(out["rows"]) == 6
  for row in out["rows"]:
    for key in ("und_bleu4_test", "und_caption_rprec_test", "gen_rprec_test"):
      assert 0.0 <= row[key] <= 1.0, (key, row)
    assert np.isfinite(row["gen_fd_test"]) and "und_vqa_test" not in row
  run = tmp_path / "run"
  assert "| masked | infotok_vib |" in (run / "summary.md").read_text()
  assert (run / "information_plane_plain.png").stat().st_size > 1000
  assert (run / "information_plane_styles.png").stat().st_size > 1000
  assert {len(v["0"]["generation"]["test"]) for v in out["item_scores"]["ar"].values()} == {
    cfg.eval.num_examples
  }
  assert (run / "judge" / "judge.npz").exists()
