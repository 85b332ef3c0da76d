"""Preemption: on SIGTERM every process saves the same step, then stops.

An orbax save of a sharded state is collective, so processes that stop at different steps hang
(one waits in the save, the others in the next step's collectives). `PreemptionWatch` makes them
agree:

- Several processes (`jax.distributed.initialize`, preemption service on, JAX's default): JAX's
  preemption sync manager catches SIGTERM in C++ on whichever process gets it, the coordination
  service tells the others, and orbax's `multihost.reached_preemption(step)` (a wrapper of
  `multihost_utils.reached_preemption_sync_point`) turns True on every process at the same step:
  one past the largest step any process had reported when the notice came. So every process asks
  on every step, with the step itself (orbax's own saves report the checkpoint's step to the same
  counter, so a count of our own would disagree with theirs), and no Python SIGTERM handler is
  installed: it would replace the sync manager's.
- Several processes with `jax_enable_preemption_service` off: there is no sync manager, so a
  Python handler sets a local flag and the flags are OR-ed through one tiny collective
  (`process_allgather`) at the loop's regular boundaries, which fall on the same steps on every
  process, so all of them stop at the same boundary.
- One process: the local flag is the agreement; the loop stops at the next step.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np


class Preempted(Exception):  # noqa: N818  (a signal, not an error: caught by shared.app)
  """Raised after a SIGTERM once the state is checkpointed; the app exits with code 143."""


class PreemptionWatch:
  """Context manager; `reached(step, boundary)`, called on every step by every process, is True
  on all processes at the same step once any of them got SIGTERM."""

  def __init__(self):
    self._multi = jax.process_count() > 1
    self._synced = self._multi and bool(jax.config.jax_enable_preemption_service)
    self._flag = False
    self._previous = None

  def __enter__(self) -> PreemptionWatch:
    if not self._synced and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    return self

  def _handler(self, signum, frame):
    del signum, frame
    self._flag = True

  def reached(self, step: int, boundary: bool) -> bool:
    """Whether to save and stop after `step`.

    Args:
      step: the step just done; the same on every process.
      boundary: whether `step` is one of the loop's regular boundaries (log, checkpoint, hook, last
        step), which every process computes alike; the fallback's collective runs only there.
    """
    if self._synced:
      import orbax.checkpoint as ocp  # deferred: heavy import, and only multi-process runs need it

      return ocp.multihost.reached_preemption(int(step))
    if not self._multi:
      return self._flag
    if not boundary:
      return False
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.bool_(self._flag))))

  def __exit__(self, *exc) -> bool:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False
