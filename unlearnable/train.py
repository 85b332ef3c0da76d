"""`python -m unlearnable`: protect a data set with each method, attack it with each victim.

For each seed in `config.seeds` (a sub-folder `seed_<s>/` each, resumable on its own):
  for each method in `config.methods`: generate perturbations of the training split (saved as
    `seed_<s>/<method>/perturbations.npz`, keys delta, indices, eps), then
    for each victim in `config.victims`: train it from scratch on the protected data and store
    its clean-test accuracy in `seed_<s>/<method>/<victim>/cell.json`.
Finished perturbations and cells are not recomputed when the same command is run again; an
interrupted min-min search or victim resumes from its checkpoint (`run.checkpoint_victims`).
The run writes `table.md` (mean ± std over seeds) and returns every number to results.json.
"""

from __future__ import annotations

import functools
import logging
import os
import time

import jax
import numpy as np
from sklearn.linear_model import LogisticRegression

from shared import data as data_lib
from shared import workdir as workdir_lib
from shared.errors import ConfigError, DataError
from unlearnable import csd, evaluate, minmin, perturb, release, report


def _load(config_data, split):
  options = config_data.options.to_dict()
  arrays = data_lib.load(config_data.name, split, data_dir=config_data.data_dir or None, **options)
  n = int(config_data.max_examples.get(split, 0)) if "max_examples" in config_data else 0
  images, labels = arrays["image"], arrays["label"].astype(np.int32)
  if n and n < len(labels):
    images, labels = images[:n], labels[:n]
  return {"image": data_lib.to_float(np.asarray(images)), "label": np.asarray(labels, np.int32)}


def _num_classes(config_data, *label_arrays) -> int:
  if config_data.name.startswith("tfds:"):
    k = 0
  else:
    k = int(data_lib.info(config_data.name, **config_data.options.to_dict()).get("num_classes", 0))
  return max([k] + [int(labels.max()) + 1 for labels in label_arrays])


def _check(config):
  unknown = [m for m in config.methods if m not in perturb.METHODS]
  if unknown:
    raise ConfigError(f"unknown methods {unknown}; known: {', '.join(perturb.METHODS)}")
  trained = [v for v in evaluate.VICTIMS if v not in evaluate.DERIVED]
  unknown = [v for v in config.victims if v not in trained]
  if unknown:
    raise ConfigError(f"unknown victims {unknown}; known: {', '.join(trained)}")
  if not config.seeds:
    raise ConfigError("config.seeds is empty; give at least one seed, e.g. --config.seeds='(0,)'")
  if not 0 < config.eps <= 1:
    raise ConfigError(f"eps must be in (0, 1], got {config.eps}")
  src = config.get("protected_from")
  if src and not os.path.isdir(src):
    raise ConfigError(f"protected_from={src!r} is not a folder (a finished run's --workdir)")
  bn = config.em.get("bn", "batch")
  if bn not in minmin.BN_MODES:
    raise ConfigError(f"em.bn={bn!r}; known: {', '.join(minmin.BN_MODES)}")


def data_check(images: np.ndarray, eps: float) -> dict:
  """How much an eps perturbation can be clipped away: the fraction of pixel values within eps of
  0 or 1 (MNIST: most of them; `shapes`: none)."""
  near = (images < eps) | (images > 1.0 - eps)
  return {"pixels_within_eps_of_0_or_1": float(near.mean()), "min": float(images.min()),
          "max": float(images.max())}  # fmt: skip


def perturbation_stats(delta, labels, num_classes, eps, seed) -> dict:
  """Budget use and class structure of the perturbations themselves (no victim involved)."""
  flat = delta.reshape(len(delta), -1)
  out = {
    "max_abs": float(np.abs(flat).max()),
    "mean_abs_x255": float(np.abs(flat).mean() * 255.0),
    "csd": float(csd.csd(flat, labels, num_classes)) if np.abs(flat).max() > 0 else float("nan"),
  }
  if np.abs(flat).max() > 0:
    # Linear separability of delta alone: logistic regression, 80/20 split.
    perm = np.random.default_rng(seed).permutation(len(flat))
    cut = int(0.8 * len(flat))
    clf = LogisticRegression(max_iter=300).fit(flat[perm[:cut]], labels[perm[:cut]])
    out["delta_linear_accuracy"] = float(
      np.mean(clf.predict(flat[perm[cut:]]) == labels[perm[cut:]])
    )
  return out


def protected_delta(config, method, train, num_classes, seed_key, mdir) -> tuple[np.ndarray, dict]:
  """The method's perturbations of the training split, from perturbations.npz when made before.

  With `config.release_uint8` (every variant) the perturbation returned is that of the uint8
  release `protected.npz` (x + delta rounded to grey levels within the budget,
  `release.quantize`), read back from the file: the victims train on the released images.
  """
  if config.get("protected_from") and method != "clean":
    return _released_elsewhere(config, method, train, mdir)
  delta, info = _generate(config, method, train, num_classes, seed_key, mdir)
  if not config.release_uint8:
    return delta, info
  path = os.path.join(mdir, "protected.npz")
  if not os.path.exists(path):
    protected = release.quantize(train["image"], delta, config.eps)
    if jax.process_index() == 0:
      release.save_protected(path, protected, train["label"], eps=config.eps)
      clean = data_lib.to_uint8(train["image"][: release.GRID])  # only the grid's images
      release.save_grid(os.path.join(mdir, "protected.png"), clean, protected, config.eps)
  released = release.load_protected(path) if os.path.exists(path) else {"images": protected}
  if released["images"].shape[0] != len(train["label"]):
    raise DataError(f"{path} was made for other data; use a fresh --workdir")
  return release.as_delta(released["images"].reshape(train["image"].shape), train["image"]), info


def _released_elsewhere(config, method, train, mdir) -> tuple[np.ndarray, dict]:
  """The uint8 release another run made (`config.protected_from`, its workdir): same seed, method.

  Victims added later train on the very images that run released, without generating them again.
  The source's generation.json comes along (with `protected_from` naming it).
  """
  seed_dir, _ = os.path.split(os.path.normpath(mdir))
  src = os.path.join(config.protected_from, os.path.basename(seed_dir), method)
  path = os.path.join(src, "protected.npz")
  released = release.load_protected(path)  # DataError: missing, unreadable, wrong dtype / shape
  if released["images"].size != train["image"].size or not np.array_equal(
    np.asarray(released["labels"]), np.asarray(train["label"])
  ):
    raise DataError(f"{path} was released for other data (images or labels differ from this run's)")
  if not np.isclose(float(released["eps"]), config.eps):
    raise DataError(f"{path} has eps {float(released['eps']):.6f}, this run {config.eps:.6f}")
  info = workdir_lib.read_json(os.path.join(src, "generation.json"))
  if info is None:
    raise DataError(f"{src}/generation.json is missing: {src} is not a finished generation")
  info = {**info, "protected_from": src}
  os.makedirs(mdir, exist_ok=True)
  workdir_lib.write_json(os.path.join(mdir, "protected_from.json"), {"source": src})
  logging.info("%s: the release of %s", method, src)
  return release.as_delta(released["images"].reshape(train["image"].shape), train["image"]), info


def _generate(config, method, train, num_classes, seed_key, mdir) -> tuple[np.ndarray, dict]:
  """The float perturbations of the training split, from perturbations.npz when made before."""
  path = os.path.join(mdir, "perturbations.npz")
  info_path = os.path.join(mdir, "generation.json")
  n = len(train["label"])
  info = workdir_lib.read_json(info_path)  # written after the npz: there means both are whole
  if info is not None and os.path.exists(path):
    saved = perturb.load(path)
    if saved["delta"].shape != train["image"].shape or not np.isclose(saved["eps"], config.eps):
      raise DataError(f"{path} was made for other data or eps; use a fresh --workdir")
    delta = np.zeros_like(train["image"])
    delta[saved["indices"]] = saved["delta"]
    return delta, info
  t0 = time.time()
  kind = perturb.METHODS[method][0]
  delta, info = perturb.generate_with_info(
    config,
    train["image"],
    train["label"],
    seed_key,
    method=method,
    num_classes=num_classes,
    workdir=mdir if kind == "surrogate" else None,
  )
  info = {**info, "generate_s": round(time.time() - t0, 2)}
  info.update(perturbation_stats(delta, train["label"], num_classes, config.eps, 0))
  os.makedirs(mdir, exist_ok=True)
  if jax.process_index() == 0:
    perturb.save(path, delta, np.arange(n), config.eps)
  workdir_lib.write_json(info_path, info)
  logging.info("%s: perturbations made (%s)", method, info)
  return delta, info


def run_seed(config, seed: int, sets: dict, num_classes: int, sdir: str) -> tuple[dict, dict]:
  """All methods x victims for one seed; returns ({method: {victim: cell}}, {method: info})."""
  seed_key = jax.random.PRNGKey(seed)
  cells, infos = {}, {}
  for method in config.methods:
    mdir = os.path.join(sdir, method)
    delta, infos[method] = protected_delta(
      config, method, sets["train"], num_classes, seed_key, mdir
    )
    cells[method] = {}
    for victim in config.victims:
      cdir = os.path.join(mdir, victim)
      cells[method][victim] = workdir_lib.cached_result(
        os.path.join(cdir, "cell.json"),
        functools.partial(
          evaluate.run_victim, config, victim, method, sets, delta, seed_key, num_classes, cdir
        ),
      )
    for victim in config.victims:
      cells[method].update(evaluate.derived_cells(victim, cells[method].get(victim, {})))
  return cells, infos


def columns(config) -> list[str]:
  """The table's columns: the victims, each followed by the columns derived from its run."""
  return evaluate.columns_of(config.victims)


def gate_check(config, per_seed: dict, columns=None) -> dict:
  """Each gated victim's clean-data accuracy per seed against its gate (`config.gates`).

  A gate is met when every seed's victim trained on the *clean* data reaches it. `verdict` is
  False when any gate is missed or could not be measured (no `clean` method or victim in the run):
  then no protection is judged against that victim. `columns`: only the gates these table
  columns need (`evaluate.GATE_OF`); None: every configured gate.
  """
  gates = {k: float(v) for k, v in (config.get("gates") or {}).items() if float(v) > 0}
  if columns is not None:
    needed = {evaluate.GATE_OF.get(c) for c in columns}
    gates = {k: v for k, v in gates.items() if k in needed}
  out: dict = {"gates": {}, "verdict": True}
  for victim, gate in gates.items():
    values = [
      cells["clean"][victim]["final"]
      for cells in per_seed.values()
      if victim in cells.get("clean", {})
    ]
    status = "not measured" if not values else ("met" if min(values) >= gate else "missed")
    out["gates"][victim] = {"gate": gate, "clean": values, "status": status}
    out["verdict"] &= status == "met"
  return out


def gate_lines(gates: dict, columns=None) -> list[str]:
  """One line per gate; then, when one is not met, which columns lose their verdicts.

  Args:
    gates: `gate_check`'s result.
    columns: the run's table columns; a missed or unmeasured gate withholds the verdicts of the
      columns that need it (`evaluate.GATE_OF`) only. None: of every column.
  """
  lines = []
  for victim, g in gates["gates"].items():
    vals = ", ".join(f"{100 * v:.2f}" for v in g["clean"]) or "-"
    gate = f"{100 * g['gate']:.0f}%"
    lines.append(f"Gate {victim}: clean accuracy [{vals}]% vs {gate}: {g['status']}.")
  if not gates["gates"] or gates["verdict"]:
    return lines
  if columns is None:
    lines.append("A gate is not met: no protection verdict from this run.")
    return lines
  unmet = {v for v, g in gates["gates"].items() if g["status"] != "met"}
  held = [c for c in columns if evaluate.GATE_OF.get(c) in unmet]
  kept = [c for c in columns if c not in held]
  lines.append(
    f"Gate {', '.join(sorted(unmet))} not met: no protection verdict for "
    f"{', '.join(held)}" + (f"; the columns {', '.join(kept)} keep theirs." if kept else ".")
  )
  return lines


def train_and_evaluate(config, workdir: str) -> dict:
  _check(config)
  t0 = time.time()
  sets = {"train": _load(config.data, config.data.train_split)}
  sets["test"] = _load(config.data, config.data.test_split)
  labels = [sets["train"]["label"], sets["test"]["label"]]
  if "datawise" in config.victims:
    sets["transfer_train"] = _load(config.transfer.data, config.transfer.data.train_split)
    sets["transfer_test"] = _load(config.transfer.data, config.transfer.data.test_split)
    labels += [sets["transfer_train"]["label"], sets["transfer_test"]["label"]]
  num_classes = _num_classes(config.data, *labels)
  check = data_check(sets["train"]["image"], config.eps)
  logging.info(
    "data: %d train, %d test, %d classes, images %s; %s",
    len(sets["train"]["label"]), len(sets["test"]["label"]), num_classes,
    sets["train"]["image"].shape[1:], check,
  )  # fmt: skip
  per_seed, infos = {}, {}
  for seed in config.seeds:
    ts = time.time()
    per_seed[seed], infos[seed] = run_seed(
      config, seed, sets, num_classes, os.path.join(workdir, f"seed_{seed}")
    )
    logging.info("seed %d done in %.1fs", seed, time.time() - ts)
  methods, victims = list(config.methods), columns(config)
  final = report.summarise(per_seed, methods, victims, "final")
  peak = report.summarise(per_seed, methods, victims, "peak")
  wall = time.time() - t0
  gates = gate_check(config, per_seed, victims)
  text = "\n".join(
    [
      *gate_lines(gates, victims),
      *([""] if gates["gates"] else []),
      f"Clean-test accuracy (%), final epoch, mean ± std over seeds {list(config.seeds)} "
      f"({num_classes} classes, chance {100 / num_classes:.1f}%):",
      "",
      report.table_markdown(final, methods, victims),
      "",
      "Peak clean-test accuracy over training (%):",
      "",
      report.table_markdown(peak, methods, victims),
      "",
      f"Wall time of train_and_evaluate: {wall:.0f}s on {jax.devices()[0].device_kind} "
      f"x{jax.device_count()}.",
    ]
  )
  workdir_lib.write_text(os.path.join(workdir, "table.md"), text + "\n")  # process 0, atomic
  print(text, flush=True)
  metrics: dict = {f"{v}/{m}": final[m][v][0] for m in methods for v in victims if v in final[m]}
  metrics["num_classes"] = num_classes
  metrics["chance"] = 1.0 / num_classes
  metrics["data_check"] = check
  metrics["final"] = {m: {v: list(c) for v, c in row.items()} for m, row in final.items()}
  metrics["peak"] = {m: {v: list(c) for v, c in row.items()} for m, row in peak.items()}
  metrics["generation"] = {str(s): i for s, i in infos.items()}
  metrics["gates"] = gates
  metrics["train_and_evaluate_s"] = round(wall, 1)
  return metrics
