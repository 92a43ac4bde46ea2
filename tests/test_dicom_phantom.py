"""Round trip on the phantom: labelled pixels -> patient mm -> other series land on the true landmarks."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rsna2024.dicom import read_series
from rsna2024.dicom.geometry import assign_axial_levels


def _snake(text: str) -> str:
    return text.lower().replace(" ", "_").replace("/", "_")


@pytest.fixture(scope="module")
def phantom(phantom_dir):
    coords = pd.read_csv(phantom_dir / "train_label_coordinates.csv")
    desc = pd.read_csv(phantom_dir / "train_series_descriptions.csv")
    truth = pd.read_csv(phantom_dir / "phantom" / "landmarks.csv").set_index(["study_id", "structure", "level"])
    series = {(r.study_id, r.series_id): read_series(phantom_dir / "train_images" / str(r.study_id) / str(r.series_id))
              for r in desc.itertuples()}
    return coords, desc, truth, series


def _true_point(truth: pd.DataFrame, study: int, condition: str, level: str) -> np.ndarray:
    return truth.loc[(study, _snake(condition), _snake(level)), ["x_mm", "y_mm", "z_mm"]].to_numpy(float)


def test_labelled_points_land_on_the_true_landmarks(phantom):
    coords, _, truth, series = phantom
    for r in coords.itertuples():
        s = series[(r.study_id, r.series_id)]
        error = np.linalg.norm(s.to_patient(r.instance_number, r.x, r.y) - _true_point(truth, r.study_id, r.condition,
                                                                                        r.level))
        assert error <= s.slice_spacing, (r, error, s.slice_spacing)


def test_points_projected_into_the_other_series_stay_on_the_landmark(phantom):
    coords, desc, truth, series = phantom
    checked = 0
    for r in coords.itertuples():
        src = series[(r.study_id, r.series_id)]
        point = src.to_patient(r.instance_number, r.x, r.y)
        true = _true_point(truth, r.study_id, r.condition, r.level)
        for other_id in desc.loc[(desc.study_id == r.study_id) & (desc.series_id != r.series_id), "series_id"]:
            other = series[(r.study_id, other_id)]
            inst, x, y, dist = other.from_patient(point)
            rows, cols = other.stored_shape(inst)  # x, y are in the stored grid of that instance
            if dist > other.slice_spacing or not (0 <= x < cols and 0 <= y < rows):
                continue  # the point lies outside this series' stack (e.g. an axial block of another level)
            back = other.to_patient(inst, x, y)
            assert np.linalg.norm(back - point) == pytest.approx(dist, abs=1e-6)  # moved along the normal only
            # off by at most half a slice in each series: within the coarser series' slice spacing
            bound = max(src.slice_spacing, other.slice_spacing)
            error = np.linalg.norm(back - true)
            assert error <= bound, (r, other_id, error, bound)
            checked += 1
    assert checked > len(coords)  # most points fall inside at least one other series


def test_axial_levels_from_sagittal_points_match_the_true_discs(phantom):
    coords, desc, truth, series = phantom
    spinal = coords[coords.condition == "Spinal Canal Stenosis"]
    assigned = 0
    for study, rows in spinal.groupby("study_id"):
        points = {_snake(r.level): series[(study, r.series_id)].to_patient(r.instance_number, r.x, r.y)
                  for r in rows.itertuples()}
        true_discs = {lv: truth.loc[(study, "disc_center", lv), ["x_mm", "y_mm", "z_mm"]].to_numpy(float)
                      for lv in points}
        axials = [series[(study, sid)] for sid in desc.loc[(desc.study_id == study) &
                                                           (desc.series_description == "Axial T2"), "series_id"]]
        table = assign_axial_levels(axials, points).dropna(subset=["level"])
        expected = assign_axial_levels(axials, true_discs, max_distance_mm=np.inf)
        merged = table.merge(expected, on=["series_id", "slice_index"], suffixes=("", "_true"))
        assert (merged["level"] == merged["level_true"]).all(), merged
        assigned += len(table)
    assert assigned > 0
