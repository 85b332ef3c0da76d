"""What a run keeps in its workdir, written the same way by every method.

  write_json(path, payload)          atomic, numpy-safe, on process 0 (parents created)
  read_json(path)                    the dict, None when absent; a corrupt file is a UserError
  cached_result(path, compute)       a resumable sub-run result: read it, or compute and write it
                                     (tied to the run's config: `shared.manifest`)
  read_result(path)                  such a result, or None
  save_params(path, params) / load_params(path)    a params pytree as a flat .npz ('a/b/kernel')
  save_arrays(path, arrays) / load_arrays(path)    name -> array as .npz (scores, tokens, caches)
  save_npz(path, arrays)             plain .npz, what np.savez writes (format-fixed caches, exports)
  save_array(path, array) / load_array(path)       one array as .npy (figures' samples)
  write_text(path, text)             a table or summary (markdown), on process 0
  read_state_dict(path)              name -> numpy array from .npz, .safetensors or a PyTorch file

Every write goes to a temporary name in the same folder and is renamed into place, so a kill
mid-write leaves the previous file (or none), never half of one. Every read of a run's own file
that fails (truncated, foreign) is a CheckpointError naming the file and how to recover.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from shared import manifest
from shared.errors import CheckpointError, DataError

PyTree = Any
ARRAYS_HASH_KEY = "__config_hash__"  # in .npz files written by save_arrays under shared.app


def _is_writer() -> bool:
  import jax  # noqa: PLC0415  (importing this module stays light)

  return jax.process_index() == 0


def _atomic(path: str, write: Callable[[Any], None], mode: str = "w") -> None:
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, mode) as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _json_default(o):
  if hasattr(o, "tolist"):  # numpy scalars and arrays, jax arrays
    return o.tolist()
  return str(o)


def write_json(path: str, payload: Mapping[str, Any], *, every_process: bool = False) -> None:
  """Writes `payload` as indented JSON, atomically; only process 0 writes unless told otherwise."""
  if not every_process and not _is_writer():
    return

  def write(f):
    json.dump(payload, f, indent=2, default=_json_default)
    f.write("\n")

  _atomic(path, write)


def read_json(path: str) -> Any | None:
  """The parsed file, or None when it does not exist.

  Raises:
    CheckpointError: the file exists but is not valid JSON (truncated, foreign), naming it and
      how to recover.
  """
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(
      f"{path} is corrupt ({e}); delete it and re-run the same command to recompute it"
    ) from None
  except OSError as e:
    raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None


def read_result(path: str) -> Any | None:
  """A result `cached_result` (or `write_result`) wrote, None when absent.

  Raises:
    CheckpointError: corrupt, or computed under another config than the one being run.
  """
  return manifest.unstamp(path, read_json(path))


def write_result(path: str, result: Mapping[str, Any]) -> None:
  """Writes a sub-run result tied to the run's config (see `shared.manifest`)."""
  write_json(path, manifest.stamp(result))


def cached_result(path: str, compute: Callable[[], Mapping[str, Any]]) -> Any:
  """A resumable sub-run result: the JSON at `path` if there, else `compute()`, written there.

  Every process computes (collective steps need all of them); process 0 writes. Under
  `shared.app` the file carries the config's hash, and one from another config is refused.
  """
  cached = read_result(path)
  if cached is not None:
    return cached
  result = compute()
  write_result(path, result)
  return result


def read_run_results(run_dir: str, method: str, needs: tuple[str, ...] = ()) -> dict:
  """`results.json` of a finished `python -m <method>` run, for the report commands.

  Args:
    run_dir: the run's --workdir.
    method: the package that must have written it.
    needs: keys its `metrics` must hold.

  Raises:
    DataError: no such folder, no results.json (an unfinished run), another method's run, or one
      without the needed metrics; CheckpointError: a corrupt results.json.
  """
  if not os.path.isdir(run_dir):
    raise DataError(f"{run_dir} is not a folder (expected a --workdir of `python -m {method}`)")
  path = os.path.join(run_dir, "results.json")
  results = read_json(path)
  if results is None:
    raise DataError(
      f"{run_dir} has no results.json: not a finished run; finish it with "
      f"`python -m {method} --config ... --workdir {run_dir}` (the same flags resume it)"
    )
  if not isinstance(results, dict):
    raise DataError(f"{path} is not a run's results (a JSON {type(results).__name__})")
  found = results.get("method", method)  # hand-made results may not name it
  if found != method:
    raise DataError(f"{path} is from a {found!r} run, not `python -m {method}`")
  metrics = results.get("metrics")
  missing = [k for k in needs if not isinstance(metrics, dict) or k not in metrics]
  if missing:
    raise DataError(f"{path} lacks metrics {missing} (written by an older version?); re-run it")
  return results


def write_text(path: str, text: str, *, every_process: bool = False) -> None:
  """Writes `text` atomically (process 0 unless told otherwise)."""
  if every_process or _is_writer():
    _atomic(path, lambda f: f.write(text))


def save_figure(fig, path: str, dpi: int = 100) -> str:
  """A matplotlib figure as PNG, atomically (a reader never sees half a file); closes it."""
  import matplotlib.pyplot as plt  # noqa: PLC0415  (importing this module stays light)

  try:
    _atomic(path, lambda f: fig.savefig(f, format="png", dpi=dpi), mode="wb")
  finally:
    plt.close(fig)
  return path


def _write_npz(path: str, arrays: Mapping[str, Any]) -> None:
  """`np.savez(path, **arrays)`'s file, written through a temporary name and renamed into place."""
  host = {k: np.asarray(v) for k, v in arrays.items()}
  _atomic(path, lambda f: np.savez(f, **host), mode="wb")


def save_npz(path: str, arrays: Mapping[str, Any], *, every_process: bool = False) -> str:
  """name -> array as the uncompressed .npz `np.savez(path, **arrays)` writes, atomically.

  Nothing is added (no config hash, unlike `save_arrays`), so files whose format readers rely on
  (feature extractors, statistics, masks, samples) keep it. As `np.savez`, '.npz' is appended to
  a path without it. Process 0 writes unless told otherwise.

  Returns:
    The path written.
  """
  path = os.fspath(path)
  if not path.endswith(".npz"):
    path += ".npz"
  if every_process or _is_writer():
    _write_npz(path, arrays)
  return path


def save_arrays(path: str, arrays: Mapping[str, Any], *, every_process: bool = False) -> None:
  """name -> array as an uncompressed .npz, atomically (process 0 unless told otherwise).

  Under `shared.app` the file also holds the run's config hash (`load_arrays` checks and drops it).
  """
  if every_process or _is_writer():
    host = dict(arrays)
    if manifest.current() is not None:
      host[ARRAYS_HASH_KEY] = np.asarray(manifest.current())
    _write_npz(path, host)


def save_array(path: str, array: Any) -> None:
  """One array as .npy, atomically, on process 0."""
  if _is_writer():
    _atomic(path, lambda f: np.save(f, np.asarray(array)), mode="wb")


def _recovery(path: str, recover: str | None) -> str:
  return recover or f"delete {path} and re-run the same command to recompute it"


def load_arrays(path: str, *, recover: str | None = None) -> dict[str, np.ndarray]:
  """The arrays `save_arrays` wrote.

  Args:
    path: the .npz.
    recover: what to tell the user to do when the file is missing or corrupt.

  Raises:
    CheckpointError: missing, truncated or not an .npz, naming the file and `recover`.
  """
  if not os.path.isfile(path):
    raise CheckpointError(f"{path} is missing; {_recovery(path, recover)}")
  try:
    with np.load(path, allow_pickle=False) as f:
      out = {k: f[k] for k in f.files}
  except Exception as e:  # ValueError, OSError, EOFError, zipfile.BadZipFile for truncated files
    raise CheckpointError(
      f"{path} is corrupt ({type(e).__name__}: {e}); {_recovery(path, recover)}"
    ) from None
  if ARRAYS_HASH_KEY in out:
    stamped = manifest.unstamp(path, {manifest.HASH_KEY: str(out.pop(ARRAYS_HASH_KEY))})
    del stamped
  return out


def load_array(path: str, *, recover: str | None = None) -> np.ndarray:
  """The array `save_array` wrote (see `load_arrays` for the errors)."""
  if not os.path.isfile(path):
    raise CheckpointError(f"{path} is missing; {_recovery(path, recover)}")
  try:
    return np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise CheckpointError(f"{path} is corrupt ({e}); {_recovery(path, recover)}") from None


def save_params(path: str, params: PyTree, dtype=np.float32) -> None:
  """A params pytree as a flat .npz, keys 'a/b/kernel', values `dtype` (process 0, atomic)."""
  import jax  # noqa: PLC0415
  from flax import traverse_util  # noqa: PLC0415

  if not _is_writer():
    return
  flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
  _write_npz(path, {k: np.asarray(v, dtype) for k, v in flat.items()})


def load_params(path: str, *, recover: str | None = None) -> PyTree:
  """The pytree `save_params` wrote (numpy leaves).

  Raises:
    CheckpointError: missing, truncated or not an .npz, naming the file and `recover`.
  """
  from flax import traverse_util  # noqa: PLC0415

  flat = load_arrays(path, recover=recover)
  return traverse_util.unflatten_dict(flat, sep="/")


TORCH_EXTENSIONS = (".pth", ".pt", ".bin", ".ckpt")


def read_state_dict(path: str, what: str = "weights") -> dict[str, np.ndarray]:
  """name -> numpy array from a .npz, a .safetensors or a PyTorch state dict file.

  PyTorch files are read with `torch.load(..., weights_only=True)` (no pickled code runs); a
  {'state_dict': ...} wrapper is unwrapped.

  Raises:
    DataError: a missing file, an unknown format, a file that cannot be read, torch missing.
  """
  if not os.path.isfile(path):
    raise DataError(f"{what} file not found: {path} (nothing is downloaded)")
  ext = os.path.splitext(path)[1].lower()
  if ext == ".npz":
    try:
      with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
    except (ValueError, OSError, EOFError) as e:
      raise DataError(f"cannot read {what} {path} as .npz: {e}") from None
  if ext == ".safetensors":
    from safetensors import SafetensorError  # noqa: PLC0415
    from safetensors.numpy import load_file  # noqa: PLC0415

    try:
      return dict(load_file(path))
    except (SafetensorError, OSError) as e:
      raise DataError(f"cannot read {what} {path} as .safetensors: {e}") from None
  if ext in TORCH_EXTENSIONS:
    try:
      import torch  # noqa: PLC0415  (optional: the `torch` extra)
    except ImportError:
      raise DataError(
        f"reading {path} needs PyTorch (the project's `torch` extra); or convert it once "
        "where torch is installed, with weights_only=True: safetensors.torch.save_file("
        "torch.load(path, weights_only=True), 'weights.safetensors')"
      ) from None
    try:
      state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt or foreign files
      raise DataError(f"cannot read {what} {path}: {type(e).__name__}: {e}") from None
    if isinstance(state, Mapping) and "state_dict" in state:
      state = state["state_dict"]
    if hasattr(state, "state_dict"):
      state = state.state_dict()
    return {k: v.detach().float().cpu().numpy() for k, v in state.items() if hasattr(v, "detach")}
  raise DataError(f"{path}: unknown {what} format {ext!r}; use .npz, .safetensors or .pth")
