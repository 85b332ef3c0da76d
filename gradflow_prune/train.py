"""`train_and_evaluate(config, workdir)`: teacher -> every criterion x procedure -> evaluation.

Stages, each resumable (re-running the command continues where it stopped):
  1. teacher   `teacher.py`: loaded from `teacher.weights` (diffusers state dict) or `teacher.dir`
               (shipped folder); else pre-trained here (workdir/pretrain, orbax checkpoints) and
               exported to workdir/teacher. `--config.stage=pretrain` stops after this and its
               evaluation.
  2. eval set  `evaluator.py`: FD features (a classifier trained on the data, or Inception),
               reference statistics, the fixed initial noise and the teacher's samples from it
               (workdir/eval/).
  3. runs      `pruning_run.py`, for seed x procedure x criterion (`plan.py`):
               workdir/runs/keep<r>/<procedure>/<criterion>/seed<k>/ -> result.json.
  4. summary   `report.py`: rows, mean +- std table (summary.md), the claim (pooled means and
               paired bootstrap intervals), convergence curves (FD, SSIM per fine-tune step;
               results.json `convergence`, convergence.png), FD-vs-MACs plot.
"""

from __future__ import annotations

import logging

import jax

from gradflow_prune import gate, inputs, plan, report, teacher
from gradflow_prune.evaluator import Evaluator
from gradflow_prune.pruning_run import run_one
from gradflow_prune.toolkit import toolkit, unet_config
from shared import train_lib
from shared.errors import ConfigError


def _teacher_metrics(evaluator: Evaluator, teacher_row: dict) -> dict:
  logging.info(
    "teacher: FD %.3f (data floor %.3f)  params %d  MACs %.3gM  latency %.3fs",
    teacher_row["fd"], evaluator.data_fd, teacher_row["params"], teacher_row["macs"] / 1e6,
    teacher_row["latency_s"],
  )  # fmt: skip
  return {
    "teacher_fd": teacher_row["fd"],
    "data_fd": evaluator.data_fd,
    "features": evaluator.extractor.name,
    "teacher": teacher_row,
  }


def _prune_all(config, workdir, runs, dense, data, mesh, evaluator) -> list[dict]:
  """Every keep ratio x seed x (criterion, procedure) run, in that order; their rows."""
  pc = config.prune
  todo = [(r, s, c, p) for r in pc.keep_ratios for s in config.seeds for c, p in runs]
  return [
    run_one(
      config,
      workdir,
      criterion=criterion,
      procedure=procedure,
      seed=seed,
      keep_ratio=keep,
      teacher=dense,
      data=data,
      mesh=mesh,
      evaluator=evaluator,
      index=i,
      total=len(todo),
    )  # fmt: skip
    for i, (keep, seed, criterion, procedure) in enumerate(todo, 1)
  ]


def train_and_evaluate(config, workdir: str) -> dict:
  runs = plan.runs(config)
  if config.stage not in ("all", "pretrain"):
    raise ConfigError(f"config.stage={config.stage!r}; known: all, pretrain")
  mesh = train_lib.make_mesh(config.run.model_axis)
  train, test = inputs.load_split(config, "train"), inputs.load_split(config, "test")
  data = {"train": train["image"]}  # uint8 (float per batch, on the device)
  model_config = unet_config(config, data["train"].shape[1:])
  dense = teacher.get_teacher(config, workdir, model_config, data["train"], mesh)
  t_cfg, t_params, t_meta = dense
  evaluator = Evaluator(config, workdir, train, test)
  kit = toolkit(t_cfg, config, mesh)
  teacher_row = evaluator.evaluate_teacher(kit, t_params, str(t_meta.get("source", "")))
  metrics = _teacher_metrics(evaluator, teacher_row)
  # The random-init yardstick is sampled only when the gate's FD check is on.
  fd_check = config.teacher_gate.max_fd_fraction > 0
  random_row = evaluator.evaluate_random_init(kit, config.seed) if fd_check else None
  metrics["teacher_gate"] = t_gate = gate.check(config.teacher_gate, teacher_row, random_row)
  for line in gate.lines(t_gate):
    logging.info("%s", line)
  if config.stage == "pretrain":
    features = evaluator.extractor.name
    teacher.record_eval(config, workdir, teacher_row, evaluator.data_fd, features, t_gate)
    return metrics

  rows = _prune_all(config, workdir, runs, dense, data, mesh, evaluator)
  rows = [{k: v for k, v in r.items() if k != "info"} for r in rows]
  summary = report.summarize(rows, teacher_row)
  claim = report.claim(summary, config.prune.keep_ratios, rows, t_gate)
  if jax.process_index() == 0:
    features = evaluator.extractor.name
    report.write_summary(workdir, rows, teacher_row, evaluator.data_fd, features, claim, t_gate)
  metrics["summary"] = summary
  metrics["claim"] = claim
  metrics["convergence"] = report.convergence(rows)
  metrics["rows"] = rows
  metrics["teacher_source"] = t_meta.get("source", "")
  return metrics
