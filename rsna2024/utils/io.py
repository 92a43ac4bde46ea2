"""File writing that never leaves half a file behind and never overwrites silently; text sniffing for readers."""
from __future__ import annotations

import codecs
import contextlib
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from rsna2024.errors import OutputError
from rsna2024.utils.logging import get_logger
from rsna2024.utils.messages import os_reason

log = get_logger(__name__)
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"
_STARTED = time.time()  # (about) when this process started: its own temporaries are never older
# ``.<name>.<host>.<pid>.<8 random characters>.tmp``: what the atomic writers and the write probe create
TEMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[A-Za-z0-9_]{8}\.tmp$")


def _temp_prefix(name: str) -> str:
    """The start of a temporary file's name beside ``name`` (``mkstemp`` adds 8 random characters)."""
    return f".{name}.{_HOST}.{os.getpid()}."


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path`` atomically.

    If the block raises, the temporary file is removed and ``path`` is untouched, so a
    reader never sees a partly written file (an interrupted run leaves no false "done"). The temporary's
    name (:data:`TEMP_PATTERN`) holds the host and pid of the writer: a killed run's leftovers are removed by
    :func:`clean_stale_temporaries`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent)
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


@contextlib.contextmanager
def temporary_folder(parent: str | os.PathLike, name: str = "folder") -> Iterator[Path]:
    """A new folder in ``parent``, removed with its content when the block ends, either way. Named like the
    atomic writers' temporaries (:data:`TEMP_PATTERN`), so the one a killed process leaves behind is removed by
    :func:`clean_stale_temporaries`."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(name), suffix=".tmp", dir=parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix("rsna2024-write-check"), suffix=".tmp", dir=probe)
    except OSError as exc:
        raise OutputError(f"{name}: cannot be written ({probe}: {os_reason(exc)})") from exc
    os.close(fd)
    os.unlink(tmp)
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def is_stale_temporary(path: str | os.PathLike) -> bool:
    """True for a temporary of the atomic writers (:data:`TEMP_PATTERN`) left by a writer that is gone: made on
    this host, older than this process, and its pid is not a live process (or is this process, which did not
    exist then). A live pid's temporary (a concurrent job: a ``--gpus`` fold, a torchrun rank) or another
    host's (a shared file system) is never stale."""
    path = Path(path)
    match = TEMP_PATTERN.match(path.name)
    if not match or match["host"] != _HOST:
        return False
    try:
        if path.stat().st_mtime >= _STARTED:
            return False
    except FileNotFoundError:
        return False
    pid = int(match["pid"])
    return pid == os.getpid() or not _pid_alive(pid)


def clean_stale_temporaries(root: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Remove the stale temporaries (:func:`is_stale_temporary`) in ``root`` (and its subfolders when
    ``recursive``): what a killed run left half written, files and :func:`temporary_folder` folders. Returns the
    paths removed; nothing else is touched."""
    root = Path(root)
    if not root.is_dir():
        return []
    removed = []
    for folder, dirs, files in os.walk(root):
        for name in [d for d in dirs if d.endswith(".tmp")]:
            path = Path(folder) / name
            if is_stale_temporary(path):
                shutil.rmtree(path, ignore_errors=True)
                dirs.remove(name)
                removed.append(path)
        if not recursive:
            dirs.clear()
        for name in files:
            path = Path(folder) / name
            if name.endswith(".tmp") and is_stale_temporary(path):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run in %s: %s", len(removed), root,
                 ", ".join(str(p.relative_to(root)) for p in removed[:5]) + (" ..." if len(removed) > 5 else ""))
    return removed


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
