"""What every command-line entry point of `train` shares: flag parsing, logging, one-line errors.

    def _run() -> int:                 # reads the absl flags, does the work, returns the exit status
        ...

    if __name__ == "__main__":
        cli.run(_run)
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from absl import app, flags
from absl import logging as absl_logging

from train import train_lib

# Errors that are the user's input or environment, reported as one line (not a traceback).
USER_ERRORS = (ValueError, OSError, train_lib.NonFiniteLossError)


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


def one_line_errors(body: Callable[[], int]) -> int:
    """Runs `body`; a user error becomes one `error: ...` line on stderr and exit status 1."""
    try:
        return body()
    except USER_ERRORS as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 1


def run(body: Callable[[], int]) -> None:
    """`app.run` of `body` with the flag parsing, logging and one-line errors above; exits with its status."""
    def main(argv: list[str]) -> int:
        reject_positional(argv)
        configure_logging()
        return one_line_errors(body)
    app.run(main, flags_parser=parse_flags)
