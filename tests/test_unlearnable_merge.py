"""`unlearnable.merge`: runs made one process per (method, victim, seed) merge into one matrix;
sources that ran another config, or give a cell twice, are refused with one line and exit 2."""

import json
import os

import numpy as np
import pytest

from shared import cli
from unlearnable import merge as merge_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = os.path.join(ROOT, "docs", "runs")

CONFIG = {  # the shape of a real run's config, small
  "method": "unlearnable",
  "variant": "paper",
  "seed": 0,
  "eps": 8 / 255,
  "generator": "tue",
  "data": {"name": "cifar10", "max_examples": {"train": 0, "test": 0}},
  "victim": {"epochs": 100, "optimizer": {"name": "sgd", "lr": 0.1}},
  "simclr_victim": {"epochs": 500, "probe": "protected"},
  "run": {"log_every": 50},
  "gates": {"supervised": 0.93, "simclr": 0.8},
  "release_uint8": True,
}


def _config(methods, victims, seeds, **changes):
  config = json.loads(json.dumps(CONFIG))
  config.update(methods=list(methods), victims=list(victims), seeds=list(seeds))
  for key, value in changes.items():  # "a.b" -> config["a"]["b"]; None deletes the key
    *head, last = key.split(".")
    d = config
    for k in head:
      d = d[k]
    if value is None:
      del d[last]
    else:
      d[last] = value
  return config


def _results(config, final, peak):
  """results.json as `python -m unlearnable` writes it; final/peak: {method: {victim: [...]}}."""
  triple = lambda vals: [float(np.mean(vals)), float(np.std(vals)), len(vals)]
  return {
    "method": "unlearnable",
    "variant": "paper",
    "metrics": {
      "num_classes": 10,
      "final": {m: {v: triple(x) for v, x in row.items()} for m, row in final.items()},
      "peak": {m: {v: triple(x) for v, x in row.items()} for m, row in peak.items()},
      "generation": {
        str(s): {m: {"generate_s": 2.5} for m in config["methods"]} for s in config["seeds"]
      },
    },
    "config": config,
    "versions": {"git": "abc1234"},
    "devices": {"platform": "gpu", "kind": "NVIDIA H200", "count": 1, "processes": 1},
    "wall_time_s": 123.4,
  }


def _write(path, payload):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(payload, f)


def workdir(path, method, victim, accs: dict, **changes):
  """A finished workdir: results.json, config.json, seed_S/<method>/<victim>/cell.json."""
  config = _config([method], [victim], sorted(accs), **changes)
  for s, acc in accs.items():
    cell = {"final": acc, "peak": acc + 0.01, "curve": [[10, acc]], "train_s": 40.0 + s}
    _write(os.path.join(path, f"seed_{s}", method, victim, "cell.json"), cell)
    _write(os.path.join(path, f"seed_{s}", method, "generation.json"), {"generate_s": 300.0})
  vals = list(accs.values())
  res = _results(config, {method: {victim: vals}}, {method: {victim: [a + 0.01 for a in vals]}})
  _write(os.path.join(path, "results.json"), res)
  _write(os.path.join(path, "config.json"), config)
  return str(path)


def bare(path, method, victim, seed, acc, **changes):
  """A single-seed run kept only as its results.json (`seed<S>.results.json`)."""
  config = _config([method], [victim], [seed], **changes)
  _write(str(path), _results(config, {method: {victim: [acc]}}, {method: {victim: [acc]}}))
  return str(path)


def _clean_bares(tmp_path, accs=(0.945, 0.950, 0.948), **changes):
  return [
    bare(tmp_path / f"clean/seed{s}.results.json", "clean", "supervised", s, a, **changes)
    for s, a in enumerate(accs)
  ]


def _refused(argv, capsys) -> str:
  with pytest.raises(SystemExit) as e:
    cli.guarded(merge_lib.main, argv)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1, err
  return err


def _read(out):
  return json.loads((out / "results.json").read_text()), (out / "table.md").read_text()


def test_merges_compatible_sources_with_a_paired_interval_over_three_seeds(tmp_path, capsys):
  gates = {"supervised": 0.93}  # the supervised column's gate (GATE_OF)
  clean = _clean_bares(tmp_path, release_uint8=None, gates=gates)  # release_uint8: not compared
  em = workdir(tmp_path / "em", "em", "supervised", {0: 0.20, 1: 0.25, 2: 0.30}, gates=gates)
  rand = workdir(
    tmp_path / "rand", "random", "supervised", {0: 0.94}, gates=gates, **{"run.log_every": 7}
  )
  out = tmp_path / "merged"
  assert cli.guarded(merge_lib.main, [*clean, em, rand, "--out", str(out)]) == 0
  printed = capsys.readouterr().out
  merged, table = _read(out)
  assert table in printed
  assert merged["methods"] == ["clean", "random", "em"] and merged["seeds"] == [0, 1, 2]
  assert merged["cells"]["clean"]["supervised"]["1"] == {"final": 0.95, "peak": 0.95}
  assert merged["cells"]["em"]["supervised"]["2"] == {"final": 0.30, "peak": 0.31}
  mean, std, n = merged["metrics"]["final"]["clean"]["supervised"]
  assert n == 3 and mean == pytest.approx(0.9477, abs=1e-4)
  assert std == pytest.approx(np.std([0.945, 0.950, 0.948], ddof=1))
  assert "94.77 ± 0.25 (n=3)" in table and "94.00 (n=1)" in table
  assert table.index("| clean |") < table.index("| random |") < table.index("| em |")
  assert merged["notes"] == []  # release_uint8 absent only where it is not compared
  assert merged["metrics"]["gates"]["verdict"] is True
  assert "Gate supervised: clean accuracy [94.50, 95.00, 94.80]% vs 93%: met." in table
  assert "Gate simclr" not in table
  rows = {r["method"]: r for r in merged["metrics"]["paired"]}
  em_row = rows["em"]
  want = np.subtract([0.945, 0.950, 0.948], [0.20, 0.25, 0.30])
  np.testing.assert_allclose(em_row["per_seed"], want)
  assert em_row["kind"] == "paired" and em_row["seeds"] == [0, 1, 2]
  assert em_row["mean"] == pytest.approx(want.mean())
  assert em_row["lo"] <= em_row["mean"] <= em_row["hi"] and em_row["lo"] > 0
  assert em_row["verdict"] == "lowers accuracy"
  assert f"[{100 * em_row['lo']:+.2f}, {100 * em_row['hi']:+.2f}] | lowers accuracy |" in table
  assert rows["random"]["kind"] == "single" and "n=1, no interval" in table
  prov = {p["path"]: p for p in merged["merged_from"]}
  assert prov[em]["device_kind"] == "NVIDIA H200" and prov[em]["git"] == "abc1234"
  assert prov[em]["wall_time_s"] == 123.4
  assert "em/supervised s2: 42" in table and "em s0: 300" in table  # the wall-time section


def test_gates_of_the_newest_source_and_no_verdict_when_one_is_missed(tmp_path, capsys):
  old = _clean_bares(tmp_path, accs=(0.90, 0.95, 0.95), gates={"supervised": 0.5})
  bare(old[0], "clean", "supervised", 0, 0.90, gates=None)  # older code: no gates at all
  em = workdir(tmp_path / "em", "em", "supervised", {0: 0.2, 1: 0.2, 2: 0.2})  # 0.93, 0.8
  for path in old:
    os.utime(path, (1e9, 1e9))  # written before em's results.json
  out = tmp_path / "merged"
  cli.guarded(merge_lib.main, [em, *old, "--out", str(out)])
  merged, table = _read(out)
  assert merged["gates_from"] == em  # the newest; `gates` itself is not compared
  assert merged["notes"] == [f"the sources' gates differ; those of {em} (the newest) are used"]
  gate = merged["metrics"]["gates"]["gates"]["supervised"]
  assert gate["status"] == "missed" and gate["clean"] == [0.90, 0.95, 0.95]
  assert merged["metrics"]["gates"]["gates"]["simclr"]["status"] == "not measured"
  assert "Gate simclr: clean accuracy [-]% vs 80%: not measured." in table
  assert "Not every gate is met: no verdict in the columns sup. (surrogate arch)." in table
  assert [r["verdict"] for r in merged["metrics"]["paired"]] == [
    "no verdict (gate supervised not met)"
  ]
  assert "| no verdict (gate supervised not met) |" in table and "lowers accuracy |" not in table
  assert merged["metrics"]["gates"]["verdict"] is False


def test_each_column_needs_its_own_gate(tmp_path):
  # A gate on the second architecture without its clean run blocks that column only.
  gates = {"supervised": 0.93, "supervised_other": 0.9}
  clean = _clean_bares(tmp_path, gates=gates)
  em = workdir(tmp_path / "em", "em", "supervised", {0: 0.2, 1: 0.2, 2: 0.2}, gates=gates)
  vgg = workdir(tmp_path / "vgg", "em", "supervised_other", {0: 0.3}, gates=gates)
  cvgg = workdir(tmp_path / "cvgg", "clean", "supervised_other", {1: 0.85}, gates=gates)
  out = tmp_path / "m"
  assert cli.guarded(merge_lib.main, [*clean, em, vgg, "--out", str(out)]) == 0
  merged, table = _read(out)
  verdicts = {r["victim"]: r["verdict"] for r in merged["metrics"]["paired"]}
  assert verdicts == {"supervised": "lowers accuracy"}  # no clean VGG run: no VGG row at all
  assert "Gate supervised_other: clean accuracy [-]% vs 90%: not measured." in table
  assert "Not every gate is met: no verdict in the columns sup. (other arch)." in table
  out2 = tmp_path / "m2"
  assert cli.guarded(merge_lib.main, [*clean, em, vgg, cvgg, "--out", str(out2)]) == 0
  merged, _ = _read(out2)
  verdicts = {r["victim"]: r["verdict"] for r in merged["metrics"]["paired"]}
  assert verdicts["supervised_other"] == "no verdict (gate supervised_other not met)"  # 85 < 90
  assert verdicts["supervised"] == "lowers accuracy"


def test_unpaired_when_no_seed_is_common(tmp_path):
  clean = bare(tmp_path / "c.results.json", "clean", "supervised", 0, 0.95)
  em = workdir(tmp_path / "em", "em", "supervised", {5: 0.30, 6: 0.40})
  merged = merge_lib.merge([clean, em], str(tmp_path / "m"))
  (row,) = merged["metrics"]["paired"]
  assert row["kind"] == "unpaired" and row["mean"] == pytest.approx(0.95 - 0.35)
  assert "unpaired (difference of means)" in merged["table"] and "+60.00" in merged["table"]


def test_simclr_keys_compare_only_between_simclr_runs_and_a_missing_key_is_a_note(tmp_path, capsys):
  # supervised sources with another simclr_victim.epochs than the simclr ones: not refused.
  sup = _clean_bares(tmp_path, **{"simclr_victim.epochs": 100})
  sim = workdir(tmp_path / "sim", "clean", "simclr", {0: 0.81})
  sim_em = workdir(tmp_path / "sim_em", "em", "simclr", {0: 0.80, 1: 0.79})
  with open(os.path.join(sim_em, "seed_0", "em", "simclr", "cell.json")) as f:
    cell = json.load(f)
  cell.update(final_alt=0.83, peak_alt=0.84, knn_final=0.7)  # SimCLR cells hold more
  _write(os.path.join(sim_em, "seed_0", "em", "simclr", "cell.json"), cell)
  for path in (*sup, os.path.join(sim_em, "results.json")):  # newer code knows victim.new_knob
    with open(path) as f:
      res = json.load(f)
    res["config"]["victim"]["new_knob"] = 3
    _write(path, res)
  out = tmp_path / "m"
  cli.guarded(merge_lib.main, [*sup, sim, sim_em, "--out", str(out)])
  merged, table = _read(out)
  assert merged["notes"] == [
    "config keys absent from some sources (older code), not compared there: "
    f"`victim.new_knob` (absent from {sim})"
  ]
  assert f"Notes: {merged['notes'][0]}." in table
  assert merged["victims"] == ["supervised", "simclr", "simclr_clean_probe"]
  assert merged["cells"]["em"]["simclr_clean_probe"] == {"0": {"final": 0.83, "peak": 0.84}}
  assert "| protection | sup. (surrogate arch) | SimCLR probe | SimCLR, clean probe |" in table

  # Between simclr runs simclr_victim.* must agree.
  other = workdir(tmp_path / "sim_s1", "clean", "simclr", {1: 0.8}, **{"simclr_victim.epochs": 9})
  err = _refused([sim, other, "--out", str(tmp_path / "x")], capsys)
  assert "'simclr_victim.epochs'" in err and sim in err and other in err


def test_other_arch_and_generator_blocks_compare_only_where_they_are_used(tmp_path, capsys):
  # Clean gate runs made before other_arch changed and before em.bn existed: not refused.
  clean = _clean_bares(tmp_path, other_arch="small_cnn", em={"bn": "batch"})
  running = {"other_arch": "vgg16", "em": {"bn": "running"}}
  em = workdir(tmp_path / "em", "em", "supervised", {0: 0.2}, **running)
  vgg = workdir(tmp_path / "vgg", "em", "supervised_other", {0: 0.3}, **running)
  out = tmp_path / "m"
  assert cli.guarded(merge_lib.main, [*clean, em, vgg, "--out", str(out)]) == 0
  merged, _ = _read(out)
  assert merged["notes"] == [] and merged["cells"]["em"]["supervised_other"]["0"]["final"] == 0.3
  # Between sources that use them they must agree.
  vgg2 = workdir(tmp_path / "vgg2", "em", "supervised_other", {1: 0.3}, other_arch="resnet18",
                 em={"bn": "running"})  # fmt: skip
  assert "'other_arch'" in _refused([vgg, vgg2, "--out", str(tmp_path / "x")], capsys)
  emc = workdir(tmp_path / "emc", "em_class", "supervised", {0: 0.1}, em={"bn": "batch"})
  assert "'em.bn'" in _refused([em, emc, "--out", str(tmp_path / "y")], capsys)


def test_refuses_a_differing_config_key(tmp_path, capsys):
  clean = _clean_bares(tmp_path)
  em = workdir(tmp_path / "em", "em", "supervised", {0: 0.2}, eps=4 / 255)
  err = _refused([*clean, em, "--out", str(tmp_path / "m")], capsys)
  assert err.startswith("error: config key 'eps' differs") and clean[0] in err and em in err
  assert not (tmp_path / "m").exists()
  em2 = workdir(tmp_path / "em2", "em", "supervised", {0: 0.2}, release_uint8=False)
  em3 = workdir(tmp_path / "em3", "em_class", "supervised", {0: 0.2})
  assert "'release_uint8'" in _refused([em2, em3, "--out", str(tmp_path / "m")], capsys)


def test_refuses_duplicate_cells_and_sources_that_are_not_finished_runs(tmp_path, capsys):
  clean = _clean_bares(tmp_path)
  again = bare(tmp_path / "again.results.json", "clean", "supervised", 1, 0.9)
  err = _refused([*clean, again, "--out", str(tmp_path / "m")], capsys)
  assert "cell clean/supervised seed 1 is in both" in err and again in err

  unfinished = tmp_path / "unfinished"
  (unfinished / "seed_0").mkdir(parents=True)
  assert "not a finished run" in _refused([str(unfinished), "--out", "x"], capsys)
  pooled = tmp_path / "pooled.results.json"  # a multi-seed run's metrics alone: refused
  accs = {"em": {"supervised": [0.2, 0.3]}}
  _write(str(pooled), _results(_config(["em"], ["supervised"], [0, 1]), accs, accs))
  assert "only a one-seed run's metrics" in _refused([str(pooled), "--out", "x"], capsys)
  foreign = tmp_path / "foreign.results.json"
  _write(str(foreign), {"method": "mcae", "config": {}})
  assert "'mcae' run" in _refused([str(foreign), "--out", "x"], capsys)
  corrupt = tmp_path / "corrupt.results.json"
  corrupt.write_text("{not json")
  assert "is unreadable" in _refused([str(corrupt), "--out", "x"], capsys)
  broken = workdir(tmp_path / "broken", "em", "supervised", {0: 0.2})
  _write(os.path.join(broken, "seed_0", "em", "supervised", "cell.json"), {"peak": 0.3})
  assert "cannot be read as an unlearnable run" in _refused([broken, "--out", "x"], capsys)
  cli.guarded(merge_lib.main, [*clean, "--out", str(tmp_path / "m")])
  assert "output of unlearnable.merge" in _refused([str(tmp_path / "m"), "--out", "x"], capsys)
  em = workdir(tmp_path / "em", "em", "supervised", {0: 0.2})
  assert "is one of the sources" in _refused([em, "--out", em], capsys)


def test_usage(capsys):
  with pytest.raises(SystemExit) as e:
    cli.guarded(merge_lib.main, ["--help"])
  assert e.value.code == 0 and "usage: python -m unlearnable.merge SRC" in capsys.readouterr().out
  assert "no sources given" in _refused(["--out", "x"], capsys)
  assert "--out" in _refused(["some_dir"], capsys)


REAL = [
  *(f"2026-12-02_cifar10_clean_victim/seed{s}.results.json" for s in range(3)),
  *(f"2026-12-02_cifar10_simclr_victim/seed{s}.results.json" for s in range(3)),
  *(f"2026-12-03_cifar10_em_h200/{w}" for w in ("em_sup_s1", "emc_sup_s0", "rand_sup_s0")),
  "2026-12-03_cifar10_em_h200/em_simclr_s0",
]


def test_the_real_cifar10_runs_merge(tmp_path):
  sources = [os.path.join(RUNS, p) for p in REAL]
  if not all(os.path.exists(p) for p in sources):
    pytest.skip("the CIFAR-10 runs under docs/runs are not all in this checkout")
  out = tmp_path / "merged"
  assert cli.guarded(merge_lib.main, [*sources, "--out", str(out)]) == 0
  merged, table = _read(out)
  clean = merged["cells"]["clean"]["supervised"]
  assert [clean[s]["final"] for s in ("0", "1", "2")] == [0.9466, 0.9497, 0.9468]
  mean, _, n = merged["metrics"]["final"]["clean"]["supervised"]
  assert n == 3 and 100 * mean == pytest.approx(94.77, abs=1e-9)
  em_class = merged["metrics"]["final"]["em_class"]["supervised"]
  assert em_class[2] == 1 and 100 * em_class[0] == pytest.approx(10.0, abs=0.05)
  assert "| clean | 94.77 ± 0.17 (n=3) |" in table and "| em_class | 10.02 (n=1) |" in table
  assert merged["metrics"]["gates"]["verdict"] is True
  pairs = {(r["victim"], r["method"]): r for r in merged["metrics"]["paired"]}
  assert pairs["supervised", "em"]["seeds"] == [1] and pairs["simclr", "em"]["seeds"] == [0]
  assert pairs["supervised", "em_class"]["mean"] == pytest.approx(0.9466 - 0.1002)
  assert (out / "victim_matrix.png").stat().st_size > 1000


REAL_BN_RUNNING = [  # EM with em.bn = "running" (2026-12-03, second session), beside the gate runs
  *REAL[:6],
  *(f"2026-12-03_cifar10_em_h200/{w}" for w in ("emc_sup_s0", "rand_sup_s0")),
  *(f"2026-12-03b_cifar10_em_bnrunning_h200/{w}" for w in ("em_s0", "em_s1", "em_s0_vgg")),
]


def test_the_real_cifar10_runs_with_eval_mode_bn_em_merge(tmp_path):
  sources = [os.path.join(RUNS, p) for p in REAL_BN_RUNNING]
  if not all(os.path.exists(p) for p in sources):
    pytest.skip("the CIFAR-10 runs under docs/runs are not all in this checkout")
  out = tmp_path / "merged"
  assert cli.guarded(merge_lib.main, [*sources, "--out", str(out)]) == 0
  merged, table = _read(out)
  em = merged["cells"]["em"]
  assert sorted(em) == ["supervised", "supervised_other"] and sorted(em["supervised"]) == ["0", "1"]
  finals = [em["supervised"][s]["final"] for s in ("0", "1")]
  mean, _, n = merged["metrics"]["final"]["em"]["supervised"]
  assert n == 2 and mean == pytest.approx(np.mean(finals)) and max(finals) < 0.25
  pairs = {(r["victim"], r["method"]): r for r in merged["metrics"]["paired"]}
  assert pairs["supervised", "em"]["seeds"] == [0, 1] and pairs["supervised", "em"]["lo"] > 0.5
  assert "| em | 17.97 ± 4.60 (n=2) | 26.44 (n=1) |" in table
