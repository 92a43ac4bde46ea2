"""How widely label points spread over the image, and what the constant mean-position answer costs.

Works on a coordinate table (the columns of ``train_label_coordinates.csv``) with the labelled
instance's ``rows`` and ``cols`` added. :func:`planned_coordinates` builds such a table from planned
phantom studies (nothing rendered) with each row's slice plan, for fast checks; the bench
``bench/phantom_spread.py`` builds it from a written dataset and its DICOM headers.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from rsna2024.constants import CONDITION_FROM_NAME, CONDITION_SERIES
from rsna2024.synthetic.generate import COORD_COLUMNS, coordinate_rows, plan_dataset, plan_study
from rsna2024.synthetic.quirks import QuirkRates
from rsna2024.synthetic.series import SlicePlan

GROUP = ["condition", "level"]


def planned_coordinates(studies: int, size: str, seed: int = 0,
                        quirks: QuirkRates | None = None) -> tuple[pd.DataFrame, list[SlicePlan]]:
    """Coordinate rows of ``studies`` planned training studies, with ``rows`` and ``cols`` of each labelled
    instance, and the slice plan of each row (same order)."""
    rows, planes = [], []
    for spec in plan_dataset(studies, 0, seed, quirks):
        anat, _, plans, _ = plan_study(spec, size)
        by_key = {(p.series_id, sl.instance_number): sl for p in plans for sl in p.slices}
        for row in coordinate_rows(spec, anat, plans):
            sl = by_key[(row[1], row[2])]
            rows.append((*row, sl.rows, sl.cols))
            planes.append(sl)
    return pd.DataFrame(rows, columns=[*COORD_COLUMNS, "rows", "cols"]), planes


def series_type(coords: pd.DataFrame) -> pd.Series:
    """The series description each row's condition is labelled on."""
    return coords.condition.map(lambda c: CONDITION_SERIES[CONDITION_FROM_NAME[c]])


def normalised(coords: pd.DataFrame) -> pd.DataFrame:
    """``xn`` = x / cols and ``yn`` = y / rows of each row (position as a fraction of the image)."""
    return pd.DataFrame({"condition": coords.condition, "level": coords.level,
                         "xn": coords.x / coords.cols, "yn": coords.y / coords.rows}, index=coords.index)


def spread_table(coords: pd.DataFrame) -> pd.DataFrame:
    """Standard deviation of the normalised x and y per condition and level (columns ``x``, ``y``)."""
    table = normalised(coords).groupby(GROUP)[["xn", "yn"]].std()
    return table.rename(columns={"xn": "x", "yn": "y"})


def mean_position_guess(coords: pd.DataFrame) -> pd.DataFrame:
    """The constant answer: per condition and level the mean normalised position over all rows, in pixels of
    each row's own image (columns ``x``, ``y``, same index as ``coords``)."""
    norm = normalised(coords)
    mean = norm.groupby(GROUP)[["xn", "yn"]].transform("mean")
    return pd.DataFrame({"x": mean.xn * coords.cols, "y": mean.yn * coords.rows}, index=coords.index)


def guess_errors(coords: pd.DataFrame, to_patient: Callable[[int, float, float], np.ndarray]) -> np.ndarray:
    """Patient-space distance (mm) between each row's point and the mean-position guess on the same slice;
    ``to_patient(i, x, y)`` maps pixel (x, y) of row ``i`` (positional) to patient mm."""
    guess = mean_position_guess(coords)
    return np.array([np.linalg.norm(to_patient(i, gx, gy) - to_patient(i, x, y))
                     for i, (x, y, gx, gy) in enumerate(zip(coords.x, coords.y, guess.x, guess.y))])
