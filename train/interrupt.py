"""Ctrl-C on the command line: one `error: interrupted` line and exit status 130, not a traceback.

While the entry point loads its libraries (seconds of imports), nothing is
running that needs cleaning up: `exit_on_ctrl_c` makes SIGINT end the
process at once. Once the CLI runs (`train.cli.run`), Ctrl-C is a
`KeyboardInterrupt` again, so that files are closed on the way out; the
CLI reports it in the same one line, and training turns it into a clean stop
(`train.stopping`). Only the standard library is imported here.
"""

import os
import signal
import sys

__all__ = ["EXIT_STATUS", "MESSAGE", "exit_on_ctrl_c", "raise_on_ctrl_c"]

EXIT_STATUS = 128 + signal.SIGINT  # 130, what shells report for a process ended by Ctrl-C
MESSAGE = "error: interrupted"


def _exit_now(signum, frame) -> None:
    del signum, frame
    sys.stderr.write(MESSAGE + "\n")
    sys.stderr.flush()
    os._exit(EXIT_STATUS)  # no cleanup to run: only imports were under way


def exit_on_ctrl_c() -> None:
    """SIGINT ends the process with one line (for the imports of an entry point)."""
    signal.signal(signal.SIGINT, _exit_now)


def raise_on_ctrl_c() -> None:
    """SIGINT raises KeyboardInterrupt again (Python's default)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
