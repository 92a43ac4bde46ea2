"""File writing that never leaves half a file behind and never overwrites silently; text sniffing for readers."""
from __future__ import annotations

import codecs
import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from rsna2024.errors import OutputError
from rsna2024.utils.messages import os_reason

_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path`` atomically.

    If the block raises, the temporary file is removed and ``path`` is untouched, so a
    reader never sees a partly written file (an interrupted run leaves no false "done").
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        existing = _nearest_existing(path.parent)
        reason = os_reason(exc) if existing.is_dir() else f"{existing} is not a folder"
        raise OutputError(f"{path}: cannot be written ({reason})") from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_to_csv(df, path: str | os.PathLike, **kwargs) -> Path:
    """Write a pandas DataFrame to CSV atomically (``index=False`` unless given)."""
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, **kwargs)
    return Path(path)


def check_overwrite(path: str | os.PathLike, overwrite: bool) -> None:
    """Refuse to replace an existing finished output unless ``overwrite`` is set."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite (overwrite=True) to replace it")


def check_writable_dir(path: str | os.PathLike, name: str | os.PathLike | None = None) -> Path:
    """Return ``path`` if files can be created in it, or it can be created (its nearest existing ancestor is a
    folder files can be created in); else raise OutputError naming ``name`` (default ``path``; a file to be
    written into ``path``, say). Tries a real file, so read-only file systems and immutable folders are caught
    for root too; leaves nothing behind and creates no folder."""
    path = Path(path)
    name = path if name is None else name
    probe = path
    try:
        probe = _nearest_existing(path)
        if not probe.is_dir():
            raise OutputError(f"{name}: cannot be written ({probe} is not a folder)")
        fd, tmp = tempfile.mkstemp(prefix=".rsna2024-write-check.", dir=probe)
    except OSError as exc:
        raise OutputError(f"{name}: cannot be written ({probe}: {os_reason(exc)})") from exc
    os.close(fd)
    os.unlink(tmp)
    return path


def text_encoding(head: bytes) -> str | None:
    """The encoding to decode a text file that starts with ``head``: ``'utf-16'`` when it starts with a UTF-16
    byte-order mark, else ``'utf-8-sig'`` (UTF-8, with or without a mark); None when ``head`` holds NUL bytes
    without a UTF-16 mark, i.e. binary data (or UTF-16 without a mark, which cannot be told apart reliably)."""
    if head.startswith(_UTF16_BOMS):
        return "utf-16"
    return None if b"\x00" in head else "utf-8-sig"


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path
