"""The kernel's inference notebook, generated from the template ``kernels/inference.ipynb`` of the checkout.

The template is a plain notebook whose cells hold ``{{placeholder}}`` fields (:data:`FIELDS`); its last cell, tagged
``predict``, is the one ``rsna2024 predict`` call. Rendering fills every field and refuses a template with an
unknown field or without that cell, so a generated notebook never carries a ``{{...}}`` into Kaggle.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from rsna2024.errors import ConfigError
from rsna2024.utils.io import atomic_write_text

TEMPLATE = Path("kernels") / "inference.ipynb"  # relative to the checkout
PREDICT_TAG = "predict"
FIELDS = ("title", "kit_version", "dataset_id", "dataset_slug", "competition")
_FIELD = re.compile(r"\{\{(\w+)\}\}")


def default_template() -> Path:
    from rsna2024.kaggle.wheels import source_root

    return source_root() / TEMPLATE


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def load_template(path: Path) -> dict:
    """The template notebook as a dict, checked: a notebook (nbformat 4) whose last cell is a code cell tagged
    ``predict`` (the only one) and whose fields are all known."""
    try:
        nb = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable notebook ({exc})") from None
    cells = nb.get("cells") if isinstance(nb, dict) else None
    if nb.get("nbformat") != 4 or not cells:
        raise ConfigError(f"{path}: expected an nbformat 4 notebook with cells")
    tagged = [i for i, c in enumerate(cells) if PREDICT_TAG in c.get("metadata", {}).get("tags", [])]
    if tagged != [len(cells) - 1] or cells[-1].get("cell_type") != "code":
        raise ConfigError(f"{path}: the last cell, and only it, must be a code cell tagged {PREDICT_TAG!r} "
                          f"(tagged cells: {tagged} of {len(cells)})")
    unknown = sorted({f for c in cells for f in _FIELD.findall(_source(c))} - set(FIELDS))
    if unknown:
        raise ConfigError(f"{path}: unknown template fields {unknown} (known: {list(FIELDS)})")
    return nb


def render_notebook(template: Path, values: dict[str, str]) -> dict:
    """The template with every ``{{field}}`` replaced by ``values[field]``; outputs and execution counts cleared."""
    missing = sorted(set(FIELDS) - set(values))
    if missing:
        raise ConfigError(f"render_notebook: no value for {missing}")
    nb = load_template(template)
    for cell in nb["cells"]:
        cell["source"] = _FIELD.sub(lambda m: str(values[m.group(1)]), _source(cell)).splitlines(keepends=True)
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    return nb


def write_notebook(nb: dict, path: Path) -> Path:
    return atomic_write_text(path, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
