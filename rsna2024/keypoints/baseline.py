"""The image-free keypoint baseline: each point at its mean position in the training folds' normalised canonical
image grid, placed on the true slice. A keypoint model must beat it by far, or it has learnt nothing."""
from __future__ import annotations

import pandas as pd

from rsna2024.keypoints.studies import StudySeries

OUTPUT_COLUMNS = ["study_id", "series_id", "instance_number", "condition", "level", "x", "y", "fold"]


def normalised_positions(truth: pd.DataFrame, studies: StudySeries) -> pd.DataFrame:
    """``truth`` (label rows) with the canonical slice index and the canonical position as a fraction of the
    image (``u = (x + 0.5) / cols``, ``v = (y + 0.5) / rows``) of each point."""
    rows = []
    for r in truth.itertuples(index=False):
        series = studies.load(int(r.study_id), int(r.series_id))
        index, xc, yc = series.stored_to_canonical(int(r.instance_number), r.x, r.y)
        n_rows, n_cols = series.pixels.shape[1:]
        rows.append((int(index), (xc + 0.5) / n_cols, (yc + 0.5) / n_rows))
    out = truth.copy()
    out[["slice_index", "u", "v"]] = pd.DataFrame(rows, index=truth.index, columns=["slice_index", "u", "v"])
    return out


def mean_position_baseline(truth: pd.DataFrame, folds: pd.DataFrame, studies: StudySeries) -> pd.DataFrame:
    """Out-of-fold baseline coordinates (columns of train_label_coordinates.csv plus ``fold``): for each study of
    fold k, each (condition, level) at the mean normalised position over the other folds, on the true slice."""
    pos = normalised_positions(truth, studies).merge(folds, on="study_id", how="inner")
    out = []
    for fold in sorted(pos["fold"].unique()):
        means = pos[pos["fold"] != fold].groupby(["condition", "level"])[["u", "v"]].mean()
        for r in pos[pos["fold"] == fold].itertuples(index=False):
            if (r.condition, r.level) not in means.index:
                continue
            u, v = means.loc[(r.condition, r.level)]
            series = studies.load(int(r.study_id), int(r.series_id))
            n_rows, n_cols = series.pixels.shape[1:]
            inst, x, y = series.canonical_to_stored(int(r.slice_index), u * n_cols - 0.5, v * n_rows - 0.5)
            out.append((r.study_id, r.series_id, int(inst), r.condition, r.level, float(x), float(y), int(fold)))
    return pd.DataFrame(out, columns=OUTPUT_COLUMNS).astype({"study_id": "int64", "series_id": "int64"})


def errors_summary(errors: pd.DataFrame) -> pd.Series:
    """Median 3-D error (mm) per series type of a :func:`rsna2024.keypoints.report.point_errors` table."""
    return errors.groupby("series_type")["error_mm"].median()

