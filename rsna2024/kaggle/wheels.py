"""Wheels for an offline install: the kit's own, built from this checkout, and those of its dependencies.

The dependencies are the kit's ``Requires-Dist`` (read from the wheel just built) and theirs, walked through the
distributions installed here, each pinned to its installed version, minus an exclusion list (fnmatch patterns on
normalised names; a package excluded is not walked into). The default list, :data:`DEFAULT_EXCLUDE`, leaves out
torch, torchvision and their CUDA wheels: Kaggle's image has its own, and ``pip install`` keeps an installed
package that satisfies the requirement, so the packaged wheels are only used for what the image lacks.

``pip wheel --no-deps`` fetches them for this interpreter (a package without a wheel is built into one); with a
``python_version`` other than this interpreter's, ``pip download --only-binary=:all:`` fetches manylinux x86_64
wheels for that CPython (Kaggle's image: Linux, glibc up to :data:`KAGGLE_GLIBC_MINOR`).
"""
from __future__ import annotations

import email.parser
import fnmatch
import importlib.metadata
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from rsna2024.errors import ConfigError, RsnaError
from rsna2024.kaggle import DEFAULT_EXCLUDE
from rsna2024.utils.logging import get_logger

log = get_logger(__name__)

KIT = "rsna2024"
#: The files of a checkout a wheel of the kit is built from (those present), besides the ``rsna2024`` package.
SOURCE_FILES = ("setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in", "README.md")
KAGGLE_GLIBC_MINOR = 35  # Kaggle's image is Ubuntu 22.04 (glibc 2.35)


class PackagingError(RsnaError):
    """A wheel cannot be built or fetched (pip failed)."""


def current_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def source_root() -> Path:
    """The checkout the running ``rsna2024`` package comes from (the folder holding ``setup.py``)."""
    import rsna2024

    root = Path(rsna2024.__file__).resolve().parents[1]
    if not (root / "setup.py").is_file():
        raise ConfigError(f"{root}: no setup.py beside the rsna2024 package; the kit's wheel is built from a source "
                          "checkout (run from a git clone, installed with pip install -e .)")
    return root


def run_pip(args: Sequence, what: str, quiet: bool = True) -> None:
    """``python -m pip <args>``; PackagingError naming ``what`` (with pip's last lines when ``quiet``) on failure."""
    cmd = [sys.executable, "-m", "pip", *map(str, args), "--disable-pip-version-check"]
    log.debug("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=quiet, text=True)
    if proc.returncode:
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-6:]) if quiet else "see pip's output above"
        raise PackagingError(f"{what}: pip {args[0]} exited with {proc.returncode} ({tail})")


def build_kit_wheel(dest: Path, root: Path | None = None) -> Path:
    """Build the kit's wheel from a copy of the checkout ``root`` (default :func:`source_root`; the copy keeps
    build/ and egg-info out of it) into ``dest``; returns the wheel's path."""
    root = Path(root) if root is not None else source_root()
    with tempfile.TemporaryDirectory(prefix="rsna2024-wheel-") as tmp:
        src, out = Path(tmp) / "src", Path(tmp) / "out"
        shutil.copytree(root / KIT, src / KIT, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for name in SOURCE_FILES:
            if (root / name).is_file():
                shutil.copy2(root / name, src / name)
        run_pip(["wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", out, src], f"building the kit's wheel "
                f"from {root}")
        (wheel,) = out.glob("*.whl")
        Path(dest).mkdir(parents=True, exist_ok=True)
        return Path(shutil.move(str(wheel), Path(dest) / wheel.name))


def wheel_requirements(wheel: Path) -> list[Requirement]:
    """The ``Requires-Dist`` entries of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(zf.read(name).decode("utf-8"))
    return [Requirement(r) for r in meta.get_all("Requires-Dist") or []]


def is_excluded(name: str, exclude: Iterable[str]) -> bool:
    name = canonicalize_name(name)
    return any(fnmatch.fnmatchcase(name, canonicalize_name(pattern)) for pattern in exclude)


def dependency_pins(requirements: Iterable[Requirement], exclude: Iterable[str] = DEFAULT_EXCLUDE,
                    python_version: str | None = None) -> tuple[list[str], list[str]]:
    """``(pins, excluded)``: ``name==version`` of every dependency reached from ``requirements`` through the
    installed distributions (markers evaluated for ``python_version``, default this interpreter's), and the names
    left out by ``exclude``. A dependency not installed here is pinned to its requirement's specifier (with a
    warning: its own dependencies are not followed)."""
    exclude = list(exclude)
    env = default_environment()
    if python_version:
        env.update(python_version=python_version, python_full_version=f"{python_version}.0")
    pins: dict[str, str] = {}
    extras_seen: dict[str, set[str]] = {}
    excluded: set[str] = set()
    stack = [(req, frozenset({""})) for req in requirements]
    while stack:
        req, parent_extras = stack.pop()
        if req.marker is not None and not any(req.marker.evaluate({**env, "extra": e}) for e in parent_extras):
            continue
        name = canonicalize_name(req.name)
        if is_excluded(name, exclude):
            excluded.add(name)
            continue
        new_extras = set(req.extras) - extras_seen.get(name, set())
        if name in extras_seen and not new_extras:
            continue
        extras_seen.setdefault(name, set()).update(req.extras)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            log.warning("%s (%s) is not installed here: packaged as %s%s without its own dependencies", name, req,
                        name, req.specifier)
            pins[name] = f"{name}{req.specifier}"
            continue
        if req.specifier and not req.specifier.contains(dist.version, prereleases=True):
            log.warning("%s %s is installed here but %s is required: packaging %s anyway", name, dist.version, req,
                        dist.version)
        pins[name] = f"{name}=={dist.version}"
        stack.extend((Requirement(r), frozenset({""} | new_extras)) for r in dist.requires or [])
    return sorted(pins.values()), sorted(excluded)


def fetch_wheels(pins: Sequence[str], dest: Path, python_version: str | None = None) -> list[Path]:
    """Wheels of ``pins`` (no dependencies) into ``dest`` for this interpreter, or for CPython ``python_version``
    on manylinux x86_64; returns the wheels now in ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if not pins:
        return []
    if python_version in (None, current_python()):
        args = ["wheel", "--no-deps", "--wheel-dir", dest]
    else:
        platforms = [f"manylinux_2_{m}_x86_64" for m in range(KAGGLE_GLIBC_MINOR, 16, -1)] + ["manylinux2014_x86_64"]
        args = ["download", "--no-deps", "--only-binary=:all:", "--implementation", "cp", "--python-version",
                python_version, *[a for p in platforms for a in ("--platform", p)], "--dest", dest]
    run_pip([*args, *pins], f"fetching {len(pins)} dependency wheels into {dest}", quiet=False)
    return sorted(dest.glob("*.whl"))
