"""How a command reports bad input: one line on stderr naming the problem, exit code 2, no traceback.

Shared by the library's ``steer`` commands and the stage entry point (``python -m steer_core.pipeline``), which DVC
runs; kept apart from ``cli.py`` so that a new CLI command does not count as a change to every stage's code.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable



class SteerError(RuntimeError):
    """An expected failure of ours whose message is the whole story (a model that cannot load, a busy project, a
    failed stage, an unverifiable artifact): shown as one line. Any other RuntimeError is a bug and keeps its
    traceback."""


USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, FileNotFoundError, SteerError)


class CommandExit(SystemExit):
    """Raised by :func:`one_line_errors` after printing the one-line error."""


def first_line(exc: BaseException) -> str:
    """The message of an exception as one line (its class name when it has none)."""
    text = str(exc).strip()
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]  # str(KeyError) wraps the message in quotes
    return text.splitlines()[0] if text else exc.__class__.__name__


def one_line_errors(fn: Callable) -> Callable:
    """Turn expected failures (``USER_ERRORS``) into ``error: ...`` on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            print(f"error: {first_line(exc)}", file=sys.stderr)
            raise CommandExit(2) from None

    return wrapper
