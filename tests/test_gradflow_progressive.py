"""Issue 16's faithful progressive procedure: keep sets ranked per whole group (the GroupNorm unit
rule only when hardening), the criterion term normalised per group, scoring dtype, the budget."""

import numpy as np
import pytest

from gradflow_prune import plan, procedures, surgery
from shared.errors import ConfigError
from shared.models import unet

# Units of 3 and 6 channels (12 / 4 and 24 / 4 channels per GroupNorm group), as the default
# mnist5k U-Net's (ch 24, 8 groups): keep 0.7 keeps 2 of every 3, 4 of every 6.
UNIT3 = unet.preset("tiny8", ch=12, ch_mult=(1, 2), num_groups=4)


def _stub_problem(groups, seed=0):
  """A loss that rises as masks fall, L(m) = sum_c a_c (1 - m_c)^2, and magnitude-like scores:
  no U-Net is compiled, the groups are the real U-Net's."""
  rng = np.random.default_rng(seed)
  a = {g.name: rng.uniform(0.5, 1.5, g.size) for g in groups}
  scores = {g.name: rng.uniform(size=g.size) for g in groups}

  def grad_fn(params, masks, *batch):
    loss = sum(float(np.sum(a[k] * (1 - np.asarray(masks[k])) ** 2)) for k in a)
    return loss, {k: -2 * a[k] * (1 - np.asarray(masks[k])) for k in a}

  return grad_fn, scores


def _run(rank_within, normalize="group", iterations=3, keep=0.7, gamma=0.5, flip=False,
         record=None):  # fmt: skip
  """prune.iterative on the stub; `record` (a list) gets each iteration's keep set."""
  groups = surgery.channel_groups(UNIT3)
  grad_fn, scores = _stub_problem(groups)
  sign = lambda k: -1.0 if flip and k % 2 == 0 else 1.0  # flip: the criterion reverses each time

  def train(state, masks, k):  # the soft masks after the decay: kept ones are > gamma
    if record is not None:
      record.append({n: np.asarray(v) > gamma + 1e-6 for n, v in masks.items()})
    return state

  cfg = procedures.FlowConfig(
    iterations=iterations, n_flow=4, eta=0.05, lam=1.0, gamma=gamma, n_train=1,
    rank_within=rank_within, normalize=normalize,
  )  # fmt: skip
  hard, _, history = procedures.iterative(
    groups=groups, criterion="magnitude", state=None, params_of=lambda s: s,
    score=lambda c, p, m, k: ({n: sign(k) * v for n, v in scores.items()}, {}),
    removal=procedures.removal_from_importance,
    grad_fn=grad_fn, flow_batch=lambda k: (None, None, None), train=train, keep_ratio=keep, cfg=cfg,
  )  # fmt: skip
  return groups, hard, history


def test_the_units_of_this_model_collapse_the_per_unit_schedule():
  groups = surgery.channel_groups(UNIT3)
  assert {g.unit for g in groups if g.kind in ("stream", "inner")} == {3, 6}
  s_1, s_2 = (procedures.budget_sparsity(k, 3, 0.3, 3.0) for k in (1, 2))
  unit3 = next(g.name for g in groups if g.unit == 3)
  unit6 = next(g.name for g in groups if g.unit == 6)
  # Rounded per unit, iteration 1's keep count is already the final one for units of 3 (2 of 3),
  # iteration 2's for units of 6 (4 of 6).
  assert groups.keep_per_unit(unit3, 1 - s_1) == groups.keep_per_unit(unit3, 0.7) == 2
  assert groups.keep_per_unit(unit6, 1 - s_2) == groups.keep_per_unit(unit6, 0.7) == 4


def _unit3_sets(groups, record):
  names = [g.name for g in groups if g.unit == 3]
  return [np.concatenate([r[n] for n in names]) for r in record]


def test_old_per_unit_ranking_reproduces_the_collapse():
  record = []
  groups, hard, history = _run("unit", normalize="all", record=record)
  # No channel ever re-enters, and the unit-3 groups' keep set is fixed at iteration 1: later
  # iterations only fade the channels iteration 1 dropped.
  assert [h["entered"] for h in history] == [0, 0, 0] and history[2]["dropped"] == 0
  sets = _unit3_sets(groups, record)
  assert all(np.array_equal(sets[0], s) for s in sets)
  final = np.concatenate([hard[g.name] > 0 for g in groups if g.unit == 3])
  np.testing.assert_array_equal(sets[0], final)


def test_group_ranking_makes_the_keep_set_change_across_iterations():
  record = []
  groups, hard, history = _run("group", record=record)
  sets = _unit3_sets(groups, record)
  assert sets[0].sum() > sets[1].sum() and not np.array_equal(sets[0], sets[-1])
  kept = [h["kept"] for h in history]
  total = groups.num_channels()
  want = [
    sum(
      int(np.floor((1 - procedures.budget_sparsity(k, 3, 0.3, 3.0)) * g.size + 0.5)) for g in groups
    )
    for k in (1, 2, 3)
  ]
  assert kept == want and kept[0] > kept[1] >= kept[2]  # progressive: 79%, 71%, 70% kept
  assert [h["dropped"] for h in history][1] > 0  # iteration 2 removes channels iteration 1 kept
  assert kept[0] < total
  # Hardening applies the GroupNorm unit rule: surgery accepts the masks, counts are per unit.
  surgery.check_masks(groups, hard)
  assert sum(int(v.sum()) for v in hard.values()) == sum(
    groups.keep_per_unit(g.name, 0.7) * g.size // g.unit for g in groups
  )


def test_a_decayed_channel_can_come_back_when_the_flow_lifts_it():
  """Soft masks are ranked by value: a channel decayed at iteration 1 whose mask the flow then
  pushes above a kept one re-enters the keep set (gamma = 0.9: a small gap; the criterion's
  ranking reversed at iteration 2)."""
  _, _, history = _run("group", gamma=0.9, flip=True)
  assert history[1]["entered"] > 0
  _, _, soft_old = _run("unit", normalize="all", gamma=0.9, flip=True)
  assert all({"kept", "dropped", "entered"} <= set(h) for h in soft_old)


def test_keep_per_group_ignores_units_and_breaks_ties_by_score():
  groups = surgery.channel_groups(UNIT3)
  g = groups["conv_in.out"]
  masks = {n.name: np.ones(n.size) for n in groups}
  tie = {n.name: np.arange(n.size, dtype=float) for n in groups}
  keep = procedures.keep_per_group(groups, masks, 0.5, tie)
  np.testing.assert_array_equal(np.flatnonzero(keep[g.name]), np.arange(g.size // 2, g.size))
  counts = keep[g.name].reshape(-1, g.unit).sum(-1)
  assert counts.min() != counts.max()  # not balanced per unit: allowed while soft


def test_criterion_term_is_normalised_within_each_group():
  groups = surgery.channel_groups(UNIT3)
  rng = np.random.default_rng(0)
  # Scores of very different scales per group, as GraSP's products across depth.
  removal = {g.name: rng.normal(size=g.size) * 10.0 ** rng.integers(-4, 4) for g in groups}
  dl_dm = {g.name: rng.normal(size=g.size) * 10.0 ** rng.integers(-3, 1) for g in groups}
  s_hat = procedures.normalized_removal_per_group(removal, groups, dl_dm)
  for g in groups:
    if g.size == 1:
      continue
    assert abs(s_hat[g.name].mean()) < 1e-5 * np.abs(dl_dm[g.name]).mean()
    np.testing.assert_allclose(np.abs(s_hat[g.name]).mean(), np.abs(dl_dm[g.name]).mean(), 1e-5)
    np.testing.assert_allclose(np.argsort(s_hat[g.name]), np.argsort(removal[g.name]))
  # Over all groups at once (the old setting) a group of small scores is flattened to ~0.
  flat = procedures.normalized_removal(removal, groups, 1.0)
  spread = [np.ptp(flat[g.name]) for g in groups if g.size > 1]
  assert min(spread) < 1e-3 * max(spread)


def test_config_fields_choose_the_new_behaviour_by_default_and_keep_the_old():
  from configs import gradflow_prune as config_file

  for variant in (None, "tiny", "compare", "cifar"):
    pc = config_file.get_config(variant).prune
    assert (pc.rank_within, pc.normalize, pc.score_dtype, pc.grasp_protocol) == (
      "group", "group", "float32", "sweep",
    )  # fmt: skip
  config = config_file.get_config("tiny")
  config.prune.rank_within, config.prune.normalize = "unit", "all"
  fc = plan.flow_config(config, "iterative")
  assert (fc.rank_within, fc.normalize) == ("unit", "all")
  config.prune.rank_within = "channel"
  with pytest.raises(ConfigError, match="rank_within"):
    plan.runs(config)


def test_score_dtype_is_float32_inside_a_bfloat16_run():
  import jax.numpy as jnp

  from configs import gradflow_prune as config_file
  from gradflow_prune import toolkit
  from shared import train_lib

  config = config_file.get_config("tiny")
  config.run.dtype = "bfloat16"
  mesh = train_lib.make_mesh(1)
  kit = toolkit.Toolkit(UNIT3, toolkit.schedule(config), config, mesh)
  assert kit.model.dtype == jnp.bfloat16 and kit.scorer.model.dtype == jnp.float32
  config.prune.score_dtype = "run"  # the old behaviour
  old = toolkit.Toolkit(UNIT3, toolkit.schedule(config), config, mesh)
  assert old.scorer.model.dtype == jnp.bfloat16


@pytest.mark.parametrize(
  "budget,want", [("total", {"oneshot": (0, 30), "iterative": (10, 20)}),
                  ("finetune", {"oneshot": (0, 30), "iterative": (10, 30)})],
)  # fmt: skip
def test_budget_and_convergence_points(budget, want):
  from configs import gradflow_prune as config_file

  config = config_file.get_config("tiny")
  config.prune.budget = budget
  for procedure, steps in want.items():
    assert plan.finetune_steps(config, procedure) == steps
  assert plan.convergence_points(config, 20) == [0, 10, 20]
  assert plan.convergence_points(config, 5) == [0, 5]
  assert config_file.get_config("cifar").prune.convergence_steps == (0, 250, 500, 1000, 2000)


@pytest.mark.parametrize("keep", [0.0, -0.1, 1.5])
def test_keep_ratio_outside_0_1_is_a_config_error(keep):
  from configs import gradflow_prune as config_file

  config = config_file.get_config("tiny")
  config.prune.keep_ratios = (keep,)
  with pytest.raises(ConfigError, match=r"keep_ratios must be in \(0, 1\]"):
    plan.runs(config)


def test_arms_of_the_paired_comparison():
  from configs import gradflow_prune as config_file

  runs = plan.runs(config_file.get_config("cifar"))
  assert runs == [
    ("random", "oneshot"), ("magnitude", "oneshot"), ("taylor", "oneshot"), ("grasp", "oneshot"),
    ("taylor", "iterative"), ("grasp", "iterative"), ("grasp", "iterative_lam0"),
    ("grasp", "iterative_gamma0"), ("grasp", "iterative_k1"),
  ]  # fmt: skip
