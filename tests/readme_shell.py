"""Running the README's shell commands in tests: bash-like splitting and a shared session.

`readme_commands(text)` reads every ```bash block of a README into `Command`s (one per line
once `\\` continuations are joined and `# comments` dropped; `.segments` split on `&&`, `||`
and `;` outside quotes). `Session` runs shell text as `bash -c` subprocesses in a temporary
directory laid out like a checkout, with the venv's python first on PATH, the repository on
PYTHONPATH, HOME and the TFDS data dir inside the temporary directory, one CPU device and the
suite's JAX compilation cache (tests/conftest.py); `once` memoises what several tests need (a
trained workdir) across threads. tests/test_readme_commands.py holds the rules that say how
each kind of command runs.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable

import pytest
from shared import one_device_xla_flags

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_S = 300  # per command; a hang fails the test instead of stalling the suite


def _unquoted(text: str) -> list[bool]:
    """For each character of `text`: True if bash reads it outside quotes and escapes."""
    mask, quote, escaped = [], None, False
    for ch in text:
        if escaped:
            mask.append(False)
            escaped = False
        elif quote == "'":
            mask.append(False)
            quote = None if ch == "'" else quote
        elif quote == '"':
            mask.append(False)
            escaped = ch == "\\"
            quote = None if ch == '"' else quote
        else:
            mask.append(ch not in "\\'\"")
            escaped = ch == "\\"
            quote = ch if ch in "'\"" else None
    return mask


def split(text: str, ops: tuple[str, ...]) -> list[tuple[int, int]]:
    """Spans of the parts of `text` between the unquoted operators `ops` (stripped)."""
    mask, spans, start, i = _unquoted(text), [], 0, 0
    while i < len(text):
        op = next((op for op in ops if mask[i] and text.startswith(op, i)), None)
        if op == "|" and (text.startswith("||", i) or text[i - 1:i] == "|"):
            op = None  # `||` is a list operator, not a pipe
        if op:
            spans.append((start, i))
            i = start = i + len(op)
        else:
            i += 1
    spans.append((start, len(text)))
    out = []
    for a, b in spans:
        part = text[a:b]
        a += len(part) - len(part.lstrip())
        b -= len(part) - len(part.rstrip())
        if a < b:
            out.append((a, b))
    return out


def _strip_comment(line: str) -> str:
    mask = _unquoted(line)
    for i, ch in enumerate(line):
        if ch == "#" and mask[i] and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


@dataclasses.dataclass(frozen=True)
class Command:
    """One command line of a README bash block."""

    line: int  # README line the command starts on
    text: str  # continuations joined, comment dropped

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.text[a:b] for a, b in split(self.text, ("&&", "||", ";")))

    def __str__(self) -> str:
        return f"README.md line {self.line}: {self.text}"


def split_commands(block: str, first_line: int = 1) -> list[Command]:
    """The commands of one bash block whose first line is README line `first_line`."""
    lines, commands, i = block.split("\n"), [], 0
    while i < len(lines):
        start, text = i, lines[i].rstrip()
        while text.endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text[:-1].rstrip() + " " + lines[i].strip()
        i += 1
        text = _strip_comment(text).strip()
        if text:
            commands.append(Command(first_line + start, text))
    return commands


def readme_commands(text: str) -> list[Command]:
    commands = []
    for match in re.finditer(r"^```(?:bash|sh|shell)\n(.*?)^```", text, flags=re.S | re.M):
        commands += split_commands(match.group(1), text[:match.start(1)].count("\n") + 1)
    return commands


def pipeline(segment: str) -> list[str]:
    return [segment[a:b] for a, b in split(segment, ("|",))]


def free_port(low: int = 1024, high: int = 65535) -> int:
    start = int.from_bytes(os.urandom(2), "little") % (high - low + 1)
    for offset in range(high - low + 1):
        port = low + (start + offset) % (high - low + 1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port")

def _checkout_like(path: pathlib.Path) -> None:
    """Makes `path` look like a checkout (symlinks to the repository's top-level entries), so
    that the commands' relative paths (train/configs/...) resolve there."""
    path.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in {".git", "runs", ".venv", ".pytest_cache"} and not entry.name.endswith(".egg-info"):
            (path / entry.name).symlink_to(entry)


@dataclasses.dataclass
class Ran:
    """A finished shell command."""

    text: str
    returncode: int
    stdout: str
    stderr: str

    def ok(self) -> Ran:
        assert self.returncode == 0, (f"exit status {self.returncode}: {self.text}\n--- stderr (end) ---\n"
                                      f"{self.stderr[-4000:]}\n--- stdout (end) ---\n{self.stdout[-2000:]}")
        return self


class Session:
    """Where README commands run (`root`/checkout), and what they leave for the commands that follow."""

    def __init__(self, root: pathlib.Path):
        self.root = root
        self.checkout = root / "checkout"  # the working directory of every command
        self.tfds = root / "tfds"
        _checkout_like(self.checkout)
        (root / "home").mkdir()
        env = dict(os.environ)
        for name in list(env):  # no cluster here: `coordinator_address=auto` must not find one
            if name.startswith(("SLURM_", "OMPI_", "PMI_", "TPU_", "KUBERNETES_", "MEGASCALE_")):
                del env[name]
        env.update(
            PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{env.get('PATH', '')}",
            PYTHONPATH=str(REPO),
            HOME=str(root / "home"),
            TFDS_DATA_DIR=str(self.tfds),
            JAX_PLATFORMS="cpu",
            # One CPU device, as on a user's machine (conftest gives this process 8).
            XLA_FLAGS=one_device_xla_flags(),
            TPU_SKIP_MDS_QUERY="1",  # never ask a cloud metadata server
            # XLA compiles with fewer optimisations (as JAX's own tests do): same results at
            # these sizes, about 40% less CPU, and compiling is most of a tiny run's cost.
            JAX_DISABLE_MOST_OPTIMIZATIONS="1",
        )
        self.env = env
        self._lock = threading.Lock()
        self._futures: dict[object, concurrent.futures.Future] = {}
        self._fresh = collections.Counter()
        self._workdir_locks: dict[str, threading.Lock] = {}
        self.background: list[subprocess.Popen] = []  # servers the commands talk to; ended by `close`

    def close(self) -> None:
        """Ends the background processes (SIGTERM, then SIGKILL after 30 s)."""
        for process in self.background:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.background:
            try:
                process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()

    def once(self, key, fn: Callable[[], object]):
        """fn() the first time `key` is asked for (others wait for it); its result or error."""
        with self._lock:
            future = self._futures.get(key)
            owner = future is None
            if owner:
                future = self._futures[key] = concurrent.futures.Future()
        if owner:
            try:
                future.set_result(fn())
            except BaseException as error:  # pytest.fail raises a BaseException
                future.set_exception(error)
        return future.result()

    def workdir_lock(self, workdir: str) -> threading.Lock:
        """Serialises the commands that read or write one workdir of the shared checkout."""
        with self._lock:
            return self._workdir_locks.setdefault(workdir, threading.Lock())

    def fresh_dir(self, name: str) -> pathlib.Path:
        with self._lock:
            self._fresh[name] += 1
            path = self.root / f"{name}{self._fresh[name]}"
        _checkout_like(path)
        return path

    def spawn(self, text: str, cwd: pathlib.Path | None = None, env: dict | None = None) -> subprocess.Popen:
        return subprocess.Popen(["bash", "-c", text], cwd=cwd or self.checkout, env={**self.env, **(env or {})},
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)

    def wait(self, text: str, process: subprocess.Popen, timeout: float = TIMEOUT_S) -> Ran:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            pytest.fail(f"still running after {timeout} s (killed): {text}\n{err[-3000:]}")
        return Ran(text, process.returncode, out, err)

    def shell(self, text: str, cwd: pathlib.Path | None = None, env: dict | None = None,
              timeout: float = TIMEOUT_S) -> Ran:
        return self.wait(text, self.spawn(text, cwd, env), timeout)
