"""The one exception type for mistakes in what the user gave the trainer.

Validators (config, workdir, data files, checkpoints, command-line flags)
raise `UserError`; the command line turns it into one `error: ...` line and
exit status 1. Any other exception is a bug and keeps its traceback.

`UserError` subclasses `ValueError` so that code calling the trainer from
Python (notebooks, tests) can keep catching `ValueError`.
"""

__all__ = ["UserError", "one_line"]


class UserError(ValueError):
    """A bad config field, flag, file or workdir: a one-line message naming it."""


def one_line(text: object) -> str:
    """`text` (or an exception's message) with its whitespace runs squeezed to single spaces."""
    return " ".join(str(text).split())
