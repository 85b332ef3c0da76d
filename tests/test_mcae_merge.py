"""`mcae.merge`: seeds run as separate workdirs merge into the table one run over all of them
writes; mismatched or unfinished sources are refused with one line and exit code 2."""

import json
import shutil

import numpy as np
import pytest

from configs.mcae import get_config
from mcae import merge as merge_lib
from mcae import paired
from mcae.train import train_and_evaluate
from shared import app

HTERS = ("hter_eer", "hter_val", "auc")


def test_weighted_errors_average_to_the_hter():
  from shared.metrics import fas_metrics

  rng = np.random.default_rng(0)
  labels = rng.random(101) < 0.3
  scores = rng.normal(size=101) + labels
  for t in (-0.5, 0.2, 1.0):
    items = paired.weighted_errors(scores, labels, t)
    assert items.mean() == pytest.approx(fas_metrics(scores, labels, threshold=t)["hter"])


def _run(workdir, seeds):
  config = get_config("tiny")
  config.seeds = seeds
  app.run("mcae", train_and_evaluate, config, str(workdir))


@pytest.mark.slow
def test_merged_seeds_equal_one_run_over_them(tmp_path, capsys):
  _run(tmp_path / "s0", (0,))
  _run(tmp_path / "s1", (1,))
  _run(tmp_path / "both", (0, 1))
  merge_lib.main([str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "m")])
  assert "seeds [0, 1]" in capsys.readouterr().out
  merged = json.loads((tmp_path / "m" / "results.json").read_text())
  joint = json.loads((tmp_path / "both" / "results.json").read_text())
  for spec in get_config("tiny").methods:
    for m in HTERS:
      key = f"{spec}/mean_{m}"
      assert merged["metrics"][key] == pytest.approx(joint["metrics"][key], abs=1e-6), key
  assert merged["config"]["seeds"] == [0, 1]
  assert [m["seeds"] for m in merged["merged_from"]] == [[0], [1]]
  rows = {r["name"]: r for r in merged["metrics"]["table"]}
  assert all(r["n_seeds"] == 2 for r in rows.values())
  table = (tmp_path / "m" / "table.md").read_text()
  assert "wall min" in table and "Frame HTER % at the threshold fixed on source val" in table
  assert (tmp_path / "m" / "roc_d1_d2_d3-to-d0.png").stat().st_size > 1000
  pairs = merged["metrics"]["paired"]  # mcae against each other method, frame and video
  others = [m for m in get_config("tiny").methods if m != "mcae"]
  assert [(p["other"], p["level"]) for p in pairs] == [
    (o, lv) for o in others for lv in paired.LEVELS
  ]
  for p in pairs:
    assert p["seeds"] == [0, 1] and p["two_stage"]["lo"] <= p["two_stage"]["hi"]
    metric = paired.LEVELS[p["level"]]
    gap = merged["metrics"]["table"]  # the per-seed differences are the tables' HTER gaps
    mean = {r["method"]: r for r in gap if r["held_out"] == "mean"}
    want = np.subtract(mean["mcae"][f"{metric}_seeds"], mean[p["other"]][f"{metric}_seeds"])
    np.testing.assert_allclose(p["per_seed"], want, atol=1e-9)
    assert p["two_stage"]["mean"] == pytest.approx(np.mean(want), abs=1e-9)
  assert "Paired differences in honest HTER" in table

  # Refusals: a seed twice, a source that is not a finished run, another config.
  for sources, needle in (
    ([tmp_path / "s0", tmp_path / "both"], "seed 0 ran in both"),
    ([tmp_path / "s0", tmp_path / "nothing"], "is missing"),
  ):
    with pytest.raises(SystemExit) as e:
      merge_lib.main([*map(str, sources), "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
  # --partial: an unfinished workdir (no results.json yet) gives its finished sub-runs; a
  # protocol some method has not finished for some seed stays out.
  unfinished = tmp_path / "s1_unfinished"
  shutil.copytree(tmp_path / "s1", unfinished)
  (unfinished / "results.json").unlink()
  (unfinished / "runs.json").unlink()
  merge_lib.main([str(tmp_path / "s0"), str(unfinished), "--out", str(tmp_path / "p"), "--partial"])
  partial = json.loads((tmp_path / "p" / "results.json").read_text())
  assert partial["metrics"]["table"] == merged["metrics"]["table"]
  assert partial["missing_protocols"] == [] and not partial["merged_from"][1]["finished"]
  next(unfinished.rglob("subrun.json")).unlink()
  with pytest.raises(SystemExit):
    merge_lib.main(
      [str(tmp_path / "s0"), str(unfinished), "--out", str(tmp_path / "q"), "--partial"]
    )
  assert "no protocol finished for every method and seed" in capsys.readouterr().err

  other = json.loads((tmp_path / "s1" / "results.json").read_text())
  other["config"]["eval_batch_size"] += 1
  (tmp_path / "s1" / "results.json").write_text(json.dumps(other))
  with pytest.raises(SystemExit):
    merge_lib.main([str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "y")])
  assert "differs in: ['eval_batch_size']" in capsys.readouterr().err
