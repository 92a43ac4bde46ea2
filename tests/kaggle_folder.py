"""Test helper (not a test module): write small Kaggle-layout data folders with known content.

Labels are drawn from the real class frequencies; each study gets one series per type, a
coordinate row for every label, and optionally a few tiny real DICOM slices per series.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from rsna2024.constants import (
    CONDITION_NAMES,
    CONDITION_SERIES,
    LABELS,
    LEVEL_NAMES,
    REAL_CLASS_FREQUENCIES,
    SERIES_TYPES,
    TARGET_COLUMNS,
)
from rsna2024.synthetic.dicom_writer import SliceGeometry, write_mr_slice


def _find_realdata() -> Path:
    """``$RSNA2024_REALDATA``, else ``../shared/realdata`` beside the checkout (or beside the folder that holds it,
    as for a git worktree under ``wt/``)."""
    if os.environ.get("RSNA2024_REALDATA"):
        return Path(os.environ["RSNA2024_REALDATA"])
    root = Path(__file__).resolve().parents[1]
    candidates = [root.parent / "shared" / "realdata", root.parent.parent / "shared" / "realdata"]
    return next((c for c in candidates if c.is_dir()), candidates[0])


REALDATA = _find_realdata()
REAL_FILES = {
    "train.csv": "train.csv",
    "train_series_descriptions.csv": "train_series_descriptions.csv",
    "test_series_descriptions.csv": "test_series_descriptions.csv",
    "train_label_coordinates.csv": "train_label_coordinates_reconstructed.csv",
}


def link_realdata(dest: Path) -> Path:
    """Link the real label files into ``dest`` in Kaggle layout (skips the test when they are absent)."""
    import pytest

    if not all((REALDATA / src).is_file() for src in REAL_FILES.values()):
        pytest.skip(f"real label files not found in {REALDATA}")
    dest.mkdir(parents=True, exist_ok=True)
    for name, src in REAL_FILES.items():
        os.symlink(REALDATA / src, dest / name)
    return dest


def series_id(study: int, k: int) -> int:
    return study * 10 + k


def make_tables(n_studies: int = 12, seed: int = 0, first_study: int = 1000) -> dict[str, pd.DataFrame]:
    """The three train tables (``train.csv``, descriptions, coordinates) of a consistent small dataset."""
    rng = np.random.default_rng(seed)
    studies = list(range(first_study, first_study + n_studies))
    labels = {"study_id": studies}
    for target in TARGET_COLUMNS:
        labels[target] = rng.choice(LABELS, size=n_studies,
                                    p=np.divide(REAL_CLASS_FREQUENCIES[target], sum(REAL_CLASS_FREQUENCIES[target])))
    train = pd.DataFrame(labels)
    desc = pd.DataFrame([(s, series_id(s, k), t) for s in studies for k, t in enumerate(SERIES_TYPES)],
                        columns=["study_id", "series_id", "series_description"])
    coords = []
    for s in studies:
        for target in TARGET_COLUMNS:
            condition, level = target[:-6], target[-5:]
            k = SERIES_TYPES.index(CONDITION_SERIES[condition])
            coords.append((s, series_id(s, k), 3, CONDITION_NAMES[condition], LEVEL_NAMES[level], 10.5, 20.25))
    coords = pd.DataFrame(coords, columns=["study_id", "series_id", "instance_number", "condition", "level", "x", "y"])
    return {"train.csv": train, "train_series_descriptions.csv": desc, "train_label_coordinates.csv": coords}


def write_folder(root: Path, n_studies: int = 12, seed: int = 0, images: bool = False,
                 tables: dict[str, pd.DataFrame] | None = None) -> Path:
    """Write a Kaggle-layout folder into ``root``; ``tables`` (from :func:`make_tables`) may be edited first."""
    root.mkdir(parents=True, exist_ok=True)
    tables = tables if tables is not None else make_tables(n_studies, seed)
    for name, df in tables.items():
        df.to_csv(root / name, index=False)
    test_study = 9_999_999
    pd.DataFrame([(test_study, series_id(test_study, k), t) for k, t in enumerate(SERIES_TYPES)],
                 columns=["study_id", "series_id", "series_description"]).to_csv(
        root / "test_series_descriptions.csv", index=False)
    if images:
        for split, desc in (("train", tables["train_series_descriptions.csv"]),
                            ("test", pd.read_csv(root / "test_series_descriptions.csv"))):
            for row in desc.itertuples():
                write_series(root / f"{split}_images" / str(row.study_id) / str(row.series_id), row)
    return root


def write_series(folder: Path, row, n_slices: int = 2) -> None:
    """A couple of 8x8 real MR DICOM slices (instance numbers 3, 4, ...)."""
    for i in range(n_slices):
        geometry = SliceGeometry(position=(0.0, 0.0, float(i)), row_dir=(1, 0, 0), col_dir=(0, 1, 0),
                                 spacing=(1.0, 1.0), thickness=1.0)
        write_mr_slice(folder / f"{i + 3}.dcm", np.full((8, 8), 100 + i), geometry, instance_number=i + 3,
                       series_description=row.series_description, study_id=row.study_id, series_id=row.series_id)


def remove(path: Path) -> None:
    """Delete a file or folder tree."""
    shutil.rmtree(path) if path.is_dir() else path.unlink()
