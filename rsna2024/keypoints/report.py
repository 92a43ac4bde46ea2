"""How good are predicted coordinates: 3-D error in mm against the true label points, the axial slice choice,
and overlays of predicted against true points.

True points are the rows of ``train_label_coordinates.csv``; both sides go to patient mm through
``Series.to_patient`` on the cached series (the stored grid, as the files are written), so a prediction on the
wrong slice pays for its distance across slices too.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rsna2024.constants import AXIAL_T2, CONDITION_FROM_NAME, CONDITION_SERIES, LEVEL_FROM_NAME, LEVELS
from rsna2024.data.contract import load_coordinates, load_series_descriptions
from rsna2024.keypoints.studies import StudySeries
from rsna2024.utils.io import atomic_path, atomic_to_csv, atomic_write_text
from rsna2024.utils.logging import get_logger

log = get_logger(__name__)
KEYS = ["study_id", "condition", "level"]


def _patient_points(table: pd.DataFrame, studies: StudySeries) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) LPS mm of each row's stored (series_id, instance_number, x, y) (NaN where empty or not cached)
    and (N,) canonical slice index of its instance (-1 where unknown)."""
    mm = np.full((len(table), 3), np.nan)
    index = np.full(len(table), -1, dtype=np.int64)
    for k, row in enumerate(table.itertuples(index=False)):
        if not (np.isfinite(row.x) and np.isfinite(row.y) and np.isfinite(row.instance_number)):
            continue
        try:
            series = studies.load(int(row.study_id), int(row.series_id))
            mm[k] = np.asarray(series.to_patient(int(row.instance_number), row.x, row.y)).reshape(3)
            index[k] = series.index_of(int(row.instance_number))
        except (KeyError, OSError, ValueError) as exc:
            log.warning("study %s series %s: cannot place instance %s: %s", row.study_id, row.series_id,
                        row.instance_number, exc)
    return mm, index


def point_errors(pred: pd.DataFrame, truth: pd.DataFrame, studies: StudySeries) -> pd.DataFrame:
    """One row per true label point: its series type, the prediction's series/instance, the 3-D error (mm;
    NaN where no prediction) and, on the same series, the difference in canonical slice index."""
    truth = truth.copy()
    pred = pred.copy()
    for t in (truth, pred):
        t["instance_number"] = pd.to_numeric(t["instance_number"], errors="coerce")
    t_mm, t_idx = _patient_points(truth, studies)
    p_mm, p_idx = _patient_points(pred, studies)
    truth[["true_x_mm", "true_y_mm", "true_z_mm"]] = t_mm
    truth["true_slice"] = t_idx
    pred[["pred_x_mm", "pred_y_mm", "pred_z_mm"]] = p_mm
    pred["pred_slice"] = p_idx
    pred = pred.rename(columns={"series_id": "pred_series_id", "instance_number": "pred_instance_number",
                                "x": "pred_x", "y": "pred_y"})
    keep = KEYS + ["pred_series_id", "pred_instance_number", "pred_x", "pred_y", "pred_x_mm", "pred_y_mm",
                   "pred_z_mm", "pred_slice"] + [c for c in ("confidence", "fold") if c in pred]
    merged = truth.merge(pred[keep], on=KEYS, how="left", validate="one_to_one")
    merged["series_type"] = merged["condition"].map(lambda c: CONDITION_SERIES[CONDITION_FROM_NAME[c]])
    diff = merged[["pred_x_mm", "pred_y_mm", "pred_z_mm"]].to_numpy() - \
        merged[["true_x_mm", "true_y_mm", "true_z_mm"]].to_numpy()
    merged["error_mm"] = np.linalg.norm(diff, axis=1)
    same = merged["pred_series_id"] == merged["series_id"]
    merged["slice_diff"] = np.where(same & (merged["pred_slice"] >= 0) & (merged["true_slice"] >= 0),
                                    (merged["pred_slice"] - merged["true_slice"]).abs(), np.nan)
    return merged


def _summary(errors: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    g = errors.groupby(by, sort=False)["error_mm"]
    out = pd.DataFrame({"points": g.size(), "predicted": g.count(), "median_mm": g.median(),
                        "p90_mm": g.quantile(0.9), "mean_mm": g.mean()})
    return out.reset_index()


def error_table(errors: pd.DataFrame) -> pd.DataFrame:
    """Per series type and level (and per series type over all levels, level ``all``): the number of true
    points, how many have a prediction, and the median, 90th percentile and mean 3-D error in mm."""
    errors = errors.assign(level_key=errors["level"].map(LEVEL_FROM_NAME))
    per_level = _summary(errors, ["series_type", "level_key"])
    overall = _summary(errors, ["series_type"]).assign(level_key="all")
    table = pd.concat([per_level, overall], ignore_index=True).rename(columns={"level_key": "level"})
    order = {lv: i for i, lv in enumerate((*LEVELS, "all"))}
    return table.sort_values(["series_type", "level"], key=lambda c: c.map(order) if c.name == "level" else c,
                             ignore_index=True)


def axial_slice_table(errors: pd.DataFrame) -> pd.DataFrame:
    """Per level: of the (study, level) pairs with a true axial point, the share whose chosen axial slices lie
    within one slice of the true points' slices (same series) for EVERY side with a true point (a side without
    a prediction is a miss: the left and right points may choose different slices, and a level is right only
    when both are), and how many had no prediction at all."""
    ax = errors[errors["series_type"] == AXIAL_T2].assign(level_key=errors["level"].map(LEVEL_FROM_NAME))
    ax = ax.assign(side_ok=ax["slice_diff"].le(1))  # NaN (no prediction or another series) is False
    per = ax.groupby(["study_id", "level_key"]).agg(within_one=("side_ok", "all"), predicted=("pred_slice", "max"))
    rows = []
    for level in (*LEVELS, "all"):
        sub = per if level == "all" else per[per.index.get_level_values("level_key") == level]
        rows.append({"level": level, "levels": len(sub), "unpredicted": int((sub["predicted"] < 0).sum()),
                     "within_one_slice": float(sub["within_one"].mean()) if len(sub) else np.nan})
    return pd.DataFrame(rows)


def _markdown(df: pd.DataFrame, digits: int = 2) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        cells = [f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def draw_overlay(errors: pd.DataFrame, studies: StudySeries, study_id: int, png: str | Path) -> Path:
    """One study's predicted (x) against true (o) points on the canonical slices the predictions lie on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = errors[(errors["study_id"] == study_id) & errors["pred_slice"].ge(0)]
    panels = rows.groupby(["pred_series_id", "pred_slice", "series_type"], sort=True)
    n = max(len(panels), 1)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.9), squeeze=False)
    for ax, ((series_id, index, series_type), group) in zip(axes[0], panels):
        series = studies.load(study_id, int(series_id))
        ax.imshow(np.asarray(series.pixels[int(index)], dtype=np.float32), cmap="gray")
        for r in group.itertuples(index=False):
            px, py, _ = series.plane_coordinates(np.array([r.pred_x_mm, r.pred_y_mm, r.pred_z_mm]))
            tx, ty, _ = series.plane_coordinates(np.array([r.true_x_mm, r.true_y_mm, r.true_z_mm]))
            colour = "#d62728" if "Right" in r.condition else "#1f77b4" if "Left" in r.condition else "#ff7f0e"
            ax.plot(tx[int(index)], ty[int(index)], "o", mfc="none", mec=colour, ms=7, mew=1.2)
            ax.plot(px[int(index)], py[int(index)], "x", color=colour, ms=6, mew=1.5)
        kind = series_type if series_type != AXIAL_T2 else f"{series_type} {group['level'].iloc[0]}"
        ax.set_title(f"{kind}\nslice {int(index)}, median {group['error_mm'].median():.1f} mm", fontsize=7)
        ax.axis("off")
    fig.suptitle(f"study {study_id}: predicted x, true o (blue left, red right)", fontsize=8)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return Path(png)


def keypoint_report(data: str | Path, coords: str | Path | pd.DataFrame, out: str | Path, cache: str | Path,
                    overlays: int = 4) -> dict[str, pd.DataFrame]:
    """Write ``errors.csv`` (per series type and level), ``axial_slices.csv``, ``points.csv`` (every true
    point with its prediction and error), ``report.md`` and ``overlays/<study>.png`` for the ``overlays``
    studies with the largest median error into ``out``; return the tables."""
    out = Path(out)
    descriptions = load_series_descriptions(data, "train")
    truth = load_coordinates(data, descriptions)[["study_id", "series_id", "instance_number", "condition", "level",
                                                   "x", "y"]]
    pred = pd.read_csv(coords) if not isinstance(coords, pd.DataFrame) else coords
    truth = truth[truth["study_id"].isin(pred["study_id"].unique())]
    studies = StudySeries(cache, descriptions, "train")
    errors = point_errors(pred, truth, studies)
    table = error_table(errors)
    axial = axial_slice_table(errors)
    atomic_to_csv(errors, out / "points.csv")
    atomic_to_csv(table, out / "errors.csv")
    atomic_to_csv(axial, out / "axial_slices.csv")
    worst = errors.groupby("study_id")["error_mm"].median().sort_values(ascending=False)
    shown = [int(s) for s in worst.dropna().index[:overlays]]
    for sid in shown:
        draw_overlay(errors, studies, sid, out / "overlays" / f"{sid}.png")
    text = (f"# Keypoint report\n\ncoordinates: `{coords if not isinstance(coords, pd.DataFrame) else 'table'}`, "
            f"{errors['study_id'].nunique()} studies, {len(errors)} true points, "
            f"{int(errors['error_mm'].notna().sum())} predicted.\n\n"
            f"## 3-D error (mm) per series type and level\n\n{_markdown(table)}\n\n"
            f"## Axial slice chosen per level within one slice of the true one\n\n{_markdown(axial, 3)}\n\n"
            f"## Overlays (largest median error first)\n\n"
            + "\n".join(f"![study {s}](overlays/{s}.png)" for s in shown) + "\n")
    atomic_write_text(out / "report.md", text)
    log.info("keypoint report written to %s", out)
    return {"errors": table, "axial_slices": axial, "points": errors}
