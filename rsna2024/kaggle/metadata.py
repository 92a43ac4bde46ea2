"""Kaggle's metadata files: the ``<user>/<slug>`` ids, ``dataset-metadata.json`` and ``kernel-metadata.json``.

The checks here are the kaggle client's own (a dataset title and slug of 6 to 50 characters, a kernel title of at
least 5 whose slug is the kernel's), made before anything is written, so a package that builds also uploads.
"""
from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

from rsna2024.errors import ConfigError
from rsna2024.kaggle import COMPETITION
from rsna2024.utils.io import atomic_write_text

DATASET_METADATA = "dataset-metadata.json"
KERNEL_METADATA = "kernel-metadata.json"
LICENSE = "CC0-1.0"
NAME_LENGTH = (6, 50)  # characters of a dataset title and of its slug (kaggle datasets create)
_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def slugify(title: str) -> str:
    """Kaggle's slug of a title: ASCII, lowercase, each run of other characters one dash, no dash at the ends."""
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_title.lower()).strip("-")


def check_name(name: str) -> str:
    """The slug of ``name`` (the title of both the dataset and the kernel); ConfigError unless Kaggle accepts it."""
    slug = slugify(name)
    low, high = NAME_LENGTH
    for what, text in (("name", name), ("its slug", slug)):
        if not low <= len(text) <= high:
            raise ConfigError(f"--name {name!r}: {what} {text!r} has {len(text)} characters; Kaggle takes a dataset "
                              f"title and slug of {low} to {high}")
    return slug


def check_user(user: str) -> str:
    if not _USER.match(user or ""):
        raise ConfigError(f"--user {user!r}: not a Kaggle user name (letters, digits, '-' and '_')")
    return user


def dataset_metadata(user: str, slug: str, title: str) -> dict:
    return {"title": title, "id": f"{user}/{slug}", "licenses": [{"name": LICENSE}]}


def kernel_metadata(user: str, slug: str, title: str, code_file: str, dataset_id: str) -> dict:
    """A private notebook kernel: GPU on, internet off, the competition and the package dataset as inputs."""
    return {
        "id": f"{user}/{slug}",
        "title": title,
        "code_file": code_file,
        "language": "python",
        "kernel_type": "notebook",
        "is_private": "true",
        "enable_gpu": "true",
        "enable_internet": "false",
        "dataset_sources": [dataset_id],
        "competition_sources": [COMPETITION],
        "kernel_sources": [],
        "model_sources": [],
    }


def write_json(path: Path, content: dict) -> Path:
    return atomic_write_text(path, json.dumps(content, indent=2) + "\n")


def read_metadata(folder: Path, name: str) -> dict:
    """The metadata file ``name`` of a dataset or kernel folder, as a dict; ConfigError naming what is wrong."""
    path = Path(folder) / name
    if not path.is_file():
        raise ConfigError(f"{folder}: no {name} (build the folder with rsna2024 kaggle package)")
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(content, dict) or "id" not in content:
        raise ConfigError(f"{path}: expected a JSON object with an 'id'")
    return content
