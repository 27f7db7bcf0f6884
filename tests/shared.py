"""What one pytest-xdist worker computes once for every worker of a test run.

`one_device_xla_flags()`: this process's XLA flags without the suite's 8 fake devices, for a
subprocess that should see one CPU device as a user's machine does (the other flags stay).

`shared_once(name, make)` calls `make(directory)` in the first worker that asks and returns the
directory to every worker; the others wait on a file lock meanwhile. The directory lives under
$JAXATTN_TEST_SHARED_DIR, which tests/conftest.py makes once per run (the workers inherit it).
A `make` that raises leaves nothing behind, and the next caller tries again.
"""

import os
import shutil
from collections.abc import Callable

import filelock

__all__ = ["one_device_xla_flags", "shared_once"]


def one_device_xla_flags() -> str:
    """$XLA_FLAGS without `--xla_force_host_platform_device_count` (tests/conftest.py sets it to 8)."""
    return " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                    if not f.startswith("--xla_force_host_platform_device_count"))


def shared_once(name: str, make: Callable[[str], None]) -> str:
    """The directory `<shared dir>/<name>`, filled by `make(directory)` exactly once per test run."""
    root = os.environ["JAXATTN_TEST_SHARED_DIR"]
    directory = os.path.join(root, name)
    with filelock.FileLock(os.path.join(root, f"{name}.lock")):
        if not os.path.isdir(directory):
            partial = f"{directory}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            os.makedirs(partial)
            make(partial)
            os.rename(partial, directory)
    return directory
