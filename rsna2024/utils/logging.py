"""Logging to stdout (and optionally a file) with one format for the whole kit."""
from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def get_logger(name: str) -> logging.Logger:
    """Module logger under the ``rsna2024`` namespace."""
    return logging.getLogger(name if name.startswith("rsna2024") else f"rsna2024.{name}")


def setup_logging(level: int | str = logging.INFO, log_file: str | Path | None = None) -> None:
    """Send ``rsna2024`` logs to stderr and, if given, to ``log_file``. Safe to call twice."""
    root = logging.getLogger("rsna2024")
    root.setLevel(level)
    for h in list(root.handlers):
        if getattr(h, "_rsna2024", False):
            root.removeHandler(h)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    for h in handlers:
        h.setFormatter(logging.Formatter(_FORMAT, "%H:%M:%S"))
        h._rsna2024 = True  # type: ignore[attr-defined]
        root.addHandler(h)


def ensure_logging() -> None:
    """Configure logging once in a fresh worker process (joblib/DataLoader workers start unconfigured,
    and Python would print their warnings bare, without time, level or source)."""
    if not any(getattr(h, "_rsna2024", False) for h in logging.getLogger("rsna2024").handlers):
        setup_logging()


@contextlib.contextmanager
def captured_warnings(name: str = "rsna2024") -> Iterator[list[str]]:
    """Collect the messages of the warnings (and errors) logged under ``name`` inside the block, in order; they
    are still shown as usual."""
    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = _Collect(logging.WARNING)
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
