"""What one keypoint sample is: which canonical slices of which series form its channels, and where its
target points lie on its centre slice.

Three kinds, one per series type (recipe, kit-guide section 2):

- Sagittal T2/STIR: ``n`` slices around the middle of the stack; 5 maps, the spinal canal point per level.
- Sagittal T1: per side, ``n`` slices around the slice ``offset_mm`` towards that side of the middle; 5 maps,
  the foraminal point of that side per level (a left sample never holds right targets).
- Axial T2: per level, ``n`` slices around the axial slice that :func:`rsna2024.dicom.levels.level_slices` gives
  the level from the Sagittal T2 spinal points (true points for training, predicted ones at inference: axial
  blocks assigned to the levels in spine order, the slice nearest the point within its block); 2 maps, the left
  and right subarticular points.

Label rows (stored grid, train_label_coordinates.csv) become patient points through ``Series.to_patient``
and then canonical pixels of the centre slice through ``Series.plane_coordinates``: the point is projected
along the slice normal onto that slice. Geometry stays in :mod:`rsna2024.dicom`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from rsna2024.constants import AXIAL_T2, LEVELS, SAGITTAL_T1, SAGITTAL_T2
from rsna2024.dicom.geometry import middle_slice_index, slice_window, slices_at_offsets
from rsna2024.dicom.levels import level_slices
from rsna2024.dicom.series import Series

SPINAL = "spinal_canal_stenosis"
SIDES = ("left", "right")
FORAMINAL = {"left": "left_neural_foraminal_narrowing", "right": "right_neural_foraminal_narrowing"}
SUBARTICULAR = ("left_subarticular_stenosis", "right_subarticular_stenosis")
AXIAL_FLIP_PAIRS = ((0, 1),)  # map 0 (left) <-> map 1 (right) under a left-right image flip


@dataclass(frozen=True)
class Sample:
    """One input of a keypoint model: the channels (canonical slice indices of one series), the centre slice
    the points lie on, the (condition, level) of each output map and the targets (canonical x, y on the
    centre slice; NaN where unknown)."""

    study_id: int
    series_id: int
    kind: str  # "sagt2", "sagt1:left", "sagt1:right", "axial:l4_l5", ...
    slices: tuple[int, ...]
    centre: int
    targets: tuple[tuple[str, str], ...]
    points: np.ndarray = field(compare=False)
    truth_mm: np.ndarray = field(compare=False)  # (K, 3) true patient points (mm), NaN where unknown
    distance_mm: float = 0.0  # axial: distance of the level point from the centre slice's plane

    @property
    def has_targets(self) -> bool:
        return bool(np.isfinite(self.points).all(axis=1).any())


def label_points(labels: pd.DataFrame | None, series: Mapping[int, Series]) -> dict[tuple[str, str], np.ndarray]:
    """(condition, level) -> LPS point (mm) of each label row (``condition_key``, ``level_key``, ``series_id``,
    ``instance_number``, ``x``, ``y``) that lies on one of ``series`` (keyed by series id)."""
    out: dict[tuple[str, str], np.ndarray] = {}
    if labels is None:
        return out
    for row in labels.itertuples(index=False):
        s = series.get(int(row.series_id))
        if s is not None:
            out[(row.condition_key, row.level_key)] = np.asarray(s.to_patient(int(row.instance_number), row.x, row.y),
                                                                 dtype=np.float64).reshape(3)
    return out


def _centre_points(series: Series, centre: int, targets, points_mm: Mapping) -> np.ndarray:
    """Canonical (x, y) on slice ``centre`` of the patient point of each target (NaN where absent)."""
    out = np.full((len(targets), 2), np.nan)
    for k, target in enumerate(targets):
        p = points_mm.get(target)
        if p is not None:
            x, y, _ = series.plane_coordinates(p)
            out[k] = x[centre], y[centre]
    return out


def _sample(series: Series, kind: str, centre: int, n_slices: int, targets, points_mm, distance_mm=0.0) -> Sample:
    truth = np.array([points_mm.get(t, (np.nan,) * 3) for t in targets], dtype=np.float64).reshape(len(targets), 3)
    return Sample(study_id=int(series.study_id), series_id=int(series.series_id), kind=kind,
                  slices=tuple(int(i) for i in slice_window(series, centre, n_slices)), centre=int(centre),
                  targets=tuple(targets), points=_centre_points(series, centre, targets, points_mm),
                  truth_mm=truth, distance_mm=float(distance_mm))


def sagt2_samples(series: Series, n_slices: int = 5, points_mm: Mapping | None = None) -> list[Sample]:
    """The Sagittal T2/STIR sample: ``n_slices`` around the middle, 5 spinal canal maps."""
    targets = [(SPINAL, lv) for lv in LEVELS]
    return [_sample(series, "sagt2", middle_slice_index(series), n_slices, targets, points_mm or {})]


def sagt1_samples(series: Series, n_slices: int = 3, offset_mm: float = 16.8,
                  points_mm: Mapping | None = None) -> list[Sample]:
    """The left and right Sagittal T1 samples: ``n_slices`` around the slice ``offset_mm`` to each side of the
    middle (positive offsets run towards the patient's left), each with its own side's 5 foraminal maps."""
    left, right = slices_at_offsets(series, [offset_mm, -offset_mm])
    return [_sample(series, f"sagt1:{side}", centre, n_slices, [(FORAMINAL[side], lv) for lv in LEVELS],
                    points_mm or {})
            for side, centre in (("left", left), ("right", right))]


def axial_samples(axials: Sequence[Series], level_points: Mapping[str, np.ndarray], n_slices: int = 3,
                  max_distance_mm: float = 5.0, points_mm: Mapping | None = None, search_mm: float = 0.0,
                  ) -> tuple[list[Sample], dict[str, str]]:
    """Per level of ``level_points`` (level -> LPS point, e.g. the Sag T2 spinal point) the axial sample around
    the level's slice over all ``axials`` (:func:`rsna2024.dicom.levels.level_slices`: blocks assigned to levels
    in spine order); and level -> reason for each level without one.

    ``search_mm`` > 0 (inference): instead, one candidate sample per slice of the level's block that lies within
    that distance of its slice (along the slice normal) and does not pass a neighbouring level's slice; the caller
    keeps the one the model is surest of.
    """
    found, missing = level_slices(axials, level_points, LEVELS, max_distance_mm)
    samples = []
    for level in LEVELS:
        point = level_points.get(level)
        if point is None or not np.isfinite(point).all():
            missing[level] = "no Sagittal T2 level point"
            continue
        hit = found.get(level)
        if hit is None:
            continue
        series = axials[hit.series]
        targets = [(c, level) for c in SUBARTICULAR]
        centres = [hit.index]
        if search_mm > 0:
            along = (series.centers[list(hit.window)] - series.centers[hit.index]) @ series.normals[hit.index]
            centres = [i for i, d in zip(hit.window, along) if abs(d) <= search_mm]
        _, _, z = series.plane_coordinates(point)
        samples.extend(_sample(series, f"axial:{level}", i, n_slices, targets, points_mm or {}, abs(z[i]))
                       for i in centres)
    return samples, {lv: missing[lv] for lv in LEVELS if lv in missing}


def neighbour_samples(series: Series, sample: Sample, search_mm: float) -> list[Sample]:
    """``sample`` moved to every slice of ``series`` whose centre lies within ``search_mm`` of the sample's centre
    slice along the slice normal (itself included): candidates of an inference-time slice search."""
    offsets = series.slice_offsets
    near = np.flatnonzero(np.abs(offsets - offsets[sample.centre]) <= search_mm)
    n = len(sample.slices)
    return [Sample(study_id=sample.study_id, series_id=sample.series_id, kind=sample.kind,
                   slices=tuple(int(i) for i in slice_window(series, c, n)), centre=int(c), targets=sample.targets,
                   points=np.full_like(sample.points, np.nan), truth_mm=sample.truth_mm,
                   distance_mm=float(abs(offsets[c] - offsets[sample.centre])))
            for c in near]


def training_level_points(points_mm: Mapping[tuple[str, str], np.ndarray]) -> dict[str, np.ndarray]:
    """Level -> the point that picks the axial slice for training: the true spinal canal point, or, where that
    label is missing, the mean of the level's subarticular points."""
    out = {}
    for level in LEVELS:
        if (SPINAL, level) in points_mm:
            out[level] = points_mm[(SPINAL, level)]
        else:
            side_points = [points_mm[(c, level)] for c in SUBARTICULAR if (c, level) in points_mm]
            if side_points:
                out[level] = np.mean(side_points, axis=0)
    return out


SERIES_OF_TASK = {"sagt2": SAGITTAL_T2, "sagt1": SAGITTAL_T1, "axial": AXIAL_T2}


def _labelled_first(series: Sequence[Series], labels: pd.DataFrame | None, conditions) -> list[Series]:
    """``series`` with the one holding labels of ``conditions`` first (a study may have two of a type)."""
    if labels is None or not len(series):
        return list(series)
    counts = labels[labels["condition_key"].isin(conditions)]["series_id"].value_counts()
    return sorted(series, key=lambda s: -int(counts.get(int(s.series_id), 0)))


def study_samples(task: str, studies, study_id: int, labels: pd.DataFrame | None = None, n_slices: int = 3,
                  offset_mm: float = 16.8, max_distance_mm: float = 5.0,
                  level_points: Mapping[str, np.ndarray] | None = None) -> tuple[list[Sample], str | None]:
    """The samples of one study for ``task`` (``sagt2``, ``sagt1`` or ``axial``) and the reason when there are
    none. ``studies`` is a :class:`~rsna2024.keypoints.studies.StudySeries`; ``labels`` the study's rows of
    :func:`rsna2024.data.contract.load_coordinates` (training; targets stay NaN without). Axial samples take
    their level slices from ``level_points`` (level -> LPS point; predicted Sag T2 points at inference), or
    else from the true spinal points of ``labels``."""
    series_type = SERIES_OF_TASK[task]
    problem = studies.problem(study_id, series_type)
    if problem is not None:
        return [], problem
    if task == "sagt2":
        series = _labelled_first(studies.series(study_id, series_type), labels, [SPINAL])[0]
        return sagt2_samples(series, n_slices, label_points(labels, {series.series_id: series})), None
    if task == "sagt1":
        series = _labelled_first(studies.series(study_id, series_type), labels, list(FORAMINAL.values()))[0]
        return sagt1_samples(series, n_slices, offset_mm, label_points(labels, {series.series_id: series})), None
    if task != "axial":
        raise ValueError(f"unknown keypoint task {task!r}; expected one of {sorted(SERIES_OF_TASK)}")
    axials = studies.series(study_id, series_type)
    known = {s.series_id: s for s in axials}
    if labels is not None:
        known.update({s.series_id: s for s in studies.series(study_id, SAGITTAL_T2)})
    points_mm = label_points(labels, known)
    if level_points is None:
        level_points = training_level_points(points_mm)
    samples, missing = axial_samples(axials, level_points, n_slices, max_distance_mm, points_mm)
    reason = None if samples else "; ".join(f"{lv}: {why}" for lv, why in missing.items()) or "no levels"
    return samples, reason
