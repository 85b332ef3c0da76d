"""Checkpoints: orbax's CheckpointManager with the run's conventions (see `Checkpointer`)."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax

from shared import manifest
from shared.errors import CheckpointError

PyTree = Any


class Checkpointer:
  """Orbax CheckpointManager with the run's conventions.

  - keeps the last `keep` checkpoints, saves every `every` steps (and whenever `save` is forced),
  - `restore_or(state)` resumes from the latest step, or returns `state` untouched when none,
  - a checkpoint that fails to restore raises CheckpointError naming it; nothing is deleted, so the
    older checkpoints stay for the user to fall back on (`--config.restore_step` style),
  - under `shared.app`, the folder holds a `run_manifest.json` with the run's config hash, and a
    folder written under another config is refused when opened (`shared.manifest`),
  - `save(step, state, data_state=...)` also keeps the data iterator's JSON state in the same step
    (item "data", one file per process, through grain's checkpoint handler); `restore_data(step)`
    gives it back. The state is item "default", where orbax puts a single-item checkpoint, so
    checkpoints written before the data item existed restore unchanged.
  """

  def __init__(self, directory: str, *, keep: int = 2, every: int = 500):
    import orbax.checkpoint as ocp  # deferred: heavy import

    self._ocp = ocp
    self.directory = os.path.abspath(directory)
    manifest.check_folder(self.directory)
    self.every = max(int(every), 1)
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max(int(keep), 1), create=True, enable_async_checkpointing=False
    )
    # Named items lock the manager in multi-item mode for every step, old layout or new.
    self._mngr = ocp.CheckpointManager(
      self.directory, options=options, item_names=(_STATE_ITEM, _DATA_ITEM)
    )

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def should_save(self, step: int) -> bool:
    return step % self.every == 0

  def save(self, step: int, state: PyTree, data_state: Any = None) -> None:
    """Saves `state` at `step`, with this process's data iterator state when given (JSON)."""
    items = {_STATE_ITEM: self._ocp.args.StandardSave(state)}
    if data_state is not None:
      import grain.python as grain  # deferred: only runs that stream through grain save one

      items[_DATA_ITEM] = grain.PyGrainCheckpointSave(_JsonIteratorState(data_state))
    self._mngr.save(int(step), args=self._ocp.args.Composite(**items), force=True)
    self._mngr.wait_until_finished()

  def restore(self, step: int, target: PyTree) -> PyTree:
    """Restores `step` into the structure, dtypes and shardings of `target`."""
    abstract = jax.tree.map(self._ocp.utils.to_shape_dtype_struct, target)
    try:
      args = self._ocp.args.Composite(**{_STATE_ITEM: self._ocp.args.StandardRestore(abstract)})
      return self._mngr.restore(int(step), args=args)[_STATE_ITEM]
    except Exception as e:  # orbax raises many types for truncated / foreign files
      older = [s for s in self.all_steps() if s < step]
      hint = f"; older checkpoints kept: steps {older}" if older else ""
      first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
      raise CheckpointError(
        f"checkpoint {self.directory}/{step} cannot be restored ({first}){hint}. "
        "Move it away to resume from an older one, or use a fresh --workdir."
      ) from None

  def restore_data(self, step: int) -> Any | None:
    """This process's data iterator state saved at `step`; None when the step has none for it."""
    if not os.path.isdir(os.path.join(self.directory, str(int(step)), _DATA_ITEM)):
      return None
    import grain.python as grain

    holder = _JsonIteratorState()
    try:
      args = self._ocp.args.Composite(**{_DATA_ITEM: grain.PyGrainCheckpointRestore(holder)})
      self._mngr.restore(int(step), args=args)
    except Exception as e:  # no file for this process (saved by another process count), bad JSON
      first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
      logging.warning(
        "checkpoint %s/%d: no data iterator state restored (%s)", self.directory, step, first
      )
      return None
    return holder.state

  def restore_or(self, state: PyTree) -> tuple[PyTree, int | None]:
    """(restored latest, its step) or (state, None) when there is no checkpoint."""
    step = self.latest_step()
    if step is None:
      return state, None
    return self.restore(step, state), step

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


_STATE_ITEM = "default"  # orbax's name for a single-item checkpoint: the layout before `data`
_DATA_ITEM = "data"


class _JsonIteratorState:
  """Holds a JSON state in the shape grain's checkpoint handler saves and restores (bytes)."""

  def __init__(self, state: Any = None):
    self.state = state

  def get_state(self) -> bytes:
    return json.dumps(self.state).encode()

  def set_state(self, state: bytes) -> None:
    self.state = json.loads(state.decode())

  def start_prefetch(self) -> None:  # grain's handler calls it after set_state
    pass
