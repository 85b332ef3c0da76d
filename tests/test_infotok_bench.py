"""InfoTok's benchmark cases (issue 20: a bf16 path against its float32): the tokenizer step and
the unified AR and masked steps (the semantic-aligned style trains with those same two) each in
float32 and bfloat16, compiled from the trainers' own steps; a bf16 training step of the tiny
variant gives a finite loss close to the float32 one."""

import jax
import numpy as np
import pytest

from configs import infotok as config_file
from infotok import bench

STEPS = ("tokenizer_step", "unified_ar_step", "unified_masked_step")


@pytest.fixture(scope="module")
def tiny_cases():
  return {c.name: c for c in bench.cases(config_file.get_config("tiny"), "train_step", 8)}


def test_every_step_has_a_float32_and_a_bfloat16_case(tiny_cases):
  want = [f"infotok/{s}_{d}" for s in STEPS for d in ("float32", "bfloat16")]
  assert list(tiny_cases) == want
  for name, case in tiny_cases.items():
    assert case.meta["dtype"] == name.rsplit("_", 1)[1] and case.batch_size == 8
    params = {x.dtype for x in jax.tree.leaves(case.args[0].params)}
    assert params == {np.dtype("float32")}, name  # bf16 compute, float32 params
  assert "semantic" in tiny_cases["infotok/unified_ar_step_bfloat16"].meta["styles"]
  assert "semantic" in tiny_cases["infotok/tokenizer_step_bfloat16"].meta["styles"]
  for s in STEPS:  # each dtype its own compiled step
    assert tiny_cases[f"infotok/{s}_float32"].step is not tiny_cases[f"infotok/{s}_bfloat16"].step


@pytest.mark.parametrize("step", STEPS)
def test_a_bfloat16_training_step_matches_float32_loosely(tiny_cases, step):
  """Same init, same batch: three steps of each (the first at the warm-up's zero learning rate),
  losses finite and within 2%."""
  losses = {}
  for dtype in ("float32", "bfloat16"):
    case = tiny_cases[f"infotok/{step}_{dtype}"]
    state, rest = case.args[0], case.args[1:]
    losses[dtype] = []
    for _ in range(3):
      state, metrics = case.step(state, *rest)
      losses[dtype].append(float(metrics["loss"]))
  assert np.isfinite(losses["bfloat16"]).all(), losses
  np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=0.02)
