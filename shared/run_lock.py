"""One process per workdir: `<workdir>/run.lock` holds the owner's host, pid and start time.

    with WorkdirLock(workdir):
      ...  # a second `python -m <pkg>` on the same workdir ends with one `error:` line

The lock file is created with O_EXCL. One left behind by a process that is gone (SIGKILL, a
crashed machine) is stale: on the same host, a pid that no longer runs, or runs with another
start time (a reused pid), frees it and the new run takes it over. A lock from another host
cannot be checked from here; the message names it and says how to free it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile

from shared.errors import ConfigError

LOCK = "run.lock"


def _start_time(pid: int) -> str | None:
  """The process's start time in clock ticks since boot (Linux), None where unknown."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      stat = f.read()
  except OSError:
    return None
  return stat.rsplit(")", 1)[-1].split()[19]  # field 22, counted after the command name


def _alive(pid: int, start: str | None) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  now = _start_time(pid)
  return start is None or now is None or now == start


def _owner() -> dict:
  return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid())}


class WorkdirLock:
  """Holds `<workdir>/run.lock` for the lifetime of a run (a context manager)."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK)
    self._held = False

  def _create(self) -> bool:
    """Links a complete lock file into place: atomic, and never seen half written."""
    fd, tmp = tempfile.mkstemp(dir=self.workdir, prefix=f".{LOCK}.", suffix=".tmp")
    try:
      with os.fdopen(fd, "w") as f:
        json.dump(_owner(), f)
      try:
        os.link(tmp, self.path)
      except FileExistsError:
        return False
      except OSError:  # a file system without hard links: exclusive create instead
        return self._create_exclusive()
    finally:
      os.remove(tmp)
    return True

  def _create_exclusive(self) -> bool:
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      json.dump(_owner(), f)
    return True

  def _holder(self) -> dict | None:
    try:
      with open(self.path) as f:
        return json.load(f)
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}  # not ours to read (foreign content): no owner to wait for

  def acquire(self) -> None:
    """Takes the lock, replacing a stale one.

    Raises:
      ConfigError: another live process (or one on another host) holds it.
    """
    for _ in range(3):  # a racing process may create or free it between the steps
      if self._create():
        self._held = True
        return
      holder = self._holder()
      if holder is None:
        continue
      pid, host = holder.get("pid"), holder.get("host")
      here = host == socket.gethostname()
      if isinstance(pid, int) and here and _alive(pid, holder.get("start")):
        raise ConfigError(
          f"{self.workdir} is in use by process {pid} (lock {self.path}); wait for it to finish "
          "or stop it, or use another --workdir"
        )
      if isinstance(pid, int) and not here:
        raise ConfigError(
          f"{self.workdir} is locked by process {pid} on {host} ({self.path}); if that run is "
          "gone, delete the lock file and re-run"
        )
      logging.warning("removing the stale lock %s (%s)", self.path, holder or "unreadable")
      with contextlib.suppress(FileNotFoundError):
        os.remove(self.path)
    raise ConfigError(f"could not take the lock {self.path}; another process keeps taking it")

  def release(self) -> None:
    if self._held:
      self._held = False
      holder = self._holder()
      if holder and holder.get("pid") == os.getpid():
        with contextlib.suppress(FileNotFoundError):
          os.remove(self.path)

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()
