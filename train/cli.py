"""What every command-line entry point of `train` shares: flag parsing, logging, one-line errors.

    def _run() -> int:                 # reads the absl flags, does the work, returns the exit status
        ...

    if __name__ == "__main__":
        cli.run(_run)
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sys
from collections.abc import Callable

from absl import app, flags
from absl import logging as absl_logging

from train import train_lib
from train.errors import UserError

# Errors that are the user's input, reported as one line; any other exception is a bug and keeps
# its traceback.
USER_ERRORS = (UserError, train_lib.NonFiniteLossError)
# OSErrors that are the machine's state rather than a bug: a full disk, no permission, a read-only
# file system. A missing file is not among them: the validators check the files the user names.
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})


class _OrbaxMetricWarning(logging.Filter):
    """Drops Orbax's warning for saves without metrics: only evaluation saves carry BLEU."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in record.getMessage()


def parse_flags(argv: list[str]) -> list[str]:
    """`flags_parser` for `app.run`: a bad flag or config override is one `error:` line, exit status 1."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def reject_positional(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")


def configure_logging() -> None:
    """Our progress lines at INFO; library chatter (Orbax, TFDS, absl) only from WARNING."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("train").setLevel(logging.INFO)
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _OrbaxMetricWarning) for f in absl_logger.filters):
        absl_logger.addFilter(_OrbaxMetricWarning())


def environment_message(e: OSError) -> str:
    """One line for an OSError of the environment: what failed, where, and (disk full) how much is free."""
    where = e.filename or ""
    message = f"{e.strerror or e}" + (f": {where}" if where else "")
    if e.errno in (errno.ENOSPC, errno.EDQUOT) and where:
        path = str(where)
        while path and not os.path.exists(path):
            path = os.path.dirname(path)
        try:
            free = shutil.disk_usage(path or ".").free
            message += f" ({free / 2**20:.1f} MiB free there); free some space and re-run to resume"
        except OSError:
            pass
    return message


def one_line_errors(body: Callable[[], int]) -> int:
    """Runs `body`; a user or environment error becomes one `error: ...` line on stderr and exit status 1."""
    try:
        return body()
    except USER_ERRORS as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 1
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRNOS:
            raise
        print("error: " + " ".join(environment_message(e).split()), file=sys.stderr)
        return 1


def run(body: Callable[[], int]) -> None:
    """`app.run` of `body` with the flag parsing, logging and one-line errors above; exits with its status."""
    def main(argv: list[str]) -> int:
        reject_positional(argv)
        configure_logging()
        return one_line_errors(body)
    app.run(main, flags_parser=parse_flags)
