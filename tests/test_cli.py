"""train.cli: what the entry points share (flag errors, one-line user errors); train.quiet: log filters, hooks."""

import errno
import logging
import os
import re
import sys
import threading
import types

import pytest

from train import cli, metrics, quiet
from train.errors import UserError


def test_bad_flag_is_one_line_and_exit_status_1(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_flags(["prog", "--no_such_flag_anywhere=3"])
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no_such_flag_anywhere" in lines[0]


@pytest.mark.parametrize("error", [UserError("config.model.num_heads:\n  got 3,\n  expected a divisor of 64"),
                                   metrics.NonFiniteLossError("loss is nan at step 7")])
def test_user_errors_become_one_line(error, capsys):
    def body() -> int:
        raise error
    assert cli.one_line_errors(body) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert " ".join(str(error).split()) in err


def test_environment_errors_become_one_line(tmp_path, capsys):
    def body() -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "run" / "checkpoints" / "7"))
    assert cli.one_line_errors(body) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: No space left on device: ")
    assert re.search(r"run/checkpoints/7 \(\d+\.\d MiB free there\)", err), err


@pytest.mark.parametrize("error", [TypeError("a bug, not bad input"), ValueError("a bug's ValueError"),
                                   FileNotFoundError(errno.ENOENT, "a bug's missing file", "nowhere")])
def test_programming_errors_keep_their_traceback(error):
    def body() -> int:
        raise error
    with pytest.raises(type(error), match="a bug"):
        cli.one_line_errors(body)
    assert cli.one_line_errors(lambda: 0) == 0


def test_positional_arguments_are_rejected():
    cli.reject_positional(["prog"])
    with pytest.raises(UserError, match="unexpected arguments: extra words"):
        cli.reject_positional(["prog", "extra", "words"])


def test_quiet_install_adds_log_filters_and_hooks_once(monkeypatch):
    absl_logger = logging.getLogger("absl")
    before = list(absl_logger.filters)
    printed = []
    monkeypatch.setattr(threading, "excepthook", lambda args: printed.append(args.exc_value))
    monkeypatch.setattr(sys, "unraisablehook", lambda u: printed.append(u.exc_value))
    try:
        cli.configure_logging()
        quiet.install()
        hooks = threading.excepthook, sys.unraisablehook
        quiet.install()
        assert (threading.excepthook, sys.unraisablehook) == hooks  # wrapped once
        added = [f for f in absl_logger.filters if f not in before]
        assert len(added) <= 2
        for kind in ("_OrbaxMetricWarning", "_DiskFullEcho"):
            assert len([f for f in absl_logger.filters if type(f).__name__ == kind]) == 1
        record = logging.LogRecord("absl", logging.WARNING, __file__, 1, "Save did not provide metrics", None, None)
        assert not absl_logger.filter(record)
        record = logging.LogRecord("absl", logging.WARNING, __file__, 1, "something else", None, None)
        assert absl_logger.filter(record)
        full = OSError(errno.ENOSPC, "No space left on device")
        record = logging.LogRecord("absl", logging.ERROR, __file__, 1, "save failed", None, (OSError, full, None))
        assert not absl_logger.filter(record)  # the trainer reports it in one line
        other = OSError(errno.EIO, "Input/output error")
        record = logging.LogRecord("absl", logging.ERROR, __file__, 1, "save failed", None, (OSError, other, None))
        assert absl_logger.filter(record)
        assert logging.getLogger("train").getEffectiveLevel() == logging.INFO

        # Orbax's asyncio operations completing into its closed loop: echoes of a reported failure.
        closed, bug = RuntimeError("Event loop is closed"), RuntimeError("a bug in a finalizer")
        for error in (closed, bug):
            sys.unraisablehook(types.SimpleNamespace(exc_value=error))
        assert printed == [bug]
    finally:
        absl_logger.filters[:] = before
