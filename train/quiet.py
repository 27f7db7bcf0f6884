"""What the command line keeps off the terminal: library notices and echoes of a reported error.

`install()` is the one place that touches process-wide hooks; only `train.cli.run`
calls it (library code, e.g. the `Checkpointer`, installs nothing). The one hook
set before it is the entry point's SIGINT handler while its libraries load
(`train.interrupt.exit_on_ctrl_c`), which `install()` replaces. It adds two
filters to absl's logger and wraps `threading.excepthook` and `sys.unraisablehook`,
each once however often it is called. Whatever it does not recognise goes on to
the previous hook or handler unchanged, so a bug keeps its traceback.

Dropped:

* notices that are no news to our users (`LIBRARY_NOTICES`);
* Orbax's tracebacks of a save that ran out of disk, and the I/O errors of
  background writers (TensorBoard's flush thread, its exit handler, Orbax's save
  threads) once the main thread has reported the full disk (`DISK_FULL_REPORTED`);
* 'Event loop is closed': Orbax runs a save's or restore's tensorstore operations
  on an asyncio loop and closes it at the first failure; operations still in
  flight then complete into the closed loop, and Python prints each as an
  unraisable RuntimeError (dozens of tracebacks after one damaged file or a full
  disk). The failure itself is reported.
"""

from __future__ import annotations

import logging
import sys
import threading

from train import checkpoint, interrupt

__all__ = ["DISK_FULL_REPORTED", "LIBRARY_NOTICES", "install"]

# Library warnings that are no news to our users: Orbax's for saves without metrics (only evaluation
# saves carry BLEU) and for checkpoints opened read-only (eval / translate / score do so on purpose),
# TFDS's for the builder config of a TSV corpus (custom by design).
LIBRARY_NOTICES = ("did not provide metrics", "Given directory is read only", "Using custom data configuration")

# Set once a full disk has been reported: I/O errors of background writers after that are its echoes.
DISK_FULL_REPORTED = threading.Event()


class _OrbaxMetricWarning(logging.Filter):
    """Drops the warnings of `LIBRARY_NOTICES`; every other warning stays visible."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(notice in message for notice in LIBRARY_NOTICES)


class _DiskFullEcho(logging.Filter):
    """Drops Orbax's tracebacks of a save that ran out of disk: the trainer reports it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and checkpoint.is_disk_full(record.exc_info[1]))


def _echo(error: BaseException | None) -> bool:
    """True for an error that repeats one already reported (or about to be)."""
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
        return True
    return checkpoint.is_disk_full(error) or (DISK_FULL_REPORTED.is_set() and isinstance(error, OSError))


def _dropping_echoes(previous):
    """`previous` (a thread or unraisable hook: its argument has `.exc_value`) behind the echo filter, once."""
    if getattr(previous, "drops_echoes", False):
        return previous

    def hook(args) -> None:
        if not _echo(args.exc_value):
            previous(args)
    hook.drops_echoes = True
    return hook


def install() -> None:
    """Installs the absl log filters and the thread / unraisable hooks (each at most once), and gives
    Ctrl-C back to Python (a KeyboardInterrupt that unwinds; see `train.interrupt`)."""
    interrupt.raise_on_ctrl_c()
    absl_logger = logging.getLogger("absl")
    for kind in (_OrbaxMetricWarning, _DiskFullEcho):
        if not any(isinstance(f, kind) for f in absl_logger.filters):
            absl_logger.addFilter(kind())

    threading.excepthook = _dropping_echoes(threading.excepthook)
    sys.unraisablehook = _dropping_echoes(sys.unraisablehook)
