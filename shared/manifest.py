"""The run manifest: which config a workdir's checkpoints and sub-run results belong to.

`config.json` is the human-readable record; it is not the only guard. While `shared.app` runs a
config (`active(fingerprint)`), every checkpoint folder gets a `run_manifest.json` with the
config's hash when first opened (`check_folder`, from `shared.checkpoint.Checkpointer`), and every
sub-run result written by `shared.workdir.cached_result` carries the hash too (`stamp` /
`unstamp`). A later run under a different config is refused at the first of them it meets, and
`check_workdir` looks at every manifest of a workdir before anything is written, so a run with
`config.json` deleted and another config is refused without overwriting the record.

Outside `shared.app` (notebooks, tests calling `train_and_evaluate`) no fingerprint is active and
nothing is checked or written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

from shared.errors import CheckpointError

MANIFEST = "run_manifest.json"
HASH_KEY = "config_hash"
_ACTIVE: list[str] = []


def fingerprint(config_dict: Mapping[str, Any]) -> str:
  """sha256 (16 hex digits) of the config as canonical JSON."""
  text = json.dumps(config_dict, sort_keys=True, separators=(",", ":"), default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def current() -> str | None:
  """The fingerprint of the config being run, None outside `active`."""
  return _ACTIVE[-1] if _ACTIVE else None


@contextlib.contextmanager
def active(config_hash: str) -> Iterator[None]:
  """Within the block, checkpoints and sub-run results are tied to `config_hash`."""
  _ACTIVE.append(config_hash)
  try:
    yield
  finally:
    _ACTIVE.pop()


class ConfigMismatch(CheckpointError):
  """A checkpoint folder or sub-run result that belongs to another config."""


def _refusal(where: str, theirs: str, ours: str) -> ConfigMismatch:
  return ConfigMismatch(
    f"{where} was written by a run with another config (config hash {theirs}, this run's is "
    f"{ours}); re-run with the original config and flags to resume it, or use a fresh --workdir"
  )


def _read_manifest(path: str) -> dict:
  try:
    with open(path) as f:
      out = json.load(f)
    if not isinstance(out, dict) or not isinstance(out.get(HASH_KEY), str):
      raise ValueError("no config_hash")
    return out
  except (OSError, ValueError, UnicodeDecodeError) as e:
    raise CheckpointError(
      f"{path} is corrupt ({e}); restore it, or use a fresh --workdir (it ties the checkpoints "
      "beside it to their config)"
    ) from None


def check_folder(directory: str, *, write: bool = True) -> None:
  """Refuses `directory` when its manifest names another config; writes one when it has none.

  Raises:
    CheckpointError: the folder belongs to another config, or its manifest is corrupt.
  """
  ours = current()
  if ours is None:
    return
  path = os.path.join(directory, MANIFEST)
  if os.path.exists(path):
    theirs = _read_manifest(path)[HASH_KEY]
    if theirs != ours:
      raise _refusal(directory, theirs, ours)
    return
  if write:
    from shared import workdir  # noqa: PLC0415  (workdir imports this module)

    workdir.write_json(path, {HASH_KEY: ours})


def check_workdir(workdir: str, config_hash: str) -> None:
  """Every manifest under `workdir` must name `config_hash` (before the run writes anything)."""
  for root, dirs, files in os.walk(workdir):
    dirs[:] = [d for d in dirs if not d.isdigit()]  # orbax step folders hold no manifest
    if MANIFEST in files:
      path = os.path.join(root, MANIFEST)
      theirs = _read_manifest(path)[HASH_KEY]
      if theirs != config_hash:
        raise _refusal(root, theirs, config_hash)


def stamp(result: Mapping[str, Any]) -> dict:
  """`result` with the active fingerprint added (unchanged outside `active`)."""
  ours = current()
  return dict(result) if ours is None else {**result, HASH_KEY: ours}


def unstamp(path: str, result: Any) -> Any:
  """`result` without its fingerprint; refused when it names another config than the active one.

  Raises:
    CheckpointError: the result at `path` was computed under another config.
  """
  if not isinstance(result, dict) or HASH_KEY not in result:
    return result
  result = dict(result)
  theirs = result.pop(HASH_KEY)
  ours = current()
  if ours is not None and theirs != ours:
    raise _refusal(path, theirs, ours)
  return result
