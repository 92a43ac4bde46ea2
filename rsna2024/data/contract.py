"""The competition's CSV contract: read a Kaggle-layout data folder into validated tables.

Every loader checks what it reads and raises :class:`~rsna2024.errors.DataError` with a message that
names the file, the row (1-based line number in the file, the header being line 1) or column, and
what was expected. Missing labels stay missing (NaN); nothing is filled in.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from rsna2024.constants import (
    CONDITION_FROM_NAME,
    CONDITION_NAMES,
    CONDITION_SERIES,
    CONDITIONS,
    LABEL_INDEX,
    LABELS,
    LEVEL_FROM_NAME,
    LEVEL_NAMES,
    LEVELS,
    SERIES_TYPES,
    TARGET_COLUMNS,
)
from rsna2024.errors import DataError

SPLITS: tuple[str, ...] = ("train", "test")
LABELS_FILE = "train.csv"
COORDINATES_FILE = "train_label_coordinates.csv"
SERIES_COLUMNS: tuple[str, ...] = ("study_id", "series_id", "series_description")
COORDINATE_COLUMNS: tuple[str, ...] = ("study_id", "series_id", "instance_number", "condition", "level", "x", "y")
# How many offending rows an error message lists before it gives a count.
_SHOW = 5


def series_descriptions_file(data_dir: str | Path, split: str = "train") -> Path:
    """Path of ``<split>_series_descriptions.csv``."""
    return Path(data_dir) / f"{_check_split(split)}_series_descriptions.csv"


def images_dir(data_dir: str | Path, split: str = "train") -> Path:
    """Path of the ``<split>_images`` folder."""
    return Path(data_dir) / f"{_check_split(split)}_images"


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    return split


def file_lines(index: Iterable[int]) -> list[int]:
    """File line numbers (header = line 1) of positional row indices of a table read from CSV."""
    return [int(i) + 2 for i in index]


def describe_items(items: Sequence, show: int = _SHOW) -> str:
    """``'a, b, c (and 12 more)'``: the first few items and a count of the rest."""
    items = list(items)
    text = ", ".join(str(i) for i in items[:show])
    return text + (f" (and {len(items) - show} more)" if len(items) > show else "")


def read_csv(path: str | Path, columns: Sequence[str]) -> pd.DataFrame:
    """Read a contract CSV, checking it exists and holds ``columns`` (extra columns are kept)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected a CSV with columns {list(columns)})")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc})") from exc
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; expected columns {list(columns)}, "
                        f"found {list(df.columns)}")
    return df.reset_index(drop=True)


def integer_column(df: pd.DataFrame, column: str, path: str | Path) -> pd.Series:
    """``df[column]`` as int64, or a DataError naming the rows that are not whole numbers."""
    values = pd.to_numeric(df[column], errors="coerce")
    bad = values.isna() | (values != np.floor(values))
    if bad.any():
        rows = bad[bad].index
        raise DataError(f"{path}: column {column!r} must hold integers; line(s) "
                        f"{describe_items(file_lines(rows))} hold {describe_items(df.loc[rows, column].tolist())}")
    return values.astype("int64")


def check_values(df: pd.DataFrame, column: str, allowed: Iterable[str], path: str | Path,
                 allow_missing: bool = False) -> None:
    """Raise a DataError naming the lines of ``df[column]`` whose value is not in ``allowed``."""
    allowed = list(allowed)
    present = df[column].notna()
    bad = ~df[column].isin(allowed) & (present | (not allow_missing))
    if bad.any():
        rows = bad[bad].index
        raise DataError(f"{path}: unknown {column} value(s) {describe_items(df.loc[rows, column].unique().tolist())} "
                        f"at line(s) {describe_items(file_lines(rows))}; expected one of {allowed}")


def check_unique(df: pd.DataFrame, keys: list[str], path: str | Path) -> None:
    """Raise a DataError naming duplicated ``keys`` combinations and their lines."""
    dup = df.duplicated(keys, keep=False)
    if dup.any():
        rows = dup[dup].index
        combos = df.loc[rows, keys].drop_duplicates().astype(str).agg("/".join, axis=1).tolist()
        raise DataError(f"{path}: duplicate ({', '.join(keys)}) {describe_items(combos)} at line(s) "
                        f"{describe_items(file_lines(rows))}; expected each combination once")


# --------------------------------------------------------------------------- series descriptions
def load_series_descriptions(data_dir: str | Path, split: str = "train") -> pd.DataFrame:
    """``<split>_series_descriptions.csv`` as ``study_id (int64), series_id (int64), series_description``.

    Raises DataError for a missing file or column, non-integer ids, an unknown series description
    or a series listed twice.
    """
    path = series_descriptions_file(data_dir, split)
    df = read_csv(path, SERIES_COLUMNS)
    df["study_id"] = integer_column(df, "study_id", path)
    df["series_id"] = integer_column(df, "series_id", path)
    check_values(df, "series_description", SERIES_TYPES, path)
    check_unique(df, ["study_id", "series_id"], path)
    return df[list(SERIES_COLUMNS)].astype({"series_description": str})
