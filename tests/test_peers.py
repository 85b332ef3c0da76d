"""The PyTorch peers (`benchmarks.peers.*`) and `benchmarks.ratio`.

Torch-free: the peer modules import without torch, and the ratio table on synthetic lines. Where
torch is installed: each peer's `--tiny` run writes a well-formed line, and the full-size networks
have the parameter counts of the JAX models they stand beside.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from benchmarks import ratio
from shared import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = ("mae_vit_b16", "ddpm_unet", "resnet18")
HAS_TORCH = importlib.util.find_spec("torch") is not None


def _run(*args, timeout=300):
  return subprocess.run(
    [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
  )


def test_peer_modules_import_without_torch():
  code = (
    "import sys\n"
    + "".join(f"import benchmarks.peers.{p}\n" for p in PEERS)
    + "assert 'torch' not in sys.modules, 'a peer imported torch at import time'\n"
  )
  proc = _run("-c", code, timeout=120)
  assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(HAS_TORCH, reason="torch is installed here")
def test_peer_without_torch_is_one_error_line_and_exit_2():
  proc = _run("-m", "benchmarks.peers.resnet18", "--tiny", timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
    "error: the PyTorch peers need torch (not installed here)"
  ]


def test_peer_bad_flag_is_one_error_line_and_exit_2():
  proc = _run("-m", "benchmarks.peers.ddpm_unet", "--what", "nope", timeout=120)
  assert proc.returncode == 2
  (line,) = proc.stderr.strip().splitlines()
  assert line.startswith("error: --what nope")


def _jax(case, rate, batch, **extra):
  return {"case": case, "batch_size": batch, "devices": 1, "examples_per_s": rate, **extra}


def _peer(case, rate, batch, compiled, dtype="bfloat16", **extra):
  row = {"case": case, "peer": "pytorch", "batch_size": batch, "examples_per_s": rate}
  return {**row, "compiled": compiled, "dtype": dtype, **extra}


def _write(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def test_ratio_table_pairs_cases_and_checks_targets(tmp_path, capsys):
  jax_rows = [
    _jax("mcae/mae_pretrain", 4_000, 256),
    _jax("mcae/mae_pretrain", 6_000, 256),  # a re-run: the last line wins
    _jax("mcae/mae_pretrain", 8_000, 512, devices=2),  # 2 devices: not a target row
    _jax("gradflow_prune/ddpm_train_bfloat16", 5_500, 128),
    _jax("unlearnable/em_pgd_step", 120_000, 512),
    _jax("unlearnable/victim_train_step", 110_000, 512),
    _jax("infotok/tokenizer_step", 600, 32),  # no peer: not listed
  ]
  peer_rows = [
    _peer("pytorch/mae_pretrain", 3_000, 256, compiled=False),
    _peer("pytorch/mae_pretrain", 4_500, 256, compiled=True),
    _peer("pytorch/ddpm_train", 2_000, 128, compiled=False, dtype="float32"),
    _peer("pytorch/resnet18_pgd", 50_000, 512, compiled=False),
    _peer("pytorch/resnet18_pgd", 99_999, 4, compiled=False, tiny=True),
  ]
  code = cli.guarded(
    ratio.main, [_write(tmp_path / "jax.jsonl", jax_rows), _write(tmp_path / "p.jsonl", peer_rows)]
  )
  assert code == 0
  rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]
  cells = [[c.strip() for c in line.strip("|").split("|")] for line in rows]
  by = {(c[0], c[3]): c for c in cells}
  mae_eager = by[("mcae/mae_pretrain", "3,000 (eager, bfloat16)")]
  assert mae_eager[2] == "6,000" and mae_eager[4] == "2.00x" and mae_eager[6] == "—"
  mae_compiled = by[("mcae/mae_pretrain", "4,500 (torch.compile, bfloat16)")]
  assert mae_compiled[4] == "1.33x" and mae_compiled[5] == ">= 1.3x torch.compile"
  assert mae_compiled[6] == "yes"
  ddpm = by[("gradflow_prune/ddpm_train_bfloat16", "2,000 (eager, float32)")]
  assert ddpm[4] == "2.75x" and ddpm[6] == "yes" and "5,000" in ddpm[5]
  pgd = by[("unlearnable/em_pgd_step", "50,000 (eager, bfloat16)")]
  assert pgd[4] == "2.40x" and pgd[6] == "**no**"  # 120,000 < 150,000 img/s
  (victim,) = [c for c in cells if c[0] == "unlearnable/victim_train_step"]
  assert "no pytorch/resnet18_train line" in victim[3] and victim[6] == "yes"
  assert len(cells) == 5  # no 2-device, tiny, or unpaired rows


def test_ratio_bad_input_is_one_error_line_and_exit_2(tmp_path, capsys):
  good = _write(tmp_path / "j.jsonl", [_jax("mcae/mae_pretrain", 1.0, 256)])
  (tmp_path / "bad.jsonl").write_text("{not json\n")
  for argv in (
    [good],
    [good, str(tmp_path / "missing.jsonl")],
    [good, str(tmp_path / "bad.jsonl")],
  ):
    with pytest.raises(SystemExit) as exit_info:
      cli.guarded(ratio.main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


REQUIRED = {
  "case": str,
  "peer": str,
  "torch_version": str,
  "compiled": bool,
  "dtype": str,
  "batch_size": int,
  "step_ms_median": float,
  "examples_per_s": float,
  "device_name": str,
}
TINY_CASES = {
  "mae_vit_b16": ["pytorch/mae_pretrain"],
  "ddpm_unet": ["pytorch/ddpm_train", "pytorch/ddpm_forward"],
  "resnet18": ["pytorch/resnet18_train", "pytorch/resnet18_pgd"],
}


@pytest.mark.parametrize("peer", PEERS)
def test_tiny_peer_writes_a_well_formed_line(tmp_path, peer):
  pytest.importorskip("torch")
  out = tmp_path / "peers.jsonl"
  proc = _run("-m", f"benchmarks.peers.{peer}", "--tiny", "--device", "cpu", "--out", str(out))
  assert proc.returncode == 0, proc.stderr
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["case"] for r in rows] == TINY_CASES[peer]
  for r in rows:
    for key, kind in REQUIRED.items():
      assert isinstance(r[key], kind), (key, r[key])
    assert r["peer"] == "pytorch" and r["compiled"] is False and r["tiny"] is True
    assert r["steps"] == 2 and r["step_ms_median"] > 0 and r["examples_per_s"] > 0
  assert f"| {rows[0]['case']} | no |" in proc.stdout


def test_full_size_peers_have_the_jax_models_parameter_counts():
  torch = pytest.importorskip("torch")
  import jax
  import jax.numpy as jnp

  from benchmarks.peers import ddpm_unet, mae_vit_b16, resnet18
  from configs import gradflow_prune as gp_config
  from configs import mcae as mcae_config
  from gradflow_prune.toolkit import unet_config
  from mcae import pretrain_loss
  from shared.models import resnet, unet

  def count(tree):
    return sum(x.size for x in jax.tree.leaves(tree))

  def count_torch(module):
    return sum(p.numel() for p in module.parameters())

  cfg = mcae_config.get_config("paper")
  with cfg.unlocked():
    cfg.pretrain.supcon_weight = 0.0  # the mae_pretrain case
  init = pretrain_loss.init_params(cfg.model, cfg.pretrain, jnp.bfloat16, (224, 224, 3))
  assert count_torch(mae_vit_b16.build(torch, **mae_vit_b16.PAPER)) == count(
    jax.eval_shape(init, jax.random.PRNGKey(0))[0]
  )
  net = unet.from_config_dict(unet_config(gp_config.get_config("paper"), (32, 32, 3)))
  assert count_torch(ddpm_unet.build(torch, **ddpm_unet.PAPER)) == count(
    jax.eval_shape(lambda: unet.init_params(net, 0))
  )
  variables = jax.eval_shape(
    lambda: resnet.ResNet18().init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  )
  assert count_torch(resnet18.build(torch)) == count(variables["params"])


def test_crop_flip_takes_a_window_of_the_padded_image():
  torch = pytest.importorskip("torch")
  from benchmarks.peers import resnet18

  torch.manual_seed(0)
  x = torch.rand(3, 3, 8, 8)
  out = resnet18.crop_flip(torch, x)
  padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
  for i in range(3):
    windows = [padded[i, :, r : r + 8, c : c + 8] for r in range(9) for c in range(9)]
    assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)
