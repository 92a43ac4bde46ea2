"""Regions of interest against hand-computed cases: centre and size in mm, slice windows and their order,
foraminal offsets, and the right subarticular side mirrored with its own (right) label."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from rsna2024.classifiers.dataset import IGNORE_INDEX, RoiDataset, SeriesStore, region_slice_moves
from rsna2024.classifiers.roi import (
    Jitter,
    RoiConfig,
    condition_region,
    condition_slices,
    cut_region,
    mirror_left_right,
)
from rsna2024.classifiers.samples import label_table, load_points, points_in_mm, split_samples
from rsna2024.constants import AXIAL_T2, CONDITION_GROUPS, CONDITIONS, SAGITTAL_T1, SAGITTAL_T2, TARGET_COLUMNS
from rsna2024.dicom.geometry import lps_oriented_normal
from rsna2024.dicom.series import Series, canonicalize
from rsna2024.errors import ConfigError

SUB = CONDITION_GROUPS["subarticular"]


def _series(pixels, positions, row_dir, col_dir, spacing, description, study_id=1, series_id=10, first=1):
    n = len(positions)
    return Series(pixels=np.asarray(pixels, dtype=np.float32), instance_numbers=np.arange(first, first + n),
                  positions=np.asarray(positions, float), row_dirs=np.tile(row_dir, (n, 1)),
                  col_dirs=np.tile(col_dir, (n, 1)), spacings=np.tile(spacing, (n, 1)), study_id=study_id,
                  series_id=series_id, description=description)


# Canonical sagittal: x along +y (posterior), y along -z (head up), slice k at x = -12 + 4 k (right -> left).
# Pixels 0.5 mm down the rows and 0.25 mm across the columns (anisotropic on purpose), 200 x 400.
SAG_ROW, SAG_COL, SAG_SPACING = np.array([0.0, 1, 0]), np.array([0.0, 0, -1]), (0.5, 0.25)


def _sagittal(markers):
    """7 slices; ``markers``: (slice, x, y, value) single bright pixels."""
    pixels = np.zeros((7, 200, 400), np.float32)
    for k, x, y, v in markers:
        pixels[k, y, x] = v
    positions = [(-12 + 4 * k, -50.0, 40.0) for k in range(7)]
    return _series(pixels, positions, SAG_ROW, SAG_COL, SAG_SPACING, SAGITTAL_T2)


def test_roi_centre_and_size_in_mm_hand_computed():
    # point P = slice 3, pixel (x=200, y=100): 50 mm posterior of pixel 0 and 50 mm below it.
    # 20 mm posterior = +80 columns (0.25 mm); 20 mm up = -40 rows (0.5 mm); slice 4 is 4 mm to the left.
    s = _sagittal([(3, 200, 100, 1.0), (3, 280, 100, 2.0), (3, 200, 60, 3.0), (4, 200, 100, 4.0)])
    p = s.pixel_to_patient(3, 200, 100)
    np.testing.assert_allclose(p, [0.0, 0.0, -10.0])
    cfg = RoiConfig(size_mm=50.0, out_size=25, slices=5)
    roi = cut_region(s, p + [1.5, 0, 0], cfg)  # 1.5 mm off slice 3's plane: still centred on slice 3
    # 25 samples over 50 mm: centres at -24, -22, ..., 24 mm -> 0 mm is column/row 12, +20 mm is 22, -20 mm is 2
    assert roi.shape == (5, 25, 25)
    assert roi[2, 12, 12] == pytest.approx(1.0)  # the marker at the ROI centre, middle channel
    assert roi[2, 12, 22] == pytest.approx(2.0)  # 20 mm posterior: image right (anterior left)
    assert roi[2, 2, 12] == pytest.approx(3.0)  # 20 mm superior: towards the top (head up)
    assert roi[3, 12, 12] == pytest.approx(4.0)  # channels run patient right -> left: slice 4 after slice 3
    assert np.count_nonzero(roi) == 4


def test_foraminal_window_at_level_offsets_medial_to_lateral():
    # 15 sagittal slices 3.5 mm apart centred on x = 0 (slice 7), each filled with its own index.
    n = 15
    pixels = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], (n, 64, 64))
    positions = [(-24.5 + 3.5 * k, -16.0, 16.0) for k in range(n)]
    s = _series(pixels, positions, SAG_ROW, SAG_COL, (0.5, 0.5), SAGITTAL_T1)
    cfg = RoiConfig(size_mm=10.0, out_size=4, slices=5)
    point = np.array([30.0, 0.0, 0.0])  # its own slice does not matter in offset mode
    left = condition_region(s, "left_neural_foraminal_narrowing", "l4_l5", point, cfg)
    right = condition_region(s, "right_neural_foraminal_narrowing", "l4_l5", point, cfg)
    # L4/L5: 17.8 mm -> 5 slices (17.5 mm) from the middle: slice 12 on the left, 2 on the right
    assert left[:, 0, 0].tolist() == [10, 11, 12, 13, 14]  # medial -> lateral
    assert right[:, 0, 0].tolist() == [4, 3, 2, 1, 0]  # medial -> lateral
    # the slices named for the report are those cut, in the same order
    assert condition_slices(s, "left_neural_foraminal_narrowing", "l4_l5", point, cfg).tolist() == [10, 11, 12, 13, 14]
    assert condition_slices(s, "right_neural_foraminal_narrowing", "l4_l5", point, cfg).tolist() == [4, 3, 2, 1, 0]
    l1 = condition_region(s, "left_neural_foraminal_narrowing", "l1_l2", point, cfg)
    assert l1[2, 0, 0] == 11  # 14.9 mm -> 4 slices (14 mm)
    own = condition_region(s, "left_neural_foraminal_narrowing", "l4_l5", s.pixel_to_patient(9, 32, 32),
                           RoiConfig(size_mm=10.0, out_size=4, slices=3, foraminal_slices="point"))
    assert own[:, 0, 0].tolist() == [8, 9, 10]


def test_jitter_moves_the_centre_in_plane_and_the_window_by_whole_slices():
    s = _sagittal([(3, 200, 100, 1.0)])
    p = s.pixel_to_patient(3, 200, 100)
    cfg = RoiConfig(size_mm=50.0, out_size=25, slices=1, jitter=Jitter(mm=6.0, slices=1))
    rng = np.random.default_rng(0)
    seen_off_centre = seen_other_slice = 0
    for _ in range(40):
        roi = cut_region(s, p, cfg, rng=rng)
        seen_other_slice += int(roi.max() == 0)  # window moved off slice 3
        if roi.max() > 0:
            r, c = np.unravel_index(np.argmax(roi[0]), roi[0].shape)
            seen_off_centre += int((r, c) != (12, 12))
    assert seen_off_centre > 0 and seen_other_slice > 0
    assert cut_region(s, p, cfg)[0, 12, 12] == pytest.approx(1.0)  # no rng: no jitter


def test_slice_jitter_moves_only_windows_placed_by_the_point_in_the_named_planes():
    # each slice filled with its own index: the middle channel names the window's centre slice
    n = 15
    pixels = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], (n, 64, 64))
    s = _series(pixels, [(-24.5 + 3.5 * k, -16.0, 16.0) for k in range(n)], SAG_ROW, SAG_COL, (0.5, 0.5), SAGITTAL_T1)
    point = s.pixel_to_patient(7, 32, 32)
    cfg = RoiConfig(size_mm=10.0, out_size=4, slices=3, jitter=Jitter(slices=1))

    def centres(condition, cfg):
        rng = np.random.default_rng(0)
        return {int(condition_region(s, condition, "l4_l5", point, cfg, rng=rng)[1, 0, 0]) for _ in range(30)}

    # a foraminal window at the recipe's offsets (slice 12 at L4/L5) does not come from the point: it stays
    assert centres("left_neural_foraminal_narrowing", cfg) == {12}
    # placed by the point (the spinal window; the foraminal one in point mode) it moves by one slice either way
    assert centres("spinal_canal_stenosis", cfg) == {6, 7, 8}
    assert centres("left_neural_foraminal_narrowing", replace(cfg, foraminal_slices="point")) == {6, 7, 8}
    axial_only = replace(cfg, jitter=Jitter(slices=1, slice_planes=["axial"]))
    assert axial_only.jitter.slice_planes == ("axial",)
    assert centres("spinal_canal_stenosis", axial_only) == {7}  # a sagittal window, not named
    # a subarticular window (cut as an axial one, whatever the series) moves only when axial is named
    assert centres("left_subarticular_stenosis", axial_only) == {6, 7, 8}
    sagittal_only = replace(cfg, jitter=Jitter(slices=1, slice_planes=["sagittal"]))
    assert centres("left_subarticular_stenosis", sagittal_only) == {7}
    # the memoised crops follow the same rule per region (global: spinal, 2 foraminal, 2 subarticular)
    assert region_slice_moves(CONDITIONS, axial_only).tolist() == [0, 0, 0, 1, 1]
    assert region_slice_moves(CONDITIONS, cfg).tolist() == [1, 0, 0, 1, 1]
    assert region_slice_moves(CONDITION_GROUPS["foraminal"], replace(cfg, foraminal_slices="point")).tolist() == [1]
    assert region_slice_moves(["spinal_canal_stenosis"], replace(axial_only, spinal_axial=True)).tolist() == [0, 1]
    with pytest.raises(ConfigError, match="slice_planes"):
        Jitter(slices=1, slice_planes=("coronal",))


# Axial as stored by a scanner that puts patient right on the image RIGHT (row direction -x) and slices
# foot -> head: canonicalize must flip it; 100 x 100 px of 1 mm, pixel (50, 50) at x = 0, y = 0.
def _axial(markers, z0=0.0):
    pixels = np.zeros((5, 100, 100), np.float32)
    for x_mm, v in markers:  # patient x (left +) -> stored column: x = 50 - x_mm
        pixels[:, 50, int(50 - x_mm)] = v
    positions = [(50.0, -50.0, z0 - 2 + k) for k in range(5)]
    stored = _series(pixels, positions, np.array([-1.0, 0, 0]), np.array([0.0, 1, 0]), (1.0, 1.0), AXIAL_T2,
                     series_id=30)
    return canonicalize(stored)


def test_right_subarticular_region_is_mirrored_to_look_like_a_left_one():
    # recesses at x = +-12 mm; a marker 8 mm lateral of the RIGHT recess only (x = -20 mm)
    s = _axial([(-20.0, 1.0)])
    assert s.orientation.flip_x  # stored against the canonical layout
    cfg = RoiConfig(size_mm=50.0, out_size=25, slices=3)
    right = condition_region(s, "right_subarticular_stenosis", "l4_l5", [-12.0, 0.0, 0.0], cfg)
    raw = cut_region(s, [-12.0, 0.0, 0.0], cfg)  # the same region unmirrored
    # canonical axial: patient right on the image left, so 8 mm lateral (right) = column 12 - 4 = 8
    assert np.argmax(raw[1, 12]) == 8
    # mirrored: lateral on the image right, column 16, where a left recess has its lateral side
    assert np.argmax(right[1, 12]) == 16
    left_patient = _axial([(20.0, 1.0)])  # the mirror-image patient: marker lateral of the LEFT recess
    left = condition_region(left_patient, "left_subarticular_stenosis", "l4_l5", [12.0, 0.0, 0.0], cfg)
    np.testing.assert_allclose(left, right, atol=1e-6)
    np.testing.assert_array_equal(mirror_left_right(raw, s, 1), right)


def test_right_subarticular_sample_takes_the_right_label(tmp_path):
    s = _axial([(-20.0, 1.0)])
    store = SeriesStore.from_series([s])
    wide = pd.DataFrame({"study_id": [1], **{t: ["Normal/Mild"] for t in TARGET_COLUMNS}})
    wide["right_subarticular_stenosis_l4_l5"] = "Severe"
    wide["left_subarticular_stenosis_l4_l5"] = "Moderate"
    wide["left_subarticular_stenosis_l5_s1"] = np.nan
    # label points in the STORED grid: x_mm -> stored column 50 - x_mm, row 50, middle slice (instance 3)
    coords = pd.DataFrame({"study_id": 1, "series_id": 30, "instance_number": 3,
                           "condition": ["Right Subarticular Stenosis", "Left Subarticular Stenosis"] * 2,
                           "level": ["L4/L5", "L4/L5", "L5/S1", "L5/S1"], "x": [62.0, 38.0] * 2, "y": 50.0})
    points = points_in_mm(load_points(coords), store.load)
    np.testing.assert_allclose(points[["x_mm", "y_mm"]].to_numpy()[:2], [[-12, 0], [12, 0]], atol=1e-9)
    samples = split_samples(label_table(wide, [1]), points, SUB)
    ds = RoiDataset(samples, store, RoiConfig(size_mm=50.0, out_size=25, slices=3), SUB)
    by = {(r["condition"], r["level"]): i for i, r in enumerate(ds.rows)}
    right, left = ds[by[("right_subarticular_stenosis", "l4_l5")]], ds[by[("left_subarticular_stenosis", "l4_l5")]]
    assert right["target"].tolist() == [2] and left["target"].tolist() == [1]
    assert right["image"].shape == (1, 3, 25, 25)
    assert int(right["image"][0, 1, 12].argmax()) == 16  # mirrored: the marker sits laterally as on a left side
    assert left["image"].max() == 0  # nothing lateral of the left recess in this patient
    assert ds[by[("left_subarticular_stenosis", "l5_s1")]]["target"].tolist() == [IGNORE_INDEX]  # missing label
    no_point = ds[by[("left_subarticular_stenosis", "l1_l2")]]
    assert no_point["target"].tolist() == [IGNORE_INDEX] and no_point["image"].max() == 0
    assert ds.usable().sum() == 3  # rows with a label and a region: right l4_l5, left l4_l5, right l5_s1


def test_spinal_sample_with_the_levels_axial_slices():
    sag = _sagittal([(3, 200, 100, 1.0)])  # spinal point: slice 3 (instance 4), pixel (200, 100) = (0, 0, -10) mm
    axial = _axial([(0.0, 5.0)], z0=-10.0)  # a marker on the canal's axis, slices at z = -12 .. -8
    far = _axial([(0.0, 7.0)], z0=40.0)  # another axial series, 50 mm away
    far.series_id = 31
    store = SeriesStore.from_series([sag, axial, far])
    wide = pd.DataFrame({"study_id": [1], **{t: ["Moderate"] for t in TARGET_COLUMNS}})
    coords = pd.DataFrame({"study_id": [1], "series_id": [10], "instance_number": [4], "x": [200.0], "y": [100.0],
                           "condition": ["Spinal Canal Stenosis"], "level": ["L3/L4"]})
    samples = split_samples(label_table(wide, [1]), points_in_mm(load_points(coords), store.load),
                            ["spinal_canal_stenosis"])
    cfg = RoiConfig(size_mm=50.0, out_size=25, slices=3, spinal_axial=True)
    ds = RoiDataset(samples, store, cfg, ["spinal_canal_stenosis"])
    item = ds[[r["level"] for r in ds.rows].index("l3_l4")]
    assert item["image"].shape == (2, 3, 25, 25) and item["target"].tolist() == [1]
    assert item["image"][0, 1, 12, 12] == pytest.approx(1.0)  # Sagittal T2 region centred on the point
    assert item["image"][1, 1, 12, 12] == pytest.approx(5.0)  # the axial region too, from the near series
    alone = RoiDataset(samples, SeriesStore.from_series([sag, far]), cfg, ["spinal_canal_stenosis"])
    item = alone[[r["level"] for r in alone.rows].index("l3_l4")]
    assert item["image"][0, 1, 12, 12] == pytest.approx(1.0) and item["image"][1].max() == 0  # no axial slice near


def test_memoised_training_jitter_is_a_crop_equal_to_a_fresh_cut_at_the_moved_centre():
    import torch

    sag = _sagittal([])
    sag.pixels[:] = np.random.default_rng(0).random(sag.pixels.shape, dtype=np.float32)  # every pixel distinct
    store = SeriesStore.from_series([sag])
    wide = pd.DataFrame({"study_id": [1], **{t: ["Moderate"] for t in TARGET_COLUMNS}})
    coords = pd.DataFrame({"study_id": [1], "series_id": [10], "instance_number": [4], "x": [200.0], "y": [100.0],
                           "condition": ["Spinal Canal Stenosis"], "level": ["L3/L4"]})
    samples = split_samples(label_table(wide, [1]), points_in_mm(load_points(coords), store.load),
                            ["spinal_canal_stenosis"])
    cfg = RoiConfig(size_mm=50.0, out_size=25, slices=3, jitter=Jitter(mm=4.0))
    ds = RoiDataset(samples, store, cfg, ["spinal_canal_stenosis"], train=True, memo=True)
    i = [r["level"] for r in ds.rows].index("l3_l4")
    assert ds.crop and ds.margin == 6  # ceil(3 sd x 4 mm / 2 mm per output pixel)
    point = sag.pixel_to_patient(3, 200, 100)
    pitch = cfg.size_mm / cfg.out_size
    torch.manual_seed(0)
    shifts = set()
    for _ in range(12):
        image = ds[i]["image"][0].numpy()
        big = ds.memo[i][0].astype(np.float32)
        m = ds.margin
        # where the crop sits in the memoised region with its margin
        (dy, dx), = [(a - m, b - m) for a in range(2 * m + 1) for b in range(2 * m + 1)
                     if np.array_equal(big[:, a:a + 25, b:b + 25], image)]
        shifts.add((dx, dy))
        moved = point + dx * pitch * SAG_ROW + dy * pitch * SAG_COL  # whole output pixels along rows and columns
        fresh = cut_region(sag, moved, RoiConfig(size_mm=50.0, out_size=25, slices=3))
        np.testing.assert_allclose(image, fresh, atol=1e-3)  # float16 memo
    assert len(shifts) > 3 and all(max(abs(dx), abs(dy)) <= 6 for dx, dy in shifts)
    # across slices too: one extra slice at each end of the memoised window, the crop a window shifted by k slices
    across = RoiDataset(samples, store, replace(cfg, jitter=Jitter(mm=4.0, slices=1)), ["spinal_canal_stenosis"],
                        train=True, memo=True)
    assert across.crop and across.slice_margin == 1
    normal, spacing = lps_oriented_normal(sag), sag.slice_spacing
    moves = set()
    for _ in range(15):
        image = across[i]["image"][0].numpy()
        big = across.memo[i][0].astype(np.float32)
        assert big.shape == (5, 37, 37)
        (k, dy, dx), = [(k, a - 6, b - 6) for k in (-1, 0, 1) for a in range(13) for b in range(13)
                        if np.array_equal(big[1 + k:4 + k, a:a + 25, b:b + 25], image)]
        moves.add(k)
        moved = point + dx * pitch * SAG_ROW + dy * pitch * SAG_COL + k * spacing * normal
        np.testing.assert_allclose(image, cut_region(sag, moved, RoiConfig(size_mm=50.0, out_size=25, slices=3)),
                                   atol=1e-3)
    assert moves == {-1, 0, 1}
    stepped = RoiDataset(samples, store, replace(cfg, slice_step=2.0, jitter=Jitter(mm=4.0, slices=1)),
                         ["spinal_canal_stenosis"], train=True, memo=True)
    assert stepped.memo is None and not stepped.crop  # a one-slice shift is no crop of a 2-slice-step window
    evaluation = RoiDataset(samples, store, cfg, ["spinal_canal_stenosis"], memo=True)
    np.testing.assert_allclose(evaluation[i]["image"][0].numpy(), cut_region(sag, point, cfg), atol=1e-3)
