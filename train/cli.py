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

import ml_collections
from absl import app, flags
from absl import logging as absl_logging

from train import checkpoint, interrupt, metrics, quiet
from train.errors import UserError, one_line

# Errors that are the user's input, reported as one line; any other exception is a bug and keeps
# its traceback.
USER_ERRORS = (UserError, metrics.NonFiniteLossError)
# OSErrors that are the machine's state rather than a bug: a full disk, no permission, a read-only
# file system. A missing file is not among them: the validators check the files the user names.
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})


def _fail(message: str) -> None:
    print("error: " + one_line(message), file=sys.stderr)
    sys.exit(1)


def _config_file_flags() -> list[str]:
    """Names of the `config_flags.DEFINE_config_file` flags."""
    return [name for name in flags.FLAGS if flags.FLAGS[name].flag_type() == "config object"]


def _config_path(name: str, argv: list[str]) -> str:
    """The file given to `--<name>` in `argv` (the flag's default if it is not there)."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return str(flags.FLAGS[name].default_as_str).strip("'")


def parse_flags(argv: list[str]) -> list[str]:
    """`flags_parser` for `app.run`: a bad flag, config file or override, or a stray argument, is one
    `error:` line and exit status 1."""
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        _fail(str(e))
    except Exception as e:  # raised while a config file was executed: the user's file, not our code
        names = _config_file_flags()
        flag = f"--{names[0]}={_config_path(names[0], argv)}" if len(names) == 1 else "--config"
        if isinstance(e, AttributeError) and "get_config" in str(e):
            _fail(f"{flag}: the file defines no get_config() returning the config")
        _fail(f"{flag}: cannot load the config file ({type(e).__name__}: {e})")
    for name in _config_file_flags():
        value = flags.FLAGS[name].value
        if not isinstance(value, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
            path = _config_path(name, argv)
            reason = "no such file" if not os.path.isfile(path.split(":", 1)[0]) else "get_config() returned no ConfigDict"
            _fail(f"--{name}={path}: {reason}")
    try:
        reject_positional(rest)
    except UserError as e:
        _fail(str(e))
    return rest


def reject_positional(argv: list[str]) -> None:
    """Raises `UserError` for arguments after the program name (every input is a flag)."""
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])} (every setting is a --flag; "
                        "see --help)")


def configure_logging() -> None:
    """Our progress lines at INFO; library chatter (Orbax, TFDS, absl) only from WARNING."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("train").setLevel(logging.INFO)


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


def _message(error: BaseException) -> str | None:
    """The one line for a user or environment error; None for anything else (a bug)."""
    if isinstance(error, USER_ERRORS):
        return str(error)
    if isinstance(error, OSError) and error.errno in ENVIRONMENT_ERRNOS:
        return environment_message(error)
    return None


def one_line_errors(body: Callable[[], int]) -> int:
    """Runs `body`; a user or environment error becomes one `error: ...` line on stderr and exit status 1.

    An environment error raised while cleaning up after a reported one (closing
    files on a full disk) reports the first one.
    """
    try:
        return body()
    except Exception as e:
        message = _message(e)
        if message is None:
            raise
        first = e.__context__
        while isinstance(e, OSError) and first is not None:
            message = _message(first) or message
            first = None if first.__suppress_context__ else first.__context__
        if checkpoint.is_disk_full(e):
            quiet.DISK_FULL_REPORTED.set()
        print("error: " + one_line(message), file=sys.stderr)
        return 1


def run(body: Callable[[], int]) -> None:
    """`app.run` of `body` with the flag parsing, logging and one-line errors above; exits with its status."""
    def main(argv: list[str]) -> int:
        del argv  # parse_flags refused any positional argument
        configure_logging()
        quiet.install()  # the process's one place for global hooks and log filters; Ctrl-C unwinds from here
        try:
            return one_line_errors(body)
        except KeyboardInterrupt:  # outside the training loop (which stops cleanly on its own)
            print(interrupt.MESSAGE, file=sys.stderr)
            return interrupt.EXIT_STATUS
    app.run(main, flags_parser=parse_flags)
