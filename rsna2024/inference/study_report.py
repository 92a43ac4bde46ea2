"""The study report: one self-contained HTML page showing, for one study, what the models saw and concluded
(``rsna2024 report``).

Top to bottom:

- the study's series per type, and why a type is missing (every other part renders without it);
- the images: the Sagittal T2/STIR slice of the spinal points, the Sagittal T1 slices of the left and right
  foraminal points and, per level, the Axial T2 slice assigned to it; each with the predicted points (x), the
  true ones (o) of a training study, and the square region of interest cut around each predicted point
  (:func:`rsna2024.dicom.geometry.roi_square`, the ``roi`` settings of the first classifier run);
- the axial slices of each level as stage 1 and the classifiers take them (:func:`rsna2024.dicom.levels.level_slices`
  around the spinal points, within the axial keypoint run's ``max_distance_mm``): the level's slice and the
  slices of its block it may move to;
- the 5 x 5 table (conditions x levels) of predicted severities with their probabilities, colour-coded,
  beside the labels of ``train.csv`` when known;
- stage 1 per point: where it is, its confidence (heatmap peak), the slices its region is cut from
  (:func:`rsna2024.classifiers.roi.condition_slices`) and its distance to the true point;
- the warnings logged while the study was read (its DICOM series read again) and predicted.

Keypoint runs (``keypoint_*``) predict the points (:class:`~rsna2024.keypoints.coords.CoordinatePredictor` on
this study); classifier runs (``split_*``, ``global``) the severities around them (:func:`classifier_predictions`).
A training study is predicted by each run's model of the study's fold in ``folds.csv`` (the one that did not
see it) when the run has it, else by the mean of the run's folds, with a warning; a test study by the mean of
the folds. Without keypoint runs the classifiers read a training study's true points. Images are PNG files
embedded as base64, so the page needs no other file and no network.
"""
from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from rsna2024.classifiers.roi import RoiConfig, condition_slices, side_of
from rsna2024.constants import (
    AXIAL_T2,
    CONDITION_NAMES,
    CONDITIONS,
    LABELS,
    LEVEL_NAMES,
    LEVELS,
    PRED_COLUMNS,
    SAGITTAL_T1,
    SAGITTAL_T2,
    SERIES_TYPES,
    row_id,
)
from rsna2024.dicom.geometry import DEFAULT_LEVEL_MAX_DISTANCE_MM, roi_square, slices_at_offsets
from rsna2024.dicom.levels import level_slices
from rsna2024.errors import RsnaError
from rsna2024.utils.io import atomic_write_text, check_overwrite
from rsna2024.utils.logging import captured_warnings, get_logger

log = get_logger(__name__)

SPINAL = "spinal_canal_stenosis"
SUBARTICULAR = ("left_subarticular_stenosis", "right_subarticular_stenosis")
SAGITTAL_PANELS = (  # title, series type, condition
    ("Sagittal T2/STIR: spinal canal", SAGITTAL_T2, SPINAL),
    ("Sagittal T1: left foramina", SAGITTAL_T1, "left_neural_foraminal_narrowing"),
    ("Sagittal T1: right foramina", SAGITTAL_T1, "right_neural_foraminal_narrowing"),
)
SIDE_COLOURS = {"left": (31, 119, 180), "right": (214, 39, 40), None: (255, 165, 0)}
SEVERITY_COLOURS = ((44, 160, 44), (255, 127, 14), (214, 39, 40))  # normal/mild, moderate, severe
PANEL_SIDE = 320  # px: a slice is enlarged by the whole factor that brings its long side nearest this


# --------------------------------------------------------------------------- what the page shows
@dataclass
class Panel:
    """One image of the page (PNG bytes), or a note where it cannot be drawn."""

    title: str
    caption: str = ""
    png: bytes | None = None


@dataclass
class StudyReport:
    """Everything the page shows; :func:`build_study_report` fills it, :func:`render_html` writes it."""

    study_id: int
    split: str
    data_dir: str
    study_fold: int | None
    runs: list[str]  # one line per run: name, task, folds used
    series: dict[str, list[int]]  # readable series ids per type
    missing: dict[str, str]  # series type -> why the study has none readable
    points_source: str  # "predicted", "true" or "none"
    points: pd.DataFrame  # one row per (condition, level): see _point_table
    predictions: pd.DataFrame | None  # row_id, the three columns, runs (None: no classifier run)
    labels: dict[str, str] | None  # row_id -> label ("" where missing); None for a test study
    axial_levels: pd.DataFrame  # per level: the axial slices assigned to it
    panels: list[Panel] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- runs and folds
def _study_split(data_dir: Path, study_id: int, split: str | None) -> tuple[str, pd.DataFrame]:
    """The split listing the study and its rows of ``<split>_series_descriptions.csv``."""
    from rsna2024.data.contract import load_series_descriptions, series_descriptions_file

    splits = [split] if split else [s for s in ("train", "test") if series_descriptions_file(data_dir, s).is_file()]
    for sp in splits:
        descriptions = load_series_descriptions(data_dir, sp)
        rows = descriptions[descriptions["study_id"] == study_id]
        if len(rows):
            return sp, rows
    where = " or ".join(f"{s}_series_descriptions.csv" for s in splits) or "no series descriptions file"
    raise RsnaError(f"study {study_id} is not listed in {data_dir}: {where}")


def _study_fold(data_dir: Path, study_id: int, split: str, folds_path: str | Path | None) -> int | None:
    """The study's fold in ``folds.csv`` (None for a test study, or with a warning when it has none)."""
    if split != "train":
        return None
    from rsna2024.data.folds import load_folds

    path = Path(folds_path) if folds_path is not None else data_dir / "folds.csv"
    if not path.is_file():
        log.warning("no %s: every run's folds are averaged, and they may have trained on study %s", path, study_id)
        return None
    folds = load_folds(path)
    hit = folds.loc[folds["study_id"] == study_id, "fold"]
    if hit.empty:
        log.warning("study %s is not in %s: every run's folds are averaged", study_id, path)
        return None
    return int(hit.iloc[0])


def _run_config(run_dir: Path):
    """The typed config of a run folder (its ``config.yaml``)."""
    from rsna2024.training.checkpoint import CONFIG_FILE
    from rsna2024.training.config import load_config

    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise RsnaError(f"{run_dir}: no {CONFIG_FILE}; --runs takes run folders written by `rsna2024 train` "
                        f"(runs/<experiment>)")
    return load_config(path)


def _choose_folds(run_dir: Path, study_id: int, study_fold: int | None) -> tuple[list[int], str]:
    """The fold models of a run that predict the study, and how they were chosen (module docstring)."""
    from rsna2024.training.checkpoint import run_folds

    have = run_folds(run_dir)
    if not have:
        raise RsnaError(f"{run_dir}: no fold*_best.pt checkpoint; train the run first (`rsna2024 train`)")
    if study_fold is not None and study_fold in have:
        return [study_fold], f"fold {study_fold} (out of fold)"
    if study_fold is not None:
        log.warning("%s has no fold %d model (the fold that left study %s out): its output is the mean of folds "
                    "%s, which trained on this study", run_dir.name, study_fold, study_id, have)
    return have, "mean of folds " + ", ".join(map(str, have))


def classifier_predictions(runs: Sequence[tuple[Path, Sequence[int]]], cache: Path, study_id: int,
                           points_mm: pd.DataFrame, device: str = "auto") -> pd.DataFrame:
    """The classifier runs' probabilities of one study: per run the mean of its ``folds``' models, then per row
    id the mean over the runs that predict it (``row_id``, the three columns, ``runs``: how many); rows no run
    predicts (no point or series) are absent. The one place the report asks the classifiers."""
    from rsna2024.classifiers.dataset import SeriesStore
    from rsna2024.inference.ensemble import blend
    from rsna2024.inference.predict import mean_rows
    from rsna2024.keypoints.coords import resolve_device
    from rsna2024.training.checkpoint import load_run_models
    from rsna2024.training.task import create_task

    dev = resolve_device(device)
    store = SeriesStore(cache)
    tables = {}
    for run_dir, folds in runs:
        cfg, models = load_run_models(run_dir, dev, folds)
        task = create_task(cfg)
        tables[str(run_dir)] = mean_rows([task.predict_studies(m, store, [study_id], points_mm, dev)
                                          for m in models.values()])
    columns = ["row_id", *PRED_COLUMNS, "runs"]
    if not tables:
        return pd.DataFrame(columns=columns)
    out = blend(tables)
    out["runs"] = out["row_id"].map(pd.concat(tables.values())["row_id"].value_counts())
    return out[columns]


# --------------------------------------------------------------------------- points
def _points_mm(table: pd.DataFrame | None, load) -> pd.DataFrame | None:
    """A coordinates table in patient mm (snake-case condition and level), rows without a point dropped."""
    from rsna2024.classifiers.samples import load_points, points_in_mm

    if table is None:
        return None
    kept = load_points(table)
    return points_in_mm(kept, load).merge(kept[["condition", "level", "instance_number", "x", "y"]],
                                          on=["condition", "level"], how="left")


def _point(table: pd.DataFrame | None, condition: str, level: str) -> pd.Series | None:
    if table is None:
        return None
    hit = table[(table["condition"] == condition) & (table["level"] == level)]
    if hit.empty or not np.isfinite(hit[["x_mm", "y_mm", "z_mm"]].to_numpy(dtype=float)).all():
        return None
    return hit.iloc[0]


def _mm(row: pd.Series) -> np.ndarray:
    return row[["x_mm", "y_mm", "z_mm"]].to_numpy(dtype=float)


def _instances(series, slices) -> str:
    """InstanceNumbers of canonical slices, e.g. ``'12, 13, 14'``."""
    return ", ".join(str(int(series.instance_numbers[int(i)])) for i in slices)


def _point_table(study_id: int, used: pd.DataFrame | None, coords: pd.DataFrame | None,
                 truth: pd.DataFrame | None, load, roi: RoiConfig) -> pd.DataFrame:
    """One row per (condition, level): the point used (series, instance, stored x, y), its confidence when
    predicted, the instances its region is cut from, the true point and the 3-D distance between them (mm)."""
    rows = []
    for condition in CONDITIONS:
        for level in LEVELS:
            row = {"row_id": row_id(study_id, condition, level), "condition": condition, "level": level}
            point, true = _point(used, condition, level), _point(truth, condition, level)
            if point is not None:
                series = load(study_id, int(point["series_id"]))
                row.update(series_id=int(point["series_id"]), instance_number=int(point["instance_number"]),
                           x=float(point["x"]), y=float(point["y"]),
                           roi_instances=_instances(series, condition_slices(series, condition, level, _mm(point),
                                                                             roi)))
            if coords is not None:
                hit = coords[(coords["condition"] == CONDITION_NAMES[condition])
                             & (coords["level"] == LEVEL_NAMES[level])]
                row["confidence"] = float(hit["confidence"].iloc[0]) if len(hit) else np.nan
            if true is not None:
                row.update(true_series_id=int(true["series_id"]), true_instance_number=int(true["instance_number"]),
                           true_x=float(true["x"]), true_y=float(true["y"]))
                if point is not None:
                    row["error_mm"] = float(np.linalg.norm(_mm(point) - _mm(true)))
            rows.append(row)
    table = pd.DataFrame(rows)
    ints = [c for c in ("series_id", "instance_number", "true_series_id", "true_instance_number") if c in table]
    return table.astype({c: "Int64" for c in ints})


# --------------------------------------------------------------------------- drawing
def draw_slice(series, index: int, marks: Sequence[tuple], boxes: Sequence[tuple]) -> bytes:
    """PNG of canonical slice ``index`` enlarged (:data:`PANEL_SIDE`) with ``marks`` ``(x, y, kind, colour,
    text)`` (canonical pixels; kind ``pred`` draws an x, ``true`` an o) and ``boxes`` ``((x0, y0, x1, y1),
    colour)`` (canonical pixel edges, :func:`~rsna2024.dicom.geometry.roi_square`)."""
    from PIL import Image, ImageDraw, ImageFont

    img = np.asarray(series.pixels[int(index)], dtype=np.float32)
    lo, hi = np.percentile(img, [1.0, 99.5])
    grey = (np.clip((img - lo) / max(hi - lo, 1e-6), 0.0, 1.0) * 255).astype(np.uint8)
    scale = max(1, round(PANEL_SIDE / max(img.shape)))
    canvas = Image.fromarray(grey).resize((img.shape[1] * scale, img.shape[0] * scale), Image.BILINEAR).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=11)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        font = ImageFont.load_default()

    def at(x, y):  # canonical pixel (centres at whole numbers) -> canvas coordinates
        return (x + 0.5) * scale, (y + 0.5) * scale

    for (x0, y0, x1, y1), colour in boxes:
        draw.rectangle([at(x0, y0), at(x1, y1)], outline=colour, width=1)
    for x, y, kind, colour, text in marks:
        cx, cy = at(x, y)
        if kind == "true":
            draw.ellipse([cx - 6, cy - 6, cx + 6, cy + 6], outline=colour, width=2)
        else:
            draw.line([cx - 5, cy - 5, cx + 5, cy + 5], fill=colour, width=2)
            draw.line([cx - 5, cy + 5, cx + 5, cy - 5], fill=colour, width=2)
        if text:
            draw.text((cx + 8, cy - 6), text, fill=colour, font=font)
    buffer = io.BytesIO()
    canvas.quantize(colors=96).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _panel(series, index: int, title: str, conditions: Sequence[str], levels: Sequence[str], used, truth,
           roi: RoiConfig, note: str) -> Panel:
    """A slice with the points of ``conditions`` at ``levels`` (used: x and its region; true: o)."""
    marks, boxes, off = [], [], []
    spacing = series.slice_spacing or 1.0
    for condition in conditions:
        colour = SIDE_COLOURS[side_of(condition)]
        for level in levels:
            for table, kind in ((used, "pred"), (truth, "true")):
                point = _point(table, condition, level)
                if point is None:
                    continue
                xs, ys, zs = series.plane_coordinates(_mm(point))
                text = LEVEL_NAMES[level] if kind == "pred" or _point(used, condition, level) is None else ""
                marks.append((xs[index], ys[index], kind, colour, text))
                if abs(zs[index]) > spacing / 2:
                    off.append(f"{LEVEL_NAMES[level]} {kind} {zs[index]:+.1f} mm")
                if kind == "pred":
                    boxes.append((roi_square(series, _mm(point), roi.size_mm, index), colour))
    caption = (f"series {series.series_id}, slice {index + 1} of {len(series.instance_numbers)} "
               f"(instance {int(series.instance_numbers[index])}){note}")
    if off:
        caption += "; off this slice: " + ", ".join(off)
    return Panel(title, caption, draw_slice(series, index, marks, boxes))


def _shown_slice(series, points: list[np.ndarray], fallback: int) -> int:
    """The slice most of ``points`` are nearest (``fallback`` without points)."""
    if not points:
        return int(fallback)
    nearest = [series.nearest_slice(p)[0] for p in points]
    return int(max(set(nearest), key=nearest.count))


def _sagittal_panels(studies, study_id: int, used, truth, roi: RoiConfig) -> list[Panel]:
    panels = []
    for title, series_type, condition in SAGITTAL_PANELS:
        ids = studies.series_ids(study_id, series_type)
        if not ids:
            continue
        points = [p for table in (used, truth) for p in [_point(table, condition, lv) for lv in LEVELS]
                  if p is not None]
        on = [int(p["series_id"]) for p in points if int(p["series_id"]) in ids]
        series = studies.load(study_id, max(set(on), key=on.count) if on else ids[0])
        mine = [_mm(p) for p in points if int(p["series_id"]) == series.series_id]
        side = side_of(condition)
        fallback = slices_at_offsets(series, [roi.foraminal_offset("l3_l4", side) if side else 0.0])[0]
        index = _shown_slice(series, mine, fallback)
        panels.append(_panel(series, index, title, [condition], LEVELS, used, truth, roi, ""))
    return panels


AXIAL_LEVEL_COLUMNS = ["series_id", "slice_index", "instance_number", "level", "distance_mm", "chosen"]


def _axial_levels(axials, used, truth, max_distance_mm: float) -> pd.DataFrame:
    """The axial slices of each level by the pipeline's rule (:func:`~rsna2024.dicom.levels.level_slices`), from
    the spinal points used (else the true ones): one row per slice of the level's window, ``chosen`` on the
    level's own slice, ``distance_mm`` from the level point to the slice plane."""
    for table in (used, truth):
        level_points = {lv: _mm(p) for lv in LEVELS for p in [_point(table, SPINAL, lv)] if p is not None}
        if level_points and axials:
            found, _ = level_slices(axials, level_points, LEVELS, max_distance_mm)
            rows = []
            for level, hit in found.items():
                series = axials[hit.series]
                z = np.abs(series.plane_coordinates(level_points[level])[2])
                rows += [[series.series_id, j, int(series.instance_numbers[j]), level, float(z[j]), j == hit.index]
                         for j in sorted({*hit.window, hit.index})]
            return pd.DataFrame(rows, columns=AXIAL_LEVEL_COLUMNS)
    return pd.DataFrame(columns=AXIAL_LEVEL_COLUMNS)


def _axial_panels(studies, study_id: int, levels: pd.DataFrame, used, truth, roi: RoiConfig) -> list[Panel]:
    """Per level, the level's axial slice (:func:`_axial_levels`; else the one of its subarticular points)."""
    panels = []
    axials = {s.series_id: s for s in studies.series(study_id, AXIAL_T2)}
    for level in LEVELS:
        title = f"Axial T2 {LEVEL_NAMES[level]}: subarticular recesses"
        chosen = levels[(levels["level"] == level) & levels["chosen"].astype(bool)]
        if len(chosen):
            best = chosen.iloc[0]
            series, index = axials[int(best["series_id"])], int(best["slice_index"])
            note = f", the level's slice, {float(best['distance_mm']):.1f} mm from the level point"
        else:
            points = [p for table in (used, truth) for c in SUBARTICULAR for p in [_point(table, c, level)]
                      if p is not None and int(p["series_id"]) in axials]
            if not points:
                panels.append(Panel(title, "no axial slice is assigned to this level and no point lies on one"))
                continue
            series = axials[int(points[0]["series_id"])]
            index = _shown_slice(series, [_mm(p) for p in points if int(p["series_id"]) == series.series_id], 0)
            note = ", the slice of its points (no slice assigned to the level)"
        panels.append(_panel(series, index, title, SUBARTICULAR, [level], used, truth, roi, note))
    return panels


def _level_table(levels: pd.DataFrame, axials: dict) -> pd.DataFrame:
    """Per level: the axial series and instances of its window and the distance (mm) of the nearest one."""
    rows = []
    for level in LEVELS:
        hit = levels[levels["level"] == level]
        parts = [f"{sid}: {_instances(axials[int(sid)], g['slice_index'])}" for sid, g in hit.groupby("series_id")]
        rows.append({"level": LEVEL_NAMES[level], "slices": len(hit), "instances": "; ".join(parts) or "none",
                     "nearest_mm": float(hit["distance_mm"].astype(float).min()) if len(hit) else np.nan})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- the report
def _read_study(data_dir: Path, split: str, descriptions: pd.DataFrame) -> None:
    """Read the study's DICOM series again, so that what the reader warns about (slices dropped or resampled,
    series that cannot be read) is logged while the page's warnings are collected."""
    from rsna2024.data.contract import images_dir
    from rsna2024.dicom.reader import read_series

    for row in descriptions.itertuples(index=False):
        folder = images_dir(data_dir, split) / str(row.study_id) / str(row.series_id)
        try:
            read_series(folder, description=row.series_description)
        except Exception as exc:  # noqa: BLE001 - every failure is a line of the page, as in the cache
            log.warning("series %s/%s (%s) cannot be read: %s: %s", row.study_id, row.series_id,
                        row.series_description, type(exc).__name__, exc)


def build_study_report(data_dir: str | Path, study_id: int, runs: Sequence[str | Path], cache: str | Path,
                       split: str | None = None, device: str = "auto",
                       folds_path: str | Path | None = None) -> StudyReport:
    """Predict and gather what the page shows for one study (module docstring); ``cache`` is the
    preprocessing cache folder (``rsna2024.keypoints.studies.resolve_cache``), ``split`` None finds it."""
    from rsna2024.data.contract import load_coordinates, load_labels_long, load_series_descriptions
    from rsna2024.keypoints.coords import CoordinatePredictor, load_run, resolve_device
    from rsna2024.keypoints.studies import StudySeries
    from rsna2024.training.runner import task_kind

    data_dir, cache, study_id = Path(data_dir), Path(cache), int(study_id)
    with captured_warnings() as warnings:
        split, descriptions = _study_split(data_dir, study_id, split)
        _read_study(data_dir, split, descriptions)
        studies = StudySeries(cache, descriptions, split)
        missing = {t: why for t in SERIES_TYPES for why in [studies.problem(study_id, t)] if why}
        study_fold = _study_fold(data_dir, study_id, split, folds_path)
        dev = resolve_device(device)
        keypoint_runs, classifier_runs, lines, roi, max_distance = [], [], [], None, DEFAULT_LEVEL_MAX_DISTANCE_MM
        for run_dir in map(Path, runs):
            cfg = _run_config(run_dir)
            kind = task_kind(cfg.task)
            if kind not in ("keypoint", "classifier"):
                raise RsnaError(f"{run_dir}: task {cfg.task!r} is neither a keypoint task (keypoint_*) nor a "
                                f"classifier (split_*, global); the report takes those runs")
            folds, how = _choose_folds(run_dir, study_id, study_fold)
            lines.append(f"{run_dir.name} ({cfg.task}): {how}")
            if kind == "keypoint":
                keypoint_runs.append(load_run(run_dir, dev, folds))
                if cfg.task == "keypoint_axial":
                    max_distance = cfg.data.max_distance_mm
            else:
                classifier_runs.append((run_dir, folds))
                roi = roi or cfg.data.roi
        roi = roi or RoiConfig()

        coords = None
        if keypoint_runs:
            coords = CoordinatePredictor(keypoint_runs, studies, None, dev).predict([study_id])
        truth, labels = None, None
        if split == "train":
            true_rows = load_coordinates(data_dir, load_series_descriptions(data_dir, "train"))
            true_rows = true_rows[true_rows["study_id"] == study_id]
            truth = _points_mm(true_rows[["study_id", "series_id", "instance_number", "condition", "level", "x", "y"]],
                               studies.load)
            long = load_labels_long(data_dir)
            long = long[long["study_id"] == study_id]
            labels = dict(zip(long["row_id"], long["label"].fillna(""))) if len(long) else None
            if labels is None:
                log.warning("study %s has no row in train.csv: no labels shown", study_id)
        used = _points_mm(coords, studies.load) if coords is not None else truth
        source = "predicted" if coords is not None else ("true" if truth is not None else "none")

        predictions = None
        if classifier_runs:
            if used is None:
                raise RsnaError(f"study {study_id}: the classifier runs need points; give the keypoint runs too "
                                f"(a test study has no true points)")
            predictions = classifier_predictions(classifier_runs, cache, study_id, used, device)

        axials = {s.series_id: s for s in studies.series(study_id, AXIAL_T2)}
        levels = _axial_levels(list(axials.values()), used, truth, max_distance)
        panels = _sagittal_panels(studies, study_id, used, truth, roi) + \
            (_axial_panels(studies, study_id, levels, used, truth, roi) if axials else [])
        points = _point_table(study_id, used, coords, truth, studies.load, roi)
    series = {t: studies.series_ids(study_id, t) for t in SERIES_TYPES}
    messages = list(dict.fromkeys([*(f"{t}: {why}" for t, why in missing.items()), *warnings]))
    return StudyReport(study_id, split, str(data_dir), study_fold, lines, series, missing, source, points,
                       predictions, labels, _level_table(levels, axials), panels, messages)


# --------------------------------------------------------------------------- HTML
STYLE = """
body{font-family:Helvetica,Arial,sans-serif;margin:16px;color:#222;max-width:1400px}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:18px 0 6px;border-bottom:1px solid #ccc}
.meta{color:#555;font-size:12px;margin:2px 0}
.panels{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;width:320px}figure img{width:320px;display:block}
figcaption{font-size:11px;color:#444}figcaption b{color:#222;font-size:12px}
.note{background:#fff3cd;border:1px solid #e0c060;padding:4px 8px;font-size:12px;margin:4px 0}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #bbb;padding:3px 6px;text-align:left}
table.grid td{width:120px;vertical-align:top}
.pred{font-weight:bold}.probs{font-family:monospace}.label{font-size:11px;color:#333}
.none{color:#777;background:#f4f4f4}ul.warnings{font-size:12px}
.legend span{display:inline-block;width:10px;height:10px;margin:0 3px 0 10px}
"""


def _e(value) -> str:
    return html.escape(str(value))


def _hex(rgb) -> str:
    return "#" + "".join(f"{int(round(c)):02x}" for c in rgb)


def severity_colour(probs) -> str:
    """Background of a severity cell: the class colours mixed by the probabilities, lightened for text."""
    mixed = np.asarray(probs, dtype=float) @ np.asarray(SEVERITY_COLOURS, dtype=float)
    return _hex(255 - (255 - mixed) * 0.55)


def _table(df: pd.DataFrame, digits: int = 2) -> str:
    def cell(v):
        if isinstance(v, float):
            return "" if not np.isfinite(v) else f"{v:.{digits}f}"
        return "" if v is None or (not isinstance(v, str) and pd.isna(v)) else _e(v)

    head = "".join(f"<th>{_e(c)}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in df.itertuples(index=False))
    return f"<table><tr>{head}</tr>{body}</table>"


def _grid(study_id: int, cells: dict[str, str], attrs: dict[str, str]) -> str:
    """A conditions x levels table of ``cells`` (row id -> inner HTML) with per-cell attributes."""
    head = "<tr><th>condition</th>" + "".join(f"<th>{LEVEL_NAMES[lv]}</th>" for lv in LEVELS) + "</tr>"
    rows = []
    for condition in CONDITIONS:
        tds = "".join(f"<td {attrs.get(rid, '')} data-row-id=\"{rid}\">{cells[rid]}</td>"
                      for lv in LEVELS for rid in [row_id(study_id, condition, lv)])
        rows.append(f"<tr><th>{_e(CONDITION_NAMES[condition])}</th>{tds}</tr>")
    return f"<table class=\"grid\">{head}{''.join(rows)}</table>"


def _severity_section(report: StudyReport) -> str:
    points = report.points.set_index("row_id")
    preds = report.predictions.set_index("row_id") if report.predictions is not None else None
    cells, attrs = {}, {}
    for rid in points.index:
        label = (report.labels or {}).get(rid)
        inner = ""
        if preds is not None and rid in preds.index:
            probs = preds.loc[rid, list(PRED_COLUMNS)].to_numpy(dtype=float)
            best = int(np.argmax(probs))
            inner = (f"<div class=\"pred\">{_e(LABELS[best])}</div><div class=\"probs\">"
                     + " / ".join(f"{p:.2f}" for p in probs) + "</div>")
            attrs[rid] = f"style=\"background:{severity_colour(probs)}\""
            if label:
                mark = "&#10003;" if label == LABELS[best] else "&#10007;"
                inner += f"<div class=\"label\">label: {_e(label)} {mark}</div>"
        else:
            why = "no classifier run" if preds is None else "no prediction (no point or series)"
            inner = f"<div>{why}</div>"
            attrs[rid] = "class=\"none\""
            if label:
                inner += f"<div class=\"label\">label: {_e(label)}</div>"
        if report.labels is not None and not label:
            inner += "<div class=\"label\">label: missing</div>"
        cells[rid] = inner
    legend = "".join(f"<span style=\"background:{_hex(c)}\"></span>{_e(n)}" for c, n in zip(SEVERITY_COLOURS, LABELS))
    return (f"<h2>Predicted severity</h2><p class=\"meta legend\">cell: most likely class and the probabilities "
            f"normal/mild / moderate / severe; colour mixed by them:{legend}</p>"
            + _grid(report.study_id, cells, attrs))


def _confidence_section(report: StudyReport) -> str:
    points = report.points.set_index("row_id")
    if "confidence" not in points:
        return ("<h2>Stage 1: confidences</h2><p class=\"note\">no keypoint run: the points are "
                f"{_e(report.points_source)} points</p>")
    cells, attrs = {}, {}
    for rid, conf in points["confidence"].items():
        cells[rid] = f"{conf:.2f}" if np.isfinite(conf) else "no point"
        shade = float(np.clip(conf, 0, 1)) if np.isfinite(conf) else 0.0
        attrs[rid] = f"style=\"background:{_hex(255 - np.array([155, 95, 0]) * shade)}\""
    return ("<h2>Stage 1: confidences</h2><p class=\"meta\">heatmap peak of each predicted point "
            "(mean over the folds used)</p>" + _grid(report.study_id, cells, attrs))


def render_html(report: StudyReport) -> str:
    """The page of a :class:`StudyReport`: one HTML document, images inline, no script, no external file."""
    title = f"Study {report.study_id} ({report.split})"
    fold = f", fold {report.study_fold}" if report.study_fold is not None else ""
    series_rows = "".join(
        f"<tr><td>{_e(t)}</td><td>{_e(', '.join(map(str, ids)) if ids else 'missing: ' + report.missing.get(t, ''))}"
        "</td></tr>" for t, ids in report.series.items())
    figures = "".join(
        f"<figure><figcaption><b>{_e(p.title)}</b></figcaption>"
        + (f"<img alt=\"{_e(p.title)}\" src=\"data:image/png;base64,{base64.b64encode(p.png).decode()}\">"
           if p.png is not None else "<p class=\"note\">not drawn</p>")
        + f"<figcaption>{_e(p.caption)}</figcaption></figure>" for p in report.panels)
    notes = "".join(f"<p class=\"note\">{_e(t)} not shown: {_e(why)}</p>" for t, why in report.missing.items())
    used = {"predicted": "predicted by the keypoint runs", "true": "the true point: no keypoint run"}
    legend = (f"x: the point the classifiers read ({used.get(report.points_source, 'none')}), o: true point; "
              "orange spinal canal, blue left, red right; squares: the regions of interest around the x points")
    points = report.points.drop(columns=["condition", "level"])
    warnings = "".join(f"<li>{_e(w)}</li>" for w in report.warnings) or "<li>none</li>"
    body = (f"<h1>{_e(title)}</h1><p class=\"meta\">data {_e(report.data_dir)}{_e(fold)}</p>"
            + "".join(f"<p class=\"meta\">run {_e(line)}</p>" for line in report.runs)
            + f"<h2>Series</h2><table>{series_rows}</table>"
            + f"<h2>Images</h2><p class=\"meta\">{_e(legend)}</p>{notes}<div class=\"panels\">{figures}</div>"
            + "<h2>Axial slices per level</h2>" + _table(report.axial_levels, 1)
            + _severity_section(report) + _confidence_section(report)
            + "<h2>Stage 1: points</h2>" + _table(points, 2)
            + f"<h2>Warnings</h2><ul class=\"warnings\">{warnings}</ul>")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>\n")


def write_study_report(data_dir: str | Path, study_id: int, runs: Sequence[str | Path], out: str | Path,
                       cache: str | Path, split: str | None = None, device: str = "auto", overwrite: bool = False,
                       folds_path: str | Path | None = None) -> StudyReport:
    """:func:`build_study_report` rendered to ``out`` (written atomically; an existing file only with
    ``overwrite``); returns the report."""
    check_overwrite(out, overwrite)
    report = build_study_report(data_dir, study_id, runs, cache, split=split, device=device, folds_path=folds_path)
    atomic_write_text(out, render_html(report))
    log.info("study report of %s written to %s (%d panels, %d warning(s))", study_id, out, len(report.panels),
             len(report.warnings))
    return report
