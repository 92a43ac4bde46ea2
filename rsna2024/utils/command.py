"""What every command-line entry point shares: argument types that reject bad values through argparse (so its
message names the argument), and one error handler that turns any failure into one line and an exit code.

Exit codes of :func:`run_guarded`: the function's own (0 when it returns None); 2 for bad input (a
:class:`~rsna2024.errors.RsnaError`, or an OSError: a file that cannot be read, a folder that cannot be written);
130 when interrupted (Ctrl-C); 1 for anything else, which is a bug. With ``debug`` the traceback is printed too.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from rsna2024.errors import OutputError, RsnaError
from rsna2024.utils.io import check_writable_dir
from rsna2024.utils.messages import describe_exception

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_BUG = 1


# --------------------------------------------------------------------------- argument types
def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` that accepts whole numbers >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {value}")
        return value

    parse.__name__ = f"int_at_least_{minimum}"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def existing_dir(text: str) -> Path:
    """An argparse ``type``: a folder that exists."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path}: " + ("not a folder" if path.exists() else "folder not found"))
    return path


def existing_file(text: str) -> Path:
    """An argparse ``type``: a file that exists (its content is checked by whoever reads it)."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{path}: " + ("not a file" if path.exists() else "file not found"))
    return path


def writable_dir(text: str) -> Path:
    """An argparse ``type``: a folder files can be written into (it may not exist yet; nothing is created)."""
    try:
        return check_writable_dir(text)
    except OutputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def writable_file(text: str) -> Path:
    """An argparse ``type``: a file path that is not a folder and whose folder can be written into."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path}: is a folder; expected a file name")
    try:
        check_writable_dir(path.parent, name=path)
    except OutputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return path


# --------------------------------------------------------------------------- error handler
def run_guarded(prog: str, func: Callable[[], int | None], debug: bool = False) -> int:
    """Call ``func`` and return its exit code; on failure print ``'<prog>: error: <what>'`` (one line) to stderr
    and return the code of the module docstring. ``debug`` prints the traceback before that line."""
    try:
        return int(func() or 0)
    except KeyboardInterrupt as exc:
        error, code, line = exc, EXIT_INTERRUPTED, f"{prog}: interrupted"
    except (RsnaError, OSError) as exc:
        error, code, line = exc, EXIT_BAD_INPUT, f"{prog}: error: {describe_exception(exc)}"
    except Exception as exc:  # a bug: say so in one line, --debug shows where
        error, code = exc, EXIT_BUG
        line = (f"{prog}: unexpected error: {type(exc).__name__}: {describe_exception(exc)} "
                f"(rerun with --debug for the traceback)")
    if debug:
        traceback.print_exception(error)
    print(line, file=sys.stderr, flush=True)
    return code
