"""Runs `python -m benchmarks.device` as a user would, once per argument list per session.

Shared by tests/test_benchmarks_device.py, tests/test_readme.py and tests/test_readme_commands.py
(the README's command), whichever pytest-xdist worker runs them, so the ~1 minute smoke run is
paid once per test run (`shared.shared_once`). The command runs in a scratch directory with its
own TFDS data dir and without the suite's 8 fake CPU devices (the trainer under part e
would otherwise need batches split 8 ways).
"""

import atexit
import functools
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from typing import NamedTuple

from shared import one_device_xla_flags, shared_once

REPO = pathlib.Path(__file__).resolve().parents[1]


class Run(NamedTuple):
    returncode: int
    stdout: str
    stderr: str
    markdown: str  # the --output file ("" if it was not written)


@functools.lru_cache(maxsize=None)
def run_device_benchmark(args: tuple[str, ...]) -> Run:
    """`python -m benchmarks.device <args>`, run once per test run (whichever worker asks first)."""
    name = "device-benchmark-" + hashlib.sha256(json.dumps(args).encode()).hexdigest()[:16]
    return Run(**json.loads(pathlib.Path(shared_once(name, functools.partial(_run, args)), "run.json").read_text()))


def _run(args: tuple[str, ...], directory: str) -> None:
    """Runs the benchmark with cwd a fresh scratch directory; its `Run` goes to `directory`/run.json."""
    scratch = tempfile.mkdtemp(prefix="device_smoke_")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    env = dict(os.environ)
    env["XLA_FLAGS"] = one_device_xla_flags()
    env["TFDS_DATA_DIR"] = os.path.join(scratch, "tfds")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.device", *args], cwd=scratch,
                          env=env, capture_output=True, text=True, timeout=900, check=False)
    default = "runs/device_benchmark_smoke.md" if "--smoke" in args else "runs/device_benchmark.md"
    output = next((a.split("=", 1)[1] for a in args if a.startswith("--output=")), default)
    path = pathlib.Path(scratch, output)
    run = Run(proc.returncode, proc.stdout, proc.stderr, path.read_text(encoding="utf-8") if path.exists() else "")
    pathlib.Path(directory, "run.json").write_text(json.dumps(run._asdict()), encoding="utf-8")
