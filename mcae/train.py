"""MCAE and its baselines over leave-one-domain-out protocols and seeds: `train_and_evaluate`.

Every (seed, protocol, method spec) is a resumable sub-run in its own folder of the workdir
(`mcae.subrun`); a method spec is a name from `config.method_table`, optionally with config
overrides (`mcae.methods`). This module runs them all, then writes the mean ± std tables, the
ROC figures and `runs.json`.
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np

from mcae import evaluate, methods, paired
from mcae.protocols import parse_protocols
from mcae.subrun import RunContext, run_subrun, subrun_folder
from shared import data as data_lib
from shared import train_lib, validate
from shared.errors import ConfigError
from shared.workdir import load_arrays, write_json, write_text


def _info(config):
  options = config.data.options.to_dict()
  data_dir = config.data.data_dir or None
  # Ask for the domains first with the set's own defaults: another set (e.g. cifar10) would
  # otherwise fail on the FAS options before saying what it lacks.
  if "domains" not in data_lib.info(config.data.name, data_dir=data_dir):
    raise ConfigError(
      f"data set {config.data.name!r} has no capture domains; use fas_proxy or fas_json"
    )
  return data_lib.info(config.data.name, data_dir=data_dir, **options)


def _load_splits(config):
  options = config.data.options.to_dict()
  data_dir = config.data.data_dir or None
  return {
    s: data_lib.load(config.data.name, s, data_dir=data_dir, **options)
    for s in ("train", "val", "test")
  }


REFERENCE = "mcae"  # the method the paired table compares with every other one


def ceiling_gates(config, runs, protocols) -> list[dict]:
  """The in-domain ceiling per method: mean source-val AUC of its in-domain runs against
  `config.gates.in_domain_val_auc` (is the bed learnable at all?)."""
  names = {p.name for p in protocols if p.in_domain}
  threshold = config.gates.in_domain_val_auc
  out = []
  for spec in config.methods:
    values = [r["val_auc"] for r in runs if r["method"] == spec and r["protocol"] in names]
    if values:
      value = float(np.mean(values))
      out.append(
        dict(
          name="in-domain ceiling",
          method=spec,
          value=value,
          threshold=threshold,
          passed=value >= threshold,
          seeds=len(values),
        )  # fmt: skip
      )
  return out


def write_outputs(config, workdir, runs, protocols, folder_of=subrun_folder) -> dict:
  """Tables (`table.md`), ROC figures and `runs.json` in `workdir` from the sub-run results
  `runs`; returns the metrics for results.json. `folder_of(workdir, seed, protocol, spec)` names
  the folder holding a sub-run's `scores.npz` (`mcae.merge` points it at other workdirs)."""
  names = [p.name for p in protocols]
  rows = evaluate.summarise(runs, list(config.methods), names)
  gates = ceiling_gates(config, runs, protocols)
  pairs = []
  if REFERENCE in config.methods and len(config.methods) > 1:  # MCAE against every other method
    others = [m for m in config.methods if m != REFERENCE]
    pairs = paired.compare(
      runs, protocols, REFERENCE, others, lambda s, p, m: folder_of(workdir, s, p, m)
    )
  figures = []
  if jax.process_index() == 0:
    for proto in protocols:
      curves = {}
      for spec in config.methods:
        for seed in config.seeds:
          folder = folder_of(workdir, seed, proto, spec)
          path = os.path.join(folder, "scores.npz")
          if os.path.exists(path):
            recover = (
              f"delete {path} and {os.path.join(folder, 'subrun.json')}, then re-run the same "
              "command (the sub-run is evaluated again from its last checkpoint)"
            )
            f = load_arrays(path, recover=recover)
            curves.setdefault(spec, []).append(evaluate.roc_of(f["test_scores"], f["test_labels"]))
      figure = os.path.join(workdir, f"roc_{proto.slug}.png")
      evaluate.roc_figure(figure, f"{proto.name} (mean ROC over seeds)", curves)
      figures.append(os.path.basename(figure))
    table = evaluate.markdown_tables(rows, names)
    gate_lines = [
      f"- {g['name']}: {g['method']} source-val AUC {100 * g['value']:.2f}% "
      f"(gate >= {100 * g['threshold']:.0f}%: {'learnable' if g['passed'] else 'NOT learnable'})"
      for g in gates
    ]
    if gate_lines:
      table = "**In-domain ceiling**\n\n" + "\n".join(gate_lines) + "\n\n" + table
    table += "\n" + paired.markdown(pairs)
    write_text(os.path.join(workdir, "table.md"), table + "\n")
  means = {r["method"]: r for r in rows if r["protocol"] == evaluate.MEAN_ROW}
  metrics: dict = {}
  for spec, r in means.items():
    for m in ("hter_eer", "hter_val", "auc"):
      metrics[f"{spec}/mean_{m}"] = r[f"{m}_mean"]
  for m in ("hter_eer", "hter_val"):
    metrics[f"lowest_mean_{m}"] = min(means, key=lambda s: means[s][f"{m}_mean"])
  # One row per (method, protocol or mean), labelled by "name" for shared.report; the per-seed
  # sub-run results go to runs.json beside results.json.
  metrics["table"] = [
    {
      "name": f"{r['method']} | {r['protocol']}",
      "method": r["method"],
      "held_out": r["protocol"],
      **{k: v for k, v in r.items() if k not in ("method", "protocol")},
    }
    for r in rows
  ]
  if gates:
    metrics["gates"] = gates
  if pairs:
    metrics["paired"] = pairs
  write_json(os.path.join(workdir, "runs.json"), {"runs": runs})
  metrics["runs_file"] = "runs.json"
  metrics["protocols"] = names
  metrics["figures"] = figures
  return metrics


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Every method x protocol x seed, then mean ± std tables, ROC figures and results."""
  start = time.time()
  for spec in config.methods:  # fail on a bad method, override or value before any training
    mcfg = methods.method_config(config, spec)
    validate.check_config(mcfg)
    methods.check_method(mcfg, spec)
  if not config.seeds:
    raise ConfigError("config.seeds is empty")
  info = _info(config)
  domains = list(info["domains"])
  protocols = parse_protocols(domains, config.protocols)  # before the data is read
  splits = _load_splits(config)
  mesh = train_lib.make_mesh(config.run.model_axis)
  ctx = RunContext(
    config=config,
    workdir=workdir,
    mesh=mesh,
    data_sharding=train_lib.batch_sharding(mesh),
    image_shape=tuple(splits["train"]["image"].shape[1:]),
    num_domains=len(domains),
    num_attacks=len(info.get("attacks", ("live", "spoof"))),
  )
  runs = []
  for seed in config.seeds:
    for proto in protocols:
      for spec in config.methods:
        runs.append(run_subrun(ctx, spec, int(seed), proto, splits))

  metrics = write_outputs(config, workdir, runs, protocols, folder_of=subrun_folder)
  metrics["train_and_evaluate_s"] = round(time.time() - start, 2)
  return metrics
