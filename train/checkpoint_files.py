"""A checkpoint's files on disk: integrity checks, damaged ones set aside, snapshots for readers.

Orbax trusts what it reads: a truncated array file or a garbage metadata file
surfaces as a tensorstore or JSON traceback in the middle of a restore.
`check_step` reads what a restore would read first -- every JSON file parsed,
every array chunk read through tensorstore's OCDBT key-value store (plain
futures, no asyncio) -- and names the first file that fails. `state_differences`
compares the arrays Orbax's metadata lists with those the code expects.

Layout of `<workdir>/checkpoints/`:

    <step>/              a complete checkpoint (Orbax renames it into place when done)
    damaged-<step>/      a damaged checkpoint that a resumed run set aside (never deleted)
    .rotated/<step>/     rotated out by Orbax (one atomic rename); the trainer deletes it
                         before its next save

Because a step directory is only ever renamed whole (in, out of rotation, aside),
a reader that hard-links a step's files sees either all of them or a missing
path. `Snapshot` links every complete step into `<workdir>/.snapshots/<pid>-<host>-*`
so that eval and translate restore from files a running trainer cannot take away.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from typing import Any

import jax
import orbax.checkpoint as ocp
import tensorstore as ts
from etils import epath

from train.errors import UserError, one_line

__all__ = ["DAMAGED_PREFIX", "ROTATED_DIR", "DamagedCheckpointError", "Snapshot", "check_step",
           "move_aside", "purge_rotated", "state_differences", "step_dirs", "unreadable"]

_log = logging.getLogger(__name__)

DAMAGED_PREFIX = "damaged-"
ROTATED_DIR = ".rotated"
SNAPSHOT_DIR = ".snapshots"
_NOT_JSON = ("commit_success.txt", "manifest.ocdbt")  # every other metadata file is JSON
_READS_IN_FLIGHT = 64  # array chunks read at once by `check_step`


class DamagedCheckpointError(UserError):
    """A checkpoint file that cannot be read: names the step and the file."""

    def __init__(self, step: int, path: str, reason: str):
        self.step, self.path, self.reason = step, path, reason
        super().__init__(f"checkpoint {step} is damaged: {path}: {reason}")


def step_dirs(directory: str) -> list[int]:
    """Steps of the complete checkpoints in `directory`, ascending."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def _reason(error: BaseException) -> str:
    if isinstance(error, (UnicodeDecodeError, json.JSONDecodeError)):
        return f"not valid JSON ({error})"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return one_line(error) or type(error).__name__


def _tensorstore_reason(error: BaseException) -> tuple[str | None, str]:
    """(file, reason) from a tensorstore error ('... local file "<path>": <reason> [tensorstore_spec=...]')."""
    message = str(error).split(" [tensorstore_spec")[0]
    files = re.findall(r'local file "([^"]+)"', message)
    if not files:
        return None, one_line(message)
    return files[-1], one_line(message.rsplit(f'"{files[-1]}"', 1)[1].lstrip(": ")) or message


def _metadata_files(root: str) -> list[str]:
    """The JSON files of a step directory (array data under `d/` and OCDBT manifests excluded)."""
    out = []
    for parent, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "d" and not d.startswith("ocdbt.process_"))
        out += [os.path.join(parent, f) for f in sorted(files) if f not in _NOT_JSON]
    return out


def check_step(directory: str, step: int, items: tuple[str, ...] = ("state", "config"), *,
               arrays: bool = True) -> None:
    """Reads checkpoint `step` as a restore would; raises `DamagedCheckpointError` at the first bad file.

    Args:
      directory: the checkpoints directory.
      step: the step to check.
      items: item directories that must be present ("state", "config", "data").
      arrays: also read every array chunk of `state` (the costly part: one read of the checkpoint).
    """
    root = os.path.join(directory, str(step))

    def damaged(path: str, reason: str) -> DamagedCheckpointError:
        return DamagedCheckpointError(step, os.path.relpath(path, directory), reason)

    for path in [root] + [os.path.join(root, item) for item in items]:
        if not os.path.isdir(path):
            raise damaged(path, "missing")
    for path in _metadata_files(root):
        try:
            with open(path, "rb") as f:
                json.loads(f.read())
        except (OSError, ValueError) as e:
            raise damaged(path, _reason(e)) from None
    if arrays and "state" in items:
        state = os.path.join(root, "state")
        if not os.path.isfile(os.path.join(state, "manifest.ocdbt")):
            raise damaged(os.path.join(state, "manifest.ocdbt"), "missing")
        try:
            _read_every_chunk(state)
        except ValueError as e:  # tensorstore reports I/O and decoding errors as ValueError
            path, reason = _tensorstore_reason(e)
            raise damaged(path or state, reason) from None


def unreadable(directory: str, steps: list[int]) -> list[DamagedCheckpointError]:
    """The steps whose metadata cannot be read (Orbax's manager stops on a garbage metrics file), as errors."""
    damaged = []
    for step in steps:
        try:
            check_step(directory, step, (), arrays=False)
        except DamagedCheckpointError as e:
            damaged.append(e)
    return damaged


def _read_every_chunk(state_dir: str) -> None:
    store = ts.KvStore.open({"driver": "ocdbt", "base": {"driver": "file", "path": state_dir + "/"}}).result()
    keys = store.list().result()
    for start in range(0, len(keys), _READS_IN_FLIGHT):
        reads = [(key, store.read(key)) for key in keys[start:start + _READS_IN_FLIGHT]]
        for key, read in reads:
            if read.result().state != "value":
                raise ValueError(f'local file "{os.path.join(state_dir, key.decode())}": missing')


def _arrays(tree: Any) -> dict[str, tuple[tuple[int, ...], Any]]:
    """{"params/decoder/kernel": (shape, dtype)} for the array leaves of `tree` (its "state/" level dropped)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        out["/".join(names[1:] if names[:1] == ["state"] else names)] = (tuple(leaf.shape), leaf.dtype)
    return out


def state_differences(directory: str, step: int, item: str, target: Any) -> list[str]:
    """How the arrays of `item` in checkpoint `step` differ from `target` (abstract arrays), per path.

    Missing and extra arrays and other shapes are differences, the parameters' first; other
    dtypes are listed only next to those (a restore casts them).
    """
    saved = _arrays(ocp.StandardCheckpointHandler().metadata(epath.Path(directory) / str(step) / item).tree)
    wanted = _arrays(target)
    out, dtypes = [], []
    for path in sorted(saved.keys() | wanted.keys(), key=lambda p: (not p.startswith("params/"), p)):
        if path not in saved:
            out.append(f"{path}: not in the checkpoint, model {list(wanted[path][0])}")
        elif path not in wanted:
            out.append(f"{path}: checkpoint {list(saved[path][0])}, not in the model")
        elif saved[path][0] != wanted[path][0]:
            out.append(f"{path}: checkpoint {list(saved[path][0])}, model {list(wanted[path][0])}")
        elif saved[path][1] != wanted[path][1]:
            dtypes.append(f"{path}: checkpoint {saved[path][1]}, model {wanted[path][1]}")
    return out + dtypes if out else []


def move_aside(directory: str, step: int) -> str:
    """Renames `<directory>/<step>` to `damaged-<step>` (`-2`, `-3`, ... if taken); returns the new path."""
    target = os.path.join(directory, f"{DAMAGED_PREFIX}{step}")
    n = 1
    while os.path.exists(target):
        n += 1
        target = os.path.join(directory, f"{DAMAGED_PREFIX}{step}-{n}")
    os.rename(os.path.join(directory, str(step)), target)
    return target


def purge_rotated(directory: str) -> None:
    """Deletes the checkpoints Orbax rotated out (best effort: retried before the next save)."""
    shutil.rmtree(os.path.join(directory, ROTATED_DIR), ignore_errors=True)


def _link_tree(source: str, target: str) -> None:
    """Hard-links every file under `source` into `target` (copies where links are refused).

    Raises FileNotFoundError if any part of `source` disappears on the way.
    """
    os.mkdir(target)
    with os.scandir(source) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            to = os.path.join(target, entry.name)
            if entry.is_dir(follow_symlinks=False):
                _link_tree(entry.path, to)
                continue
            try:
                os.link(entry.path, to)
            except FileNotFoundError:
                raise
            except OSError as e:  # another file system, or links forbidden (another user's files)
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP):
                    raise
                shutil.copy2(entry.path, to)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Snapshot:
    """This process's own copy (hard links) of the complete checkpoints in `directory`.

    Steps that disappear while they are being linked (rotated out by a running
    trainer) are left out. Where the workdir is not writable, the snapshot is the
    directory itself (`path == directory`). Snapshots of dead processes on this
    host are removed when the next one is made.
    """

    def __init__(self, directory: str):
        self.directory = directory
        self.path = directory
        self.steps: list[int] = []
        parent = os.path.join(os.path.dirname(directory), SNAPSHOT_DIR)
        host = socket.gethostname()
        try:
            os.makedirs(parent, exist_ok=True)
            self._remove_dead(parent, host)
            self.path = tempfile.mkdtemp(prefix=f"{os.getpid()}-{host}-", dir=parent)
        except OSError as e:
            _log.info("Reading checkpoints in place (no snapshot in %s: %s)", parent, _reason(e))
            self.steps = step_dirs(directory)
            return
        for step in step_dirs(directory):
            try:
                _link_tree(os.path.join(directory, str(step)), os.path.join(self.path, str(step)))
            except FileNotFoundError:  # rotated out (or set aside) while we linked it
                shutil.rmtree(os.path.join(self.path, str(step)), ignore_errors=True)
                continue
            self.steps.append(step)

    @staticmethod
    def _remove_dead(parent: str, host: str) -> None:
        for name in os.listdir(parent):
            pid, _, rest = name.partition("-")
            if pid.isdigit() and rest.startswith(f"{host}-") and not _alive(int(pid)):
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)

    @property
    def owned(self) -> bool:
        return self.path != self.directory

    def drop(self, step: int) -> None:
        """Leaves `step` out of the snapshot (the original is untouched)."""
        if self.owned:
            shutil.rmtree(os.path.join(self.path, str(step)), ignore_errors=True)
        self.steps = [s for s in self.steps if s != step]

    def close(self) -> None:
        if self.owned:
            shutil.rmtree(self.path, ignore_errors=True)
