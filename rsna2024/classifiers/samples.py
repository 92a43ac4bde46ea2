"""What stage 2 learns from: label points in patient mm and the sample tables of split and global models.

Points come from a coordinates file in the columns of ``train_label_coordinates.csv`` (``study_id,
series_id, instance_number, condition, level, x, y``; condition and level as the file's strings or in
snake case): the true one, or stage 1's predicted one (which may add ``confidence``, ``fold`` and the
patient point ``x_mm, y_mm, z_mm``). :func:`points_in_mm` gives every row its LPS point through
``Series.to_patient`` of the cached series (stored grid, the label convention) unless the file already
has it.

Sample tables (one row per model input):

- split (:func:`split_samples`): one row per (study, level, condition) of the model's conditions, e.g.
  both sides of the foramina: ``study_id, level, condition, row_id, label`` (-1 = missing) and the
  condition's point ``series_id, x_mm, y_mm, z_mm`` (NaN = no point);
- global (:func:`global_samples`): one row per (study, level) with ``label_<condition>`` and
  ``series_id_<condition>, x_mm_<condition>, ...`` for all five conditions.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rsna2024.constants import CONDITION_FROM_NAME, CONDITIONS, LEVEL_FROM_NAME, LEVELS
from rsna2024.data.contract import (
    COORDINATE_COLUMNS,
    check_unique,
    describe_items,
    file_lines,
    integer_column,
    labels_long,
    read_csv,
)
from rsna2024.errors import DataError, RsnaError
from rsna2024.utils.logging import get_logger

log = get_logger(__name__)
MM_COLUMNS = ("x_mm", "y_mm", "z_mm")
POINT_COLUMNS = ("study_id", "condition", "level", "series_id", *MM_COLUMNS)


def _snake(df: pd.DataFrame, column: str, mapping: dict[str, str], allowed, path) -> pd.Series:
    values = df[column].map(lambda v: mapping.get(v, v))
    bad = ~values.isin(list(allowed))
    if bad.any():
        rows = np.flatnonzero(bad.to_numpy())
        raise DataError(f"{path}: unknown {column} value(s) {describe_items(df.loc[bad, column].unique().tolist())} "
                        f"at line(s) {describe_items(file_lines(rows))}; expected one of {list(mapping)} "
                        f"(or snake case)")
    return values


def load_points(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """A coordinates file (or table) with snake-case ``condition`` and ``level``, checked: the label
    columns present, integer study ids, known conditions and levels, each (study, condition, level) once.

    A row left empty (no series, instance or x/y: stage 1 found no point) is dropped, and the count is
    logged; a value that is present but not a number is an error naming its line.
    """
    name = source if not isinstance(source, pd.DataFrame) else "points table"
    df = source.reset_index(drop=True).copy() if isinstance(source, pd.DataFrame) else \
        read_csv(source, COORDINATE_COLUMNS)
    missing = [c for c in COORDINATE_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{name}: missing column(s) {missing}; expected {list(COORDINATE_COLUMNS)}")
    df["study_id"] = integer_column(df, "study_id", name)
    df["condition"] = _snake(df, "condition", CONDITION_FROM_NAME, CONDITIONS, name)
    df["level"] = _snake(df, "level", LEVEL_FROM_NAME, LEVELS, name)
    check_unique(df, ["study_id", "condition", "level"], name)
    point = ["series_id", "instance_number", "x", "y"]
    empty = df[point].isna().any(axis=1)
    if empty.any():
        log.warning("%s: %d row(s) without a point (left empty by stage 1), e.g. %s", name, int(empty.sum()),
                    describe_items((df.loc[empty, "study_id"].astype(str) + " " + df.loc[empty, "condition"] + " "
                                    + df.loc[empty, "level"]).tolist(), 3))
        df = df[~empty]
    for column in ("series_id", "instance_number"):
        df[column] = integer_column(df, column, name)
    for column in ("x", "y"):
        values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=float)
        if not np.isfinite(values).all():
            rows = df.index[~np.isfinite(values)]
            raise DataError(f"{name}: column {column!r} must hold finite pixel positions; line(s) "
                            f"{describe_items(file_lines(rows))} do not")
        df[column] = values
    return df.reset_index(drop=True)


def points_in_mm(points: pd.DataFrame, load_series) -> pd.DataFrame:
    """``study_id, condition, level, series_id, x_mm, y_mm, z_mm`` of every row of ``points`` (see
    :func:`load_points`).

    Rows with finite ``x_mm, y_mm, z_mm`` keep them; the others are converted with
    ``load_series(study_id, series_id).to_patient(instance_number, x, y)``, one call per series. A row whose
    series cannot be loaded or lacks the instance gets NaN, and the rows lost are logged with the reason.
    """
    out = points.reset_index(drop=True).copy()
    for c in MM_COLUMNS:
        out[c] = pd.to_numeric(out[c], errors="coerce") if c in out else np.nan
    mm = out[list(MM_COLUMNS)].to_numpy(dtype=float)
    todo = out[~np.isfinite(mm).all(axis=1)]
    lost: list[str] = []
    for (study, series_id), rows in todo.groupby(["study_id", "series_id"]):
        try:
            series = load_series(int(study), int(series_id))
        except (RsnaError, KeyError, OSError, ValueError) as exc:  # not in the cache
            lost += [f"{study}/{series_id} {r.condition} {r.level} ({exc})" for r in rows.itertuples()]
            continue
        for i, r in zip(rows.index, rows.itertuples()):
            try:
                mm[i] = np.asarray(series.to_patient(int(r.instance_number), r.x, r.y), dtype=float).reshape(3)
            except KeyError as exc:  # an InstanceNumber the series does not have
                lost.append(f"{study}/{series_id} {r.condition} {r.level} ({exc})")
    out[list(MM_COLUMNS)] = mm
    if lost:
        log.warning("points without a patient position (%d): %s", len(lost), describe_items(lost, 3))
    return out[list(POINT_COLUMNS)]


def _with_points(long: pd.DataFrame, points_mm: pd.DataFrame | None) -> pd.DataFrame:
    if points_mm is None:
        points_mm = pd.DataFrame(columns=list(POINT_COLUMNS))
    merged = long.merge(points_mm[list(POINT_COLUMNS)], on=["study_id", "condition", "level"], how="left",
                        validate="one_to_one")
    merged["series_id"] = merged["series_id"].astype("Int64")
    for c in MM_COLUMNS:
        merged[c] = merged[c].astype(float)
    return merged


def row_grid(study_ids) -> pd.DataFrame:
    """``study_id, condition, level, row_id``: the 25 rows of each study, in ``train.csv`` column order."""
    grid = pd.MultiIndex.from_product([[int(s) for s in study_ids], CONDITIONS, LEVELS],
                                      names=["study_id", "condition", "level"]).to_frame(index=False)
    grid["row_id"] = grid["study_id"].astype(str) + "_" + grid["condition"] + "_" + grid["level"]
    return grid


def label_table(wide: pd.DataFrame | None, study_ids) -> pd.DataFrame:
    """Long labels (``study_id, condition, level, row_id, label``; -1 = missing) of ``study_ids``;
    without ``wide`` (test studies) every label is missing."""
    study_ids = [int(s) for s in study_ids]
    if wide is None:
        return row_grid(study_ids).assign(label=-1)
    long = labels_long(wide[wide["study_id"].isin(study_ids)])
    long = long.drop(columns="label").rename(columns={"label_index": "label"})
    return long[["study_id", "condition", "level", "row_id", "label"]].reset_index(drop=True)


def split_samples(labels: pd.DataFrame, points_mm: pd.DataFrame | None, conditions) -> pd.DataFrame:
    """One row per (study, level, condition in ``conditions``): its label and point (see module docstring)."""
    rows = labels[labels["condition"].isin(list(conditions))]
    return _with_points(rows, points_mm).sort_values(["study_id", "level", "condition"], ignore_index=True)


def global_samples(labels: pd.DataFrame, points_mm: pd.DataFrame | None) -> pd.DataFrame:
    """One row per (study, level): ``label_<c>``, ``row_id_<c>`` and the point columns ``<col>_<c>`` of
    every condition ``c``."""
    merged = _with_points(labels, points_mm).set_index(["study_id", "level", "condition"])
    parts = []
    for value in ("label", "row_id", "series_id", *MM_COLUMNS):
        part = merged[value].unstack("condition").reindex(columns=list(CONDITIONS))
        parts.append(part.set_axis([f"{value}_{c}" for c in CONDITIONS], axis=1))
    wide = pd.concat(parts, axis=1).reset_index()
    for c in CONDITIONS:
        wide[f"label_{c}"] = wide[f"label_{c}"].fillna(-1).astype("int64")
    return wide.sort_values(["study_id", "level"], ignore_index=True)


def has_point(samples: pd.DataFrame, condition: str | None = None) -> np.ndarray:
    """Per row, whether the point (of ``condition`` in a global table) is known."""
    suffix = f"_{condition}" if condition else ""
    return np.isfinite(samples[[f"{c}{suffix}" for c in MM_COLUMNS]].to_numpy(dtype=float)).all(axis=1)
