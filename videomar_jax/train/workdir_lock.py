"""One training per workdir at a time.

Two trainings on one workdir would interleave their metrics and fight over Orbax's
temporary folders. The first takes an exclusive `flock` on `<workdir>/.train.lock` and
writes its host, pid and start time there; a second one fails at once naming them. The
kernel drops the lock when the process ends, however it ends (a SIGKILL leaves no stale
lock). Only process 0 of a multi-process run takes it: its processes share the workdir.
"""

import fcntl
import os
import socket
import time

from videomar_jax.errors import UserError

LOCK_NAME = ".train.lock"


class WorkdirBusyError(UserError):
  """Another training holds the workdir."""


class WorkdirLock:
  """Context manager holding the workdir's lock."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_NAME)
    self._file = None

  def __enter__(self):
    handle = open(self.path, "a+")  # pylint: disable=consider-using-with
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      handle.seek(0)
      holder = handle.read().strip() or "another process"
      handle.close()
      raise WorkdirBusyError(
          f"{os.path.dirname(self.path)} is in use by another training ({holder}). Wait for "
          "it to finish or stop it, or train in another --workdir.") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
    handle.flush()
    self._file = handle
    return self

  def __exit__(self, *exc):
    if self._file is not None:
      self._file.seek(0)
      self._file.truncate()
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None
