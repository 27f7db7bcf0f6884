"""One trainer per workdir: an exclusive `flock` on `<workdir>/.lock`.

The kernel drops the lock when its process ends, however it ends (`kill -9`
included), so a crashed run never leaves a stale lock behind. The file holds
who took it last (pid, host, start time, command line), which is what a second
trainer's refusal names; it stays in the workdir. Eval and translate take no
lock: they read a snapshot of the checkpoints (`train.checkpoint_files`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator

import jax

from train.errors import UserError

__all__ = ["LOCK_FILE", "WorkdirLock", "held"]

_log = logging.getLogger(__name__)
LOCK_FILE = ".lock"


class WorkdirLock:
    """Context manager: holds the lock of `workdir` (created if needed) or raises `UserError`."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_FILE)
        self._fd: int | None = None
        self._created = False

    def __enter__(self) -> WorkdirLock:
        self._created = not os.path.exists(self.workdir)
        os.makedirs(self.workdir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            owner = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):  # a file system without flock
                _log.warning("Could not lock %s (%s); make sure no other trainer uses this workdir",
                             self.path, e.strerror)
                return self
            raise UserError(f"workdir {self.workdir!r} is in use by another trainer "
                            f"({owner or 'it has not written its details yet'}); wait for it to finish "
                            "or stop it, or use another --workdir") from None
        started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        owner = f"pid {os.getpid()} on host {socket.gethostname()}, started {started}: {' '.join(sys.argv)}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, (owner[:2000] + "\n").encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is None:
            return
        if self._created and os.listdir(self.workdir) == [LOCK_FILE]:  # refused before writing: leave no trace
            os.unlink(self.path)
            os.rmdir(self.workdir)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


@contextlib.contextmanager
def held(workdir: str) -> Iterator[None]:
    """Holds the lock of `workdir` on process 0 of a job (the others write no workdir files).

    The trainer checks the config and the workdir first (`train.run_config`), so
    that a config that cannot train, or a workdir that holds another model, is
    refused with nothing written -- not even the lock file.
    """
    if jax.process_index() != 0:
        yield
        return
    with WorkdirLock(workdir):
        yield
