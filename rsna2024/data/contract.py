"""The competition's CSV contract: read a Kaggle-layout data folder into validated tables.

Every loader checks what it reads and raises :class:`~rsna2024.errors.DataError` with a message that
names the file, the row (1-based line number in the file, the header being line 1) or column, and
what was expected. Missing labels stay missing (NaN); nothing is filled in.

Files are read as UTF-8 (with or without a byte-order mark); a file that starts with a UTF-16 byte-order
mark (what some spreadsheet programs write as "Unicode text") is decoded as UTF-16. An empty file, binary
data (NUL bytes, which includes UTF-16 without a byte-order mark), text in another encoding, a folder in
the file's place or a file that cannot be opened is a DataError naming the file, and so is a required column
named twice in the header or a row with more fields than the header (naming its line).
"""
from __future__ import annotations

import csv
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from rsna2024.constants import (
    CONDITION_FROM_NAME,
    CONDITION_NAMES,
    CONDITION_SERIES,
    COORDINATE_COLUMNS,
    COORDINATES_FILE,
    IMAGES_DIR,
    LABEL_INDEX,
    LABELS,
    LABELS_FILE,
    LEVEL_FROM_NAME,
    LEVEL_NAMES,
    SERIES_COLUMNS,
    SERIES_DESCRIPTIONS_FILE,
    SERIES_TYPES,
    SPLITS,
    SUBMISSION_COLUMNS,
    TARGET_COLUMNS,
)
from rsna2024.errors import DataError
from rsna2024.utils.io import text_encoding
from rsna2024.utils.messages import describe_items
from rsna2024.utils.messages import os_reason as _os_reason

# How many leading bytes decide a file's encoding (and whether it is binary).
_SNIFF_BYTES = 8192


def series_descriptions_file(data_dir: str | Path, split: str = "train") -> Path:
    """Path of ``<split>_series_descriptions.csv``."""
    return Path(data_dir) / SERIES_DESCRIPTIONS_FILE.format(split=_check_split(split))


def images_dir(data_dir: str | Path, split: str = "train") -> Path:
    """Path of the ``<split>_images`` folder."""
    return Path(data_dir) / IMAGES_DIR.format(split=_check_split(split))


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    return split


def file_lines(index: Iterable[int]) -> list[int]:
    """File line numbers (header = line 1) of positional row indices of a table read from CSV."""
    return [int(i) + 2 for i in index]


def join_keys(df: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """Each row's ``columns`` joined by ``/`` (e.g. ``'study/series'``), for messages."""
    return ["/".join(map(str, values)) for values in zip(*(df[c] for c in columns))]


def _rows(path: Path, encoding: str):
    """(line number, fields) of each non-blank row of a text file that decodes, as the csv module splits it."""
    with open(path, encoding=encoding, newline="") as fh:
        reader = csv.reader(fh)
        for fields in reader:
            if fields:
                yield reader.line_num, fields


def _header_problem(path: Path, encoding: str, columns: Sequence[str], long_rows: bool) -> str | None:
    """Why the file's header does not name ``columns`` once each, or (``long_rows``: pandas warned) which row
    holds more fields than the header (pandas would drop its extra values); None if neither."""
    rows = _rows(path, encoding)
    _, header = next(rows, (1, []))
    repeated = [c for c in columns if header.count(c) > 1]
    if repeated:
        return f"column(s) {repeated} appear more than once in the header"
    if long_rows:
        line = next((line for line, fields in rows if len(fields) > len(header)), None)
        return f"line {line or '?'} holds more fields than the header's {len(header)}"
    return None


def read_csv(path: str | Path, columns: Sequence[str], dtype=str, na_values: Sequence[str] | None = None,
             ) -> pd.DataFrame:
    """Read a contract CSV, checking it exists, is text (see the module docstring), holds ``columns`` once each
    (extra columns are kept) and no row longer than its header. Every column is read as text (``dtype``): each
    loader converts and checks its own columns, so a column of ``True``/``False`` is never read as 1/0.
    Cells pandas takes for missing (empty, ``NA``, ``nan``, ...) are NaN, or only ``na_values`` when given."""
    path = Path(path)
    expected = f"expected a CSV file with columns {describe_items(columns, show=4)}"
    if path.is_dir():
        raise DataError(f"{path}: is a folder; {expected}")
    if not path.is_file():
        raise DataError(f"{path}: file not found ({expected})")
    try:
        with open(path, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({_os_reason(exc)})") from exc
    if not head.strip():
        raise DataError(f"{path}: the file is empty; {expected}")
    encoding = text_encoding(head)
    if encoding is None:
        raise DataError(f"{path}: holds binary data (NUL bytes), not CSV text; {expected}, saved as UTF-8")
    try:
        with warnings.catch_warnings():  # a row longer than the header: pandas warns and drops its extra values
            warnings.simplefilter("error", pd.errors.ParserWarning)
            missing = {} if na_values is None else {"keep_default_na": False, "na_values": list(na_values)}
            df = pd.read_csv(path, encoding=encoding, dtype=dtype, index_col=False, **missing)
    except pd.errors.ParserWarning:
        df = None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not {'UTF-16' if encoding == 'utf-16' else 'UTF-8'} text ({exc.reason}); "
                        f"save it as UTF-8") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: not a readable CSV file ({' '.join(str(exc).split())}); {expected}") from exc
    problem = _header_problem(path, encoding, columns, long_rows=df is None)
    if problem is not None:
        raise DataError(f"{path}: {problem}; {expected}")
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
        combos = join_keys(df.loc[rows, keys].drop_duplicates(), keys)
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


# --------------------------------------------------------------------------- labels
def load_labels_wide(data_dir: str | Path) -> pd.DataFrame:
    """``train.csv``: ``study_id (int64)`` + the 25 target columns holding a label string or NaN.

    Raises DataError for a missing file or target column, a non-integer or repeated study id, or a
    cell that is neither a known label nor empty. Missing labels stay NaN.
    """
    path = Path(data_dir) / LABELS_FILE
    df = read_csv(path, ("study_id",) + TARGET_COLUMNS)
    df["study_id"] = integer_column(df, "study_id", path)
    for column in TARGET_COLUMNS:
        check_values(df, column, LABELS, path, allow_missing=True)
    check_unique(df, ["study_id"], path)
    return df[["study_id", *TARGET_COLUMNS]]


def labels_long(wide: pd.DataFrame) -> pd.DataFrame:
    """One row per (study, condition, level): ``study_id, condition, level, row_id, label, label_index``.

    ``condition`` and ``level`` are snake case; a missing label is NaN in ``label`` and -1 in
    ``label_index``. Rows come study by study in ``train.csv`` column order.
    """
    long = wide.melt(id_vars="study_id", value_vars=list(TARGET_COLUMNS), var_name="target", value_name="label")
    order = {t: i for i, t in enumerate(TARGET_COLUMNS)}
    long = long.assign(_order=long["target"].map(order)).sort_values(["study_id", "_order"], kind="stable")
    long["condition"] = long["target"].str[:-6]
    long["level"] = long["target"].str[-5:]
    long["row_id"] = long["study_id"].astype(str) + "_" + long["target"]
    long["label_index"] = long["label"].map(LABEL_INDEX).fillna(-1).astype("int64")
    return long[["study_id", "condition", "level", "row_id", "label", "label_index"]].reset_index(drop=True)


def load_labels_long(data_dir: str | Path) -> pd.DataFrame:
    """``train.csv`` in long form (see :func:`labels_long`)."""
    return labels_long(load_labels_wide(data_dir))


# --------------------------------------------------------------------------- submissions
def load_submission(path: str | Path) -> pd.DataFrame:
    """A submission-format CSV (an OOF file, say): ``row_id`` (str) and the three probability columns.

    Checks that the file reads (see the module docstring), has the columns and holds at least one row;
    the values and row ids are checked by :func:`rsna2024.metric.check_submission`.
    """
    path = Path(path)
    df = read_csv(path, SUBMISSION_COLUMNS, na_values=[""])  # a row id "NA" is named as written, not as nan
    if df.empty:
        raise DataError(f"{path}: holds a header but no rows; expected one row per row_id")
    return df


# --------------------------------------------------------------------------- coordinates
def load_coordinates(data_dir: str | Path, descriptions: pd.DataFrame | None = None) -> pd.DataFrame:
    """``train_label_coordinates.csv`` joined with each point's ``series_description``.

    Columns: the file's ``study_id, series_id, instance_number, condition, level, x, y`` (strings
    as in the file) plus snake-case ``condition_key``, ``level_key``, ``row_id`` and
    ``series_description``. Raises DataError for a missing column, non-integer ids, unknown
    condition or level strings, non-finite x/y, a (study, condition, level) given twice, or a point
    on a series that ``train_series_descriptions.csv`` does not describe.
    """
    path = Path(data_dir) / COORDINATES_FILE
    if descriptions is None:
        descriptions = load_series_descriptions(data_dir, "train")
    df = read_csv(path, COORDINATE_COLUMNS)
    for column in ("study_id", "series_id", "instance_number"):
        df[column] = integer_column(df, column, path)
    check_values(df, "condition", CONDITION_NAMES.values(), path)
    check_values(df, "level", LEVEL_NAMES.values(), path)
    for column in ("x", "y"):
        values = pd.to_numeric(df[column], errors="coerce")
        bad = ~np.isfinite(values.to_numpy(dtype=float))
        if bad.any():
            raise DataError(f"{path}: column {column!r} must hold finite numbers (pixel positions); line(s) "
                            f"{describe_items(file_lines(np.flatnonzero(bad)))} do not")
        df[column] = values.astype(float)
    check_unique(df, ["study_id", "condition", "level"], path)
    df["condition_key"] = df["condition"].map(CONDITION_FROM_NAME)
    df["level_key"] = df["level"].map(LEVEL_FROM_NAME)
    df["row_id"] = df["study_id"].astype(str) + "_" + df["condition_key"] + "_" + df["level_key"]
    joined = df.merge(descriptions[["study_id", "series_id", "series_description"]],
                      on=["study_id", "series_id"], how="left", validate="many_to_one")
    orphan = joined["series_description"].isna()
    if orphan.any():
        rows = np.flatnonzero(orphan.to_numpy())
        pairs = join_keys(joined.loc[orphan, ["study_id", "series_id"]].drop_duplicates(), ["study_id", "series_id"])
        raise DataError(f"{path}: line(s) {describe_items(file_lines(rows))} point to (study_id/series_id) "
                        f"{describe_items(pairs)}, which train_series_descriptions.csv does not describe; "
                        f"expected every labelled series to be listed there")
    return joined


def series_type_mismatches(coordinates: pd.DataFrame) -> pd.DataFrame:
    """Coordinate rows marked on a series type other than the one their condition is read on."""
    expected = coordinates["condition_key"].map(CONDITION_SERIES)
    return coordinates[expected != coordinates["series_description"]]


# --------------------------------------------------------------------------- images
def list_image_folders(data_dir: str | Path, split: str = "train", allow_empty_studies: bool = False) -> pd.DataFrame:
    """The ``<split>_images/<study>/<series>/*.dcm`` tree as ``study_id, series_id, n_files``.

    Only lists folders and file names (no DICOM is read). Folders whose names are not integers are
    ignored. Raises DataError when the images folder is missing or (unless ``allow_empty_studies``) a
    study folder holds no ``.dcm`` file in any series folder. A series folder without ``.dcm`` files
    gets ``n_files`` 0.
    """
    root = images_dir(data_dir, split)
    if not root.is_dir():
        raise DataError(f"{root}: images folder not found (expected <study_id>/<series_id>/*.dcm under it)")
    rows, empty = [], []
    studies = sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit())
    for study in tqdm(studies, desc=f"listing {root.name}", unit="study", leave=False, disable=len(studies) < 100):
        study_rows = [(int(study.name), int(series.name), sum(1 for _ in series.glob("*.dcm")))
                      for series in sorted(study.iterdir()) if series.is_dir() and series.name.isdigit()]
        if not any(n for _, _, n in study_rows):
            empty.append(study.name)
        rows.extend(study_rows)
    if empty and not allow_empty_studies:
        raise DataError(f"{root}: study folder(s) {describe_items(empty)} hold no images; expected "
                        f"<study_id>/<series_id>/*.dcm")
    return pd.DataFrame(rows, columns=["study_id", "series_id", "n_files"]).astype("int64")
