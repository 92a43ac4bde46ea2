"""Small helpers that word error and warning messages the same way everywhere."""
from __future__ import annotations

from collections.abc import Iterable

# How many items a message lists before it gives a count of the rest.
SHOW = 5


def describe_items(items: Iterable, show: int = SHOW) -> str:
    """``'a, b, c (and 12 more)'``: the first ``show`` items and a count of the rest."""
    items = list(items)
    text = ", ".join(str(i) for i in items[:show])
    return text + (f" (and {len(items) - show} more)" if len(items) > show else "")


def count_and_examples(what: str, items: Iterable, show: int = SHOW) -> str:
    """``'<what> (<count>): <first items>'``, e.g. ``'studies without a Sagittal T1 series (2): 7, 9'``."""
    items = list(items)
    return f"{what} ({len(items)}): {describe_items(items, show)}"


def os_reason(exc: OSError) -> str:
    """An OSError's reason without its errno and file name, lower case: ``'permission denied'``."""
    text = exc.strerror or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


def describe_exception(exc: BaseException) -> str:
    """One line for a user: ``'<file>: permission denied'`` for an OSError that names its file, else the
    message with its line breaks folded (or, when there is none, the exception's class name)."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        target = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else f"{exc.filename}"
        return f"{target}: {os_reason(exc)}"
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
