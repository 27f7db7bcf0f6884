"""One trainer per workdir: an exclusive lock on `<workdir>/.lock` (`filelock`, an `flock` on Unix).

The kernel drops the lock when its process ends, however it ends (`kill -9`
included), so a crashed run never leaves a stale lock behind. The file holds
who took it last (pid, host, start time, command line), written by the holder
once it has the lock, which is what a second trainer's refusal names; it stays
in the workdir. Eval and translate take no lock: they read a snapshot of the
checkpoints (`train.checkpoint_files`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator

import filelock
import jax

from train.errors import UserError

__all__ = ["LOCK_FILE", "WorkdirLock", "held"]

_log = logging.getLogger(__name__)
LOCK_FILE = ".lock"
# A file system that has no `flock` (some network mounts): training goes on unlocked, with a warning.
_NO_FLOCK = frozenset({errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP})


def _write_owner(fd: int) -> None:
    """Writes who holds the lock into the lock file (filelock's `on_acquired`: the lock is held)."""
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    owner = f"pid {os.getpid()} on host {socket.gethostname()}, started {started}: {' '.join(sys.argv)}"
    os.ftruncate(fd, 0)
    os.pwrite(fd, (owner[:2000] + "\n").encode(), 0)


class WorkdirLock:
    """Context manager: holds the lock of `workdir` (created if needed) or raises `UserError`."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_FILE)
        # No waiting, no soft-lock fallback (its marker file would outlive a killed trainer);
        # `on_acquired` writes the holder's details through the locked descriptor.
        self._lock = filelock.FileLock(self.path, blocking=False, thread_local=False, fallback_to_soft=False,
                                       on_acquired=_write_owner)
        self._created = False

    def __enter__(self) -> WorkdirLock:
        self._created = not os.path.exists(self.workdir)
        os.makedirs(self.workdir, exist_ok=True)
        try:
            self._lock.acquire()
        except filelock.Timeout:
            raise UserError(f"workdir {self.workdir!r} is in use by another trainer ({self._owner()}); wait for "
                            "it to finish or stop it, or use another --workdir") from None
        except OSError as e:
            if e.errno not in _NO_FLOCK:
                raise
            _log.warning("Could not lock %s (%s); make sure no other trainer uses this workdir",
                         self.path, e.strerror)
        return self

    def _owner(self) -> str:
        try:
            with open(self.path, "rb") as f:
                owner = f.read(4096).decode("utf-8", "replace").strip()
        except OSError:
            owner = ""
        return owner or "it has not written its details yet"

    def __exit__(self, *exc) -> None:
        if not self._lock.is_locked:
            return
        if self._created and os.listdir(self.workdir) == [LOCK_FILE]:  # refused before writing: leave no trace
            os.unlink(self.path)  # while still locked: no other trainer can hold this file
            os.rmdir(self.workdir)
        self._lock.release()


@contextlib.contextmanager
def held(workdir: str) -> Iterator[None]:
    """Holds the lock of `workdir` on process 0 of a job (the others write no workdir files).

    The trainer checks the config and the workdir first (`train.build`, `train.saved_config`), so
    that a config that cannot train, or a workdir that holds another model, is
    refused with nothing written -- not even the lock file.
    """
    if jax.process_index() != 0:
        yield
        return
    with WorkdirLock(workdir):
        yield
