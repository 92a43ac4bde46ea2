"""Hand-computed geometry: an oblique sagittal series and a tilted axial stack written as real DICOM
(files shuffled, instance numbers offset), projections, slices at mm offsets, level assignment, ROIs."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from rsna2024.dicom import read_series
from rsna2024.dicom.geometry import (
    assign_axial_levels,
    crop_roi,
    lps_oriented_normal,
    middle_slice_index,
    nearest_axial_slice,
    project_point,
    roi_square,
    slice_window,
    slices_at_offsets,
)
from rsna2024.synthetic.dicom_writer import SliceGeometry, write_mr_slice


def _write(folder: Path, slices: list[tuple], shape=(32, 32), spacing=(1.0, 1.0), description="Axial T2",
           pixels=None) -> Path:
    """slices: (instance_number, position, row_dir, col_dir); written under shuffled file names."""
    folder.mkdir(parents=True)
    order = list(range(len(slices)))
    random.Random(len(slices)).shuffle(order)
    for name, k in enumerate(order):
        inst, pos, row, col = slices[k]
        img = np.full(shape, k) if pixels is None else pixels
        write_mr_slice(folder / f"{name:03d}.dcm", img, SliceGeometry(pos, row, col, spacing, 4.0),
                       instance_number=inst, series_description=description, study_id=int(folder.parent.name),
                       series_id=int(folder.name))
    return folder


# Oblique sagittal: row (0.6, 0.8, 0), col (0, 0, -1) -> normal (-0.8, 0.6, 0) (towards patient right); 7 slices
# k = 0..6, 4 mm apart from (10, -20, 30) towards the right; instance 107 - k. The canonical order runs from
# patient right to left, so canonical slice j is k = 6 - j (instances 101..107); the in-plane directions
# are canonical already (row mostly posterior, column inferior).
SAG_ROW, SAG_COL, SAG_N = np.array([0.6, 0.8, 0]), np.array([0, 0, -1.0]), np.array([-0.8, 0.6, 0])


@pytest.fixture
def oblique_sag(tmp_path):
    p0 = np.array([10.0, -20, 30])
    slices = [(107 - k, p0 + 4 * k * SAG_N, SAG_ROW, SAG_COL) for k in range(7)]
    return read_series(_write(tmp_path / "1" / "10", slices, shape=(64, 64), spacing=(0.5, 0.5),
                              description="Sagittal T2/STIR"))


def test_oblique_sagittal_to_patient_and_back(oblique_sag):
    s = oblique_sag
    assert s.instance_numbers.tolist() == [101, 102, 103, 104, 105, 106, 107]
    assert not s.orientation.flip_x and not s.orientation.flip_y and not s.orientation.transpose
    # instance 105 = slice k=2 at (10,-20,30) + 8*(-0.8,0.6,0) = (3.6,-15.2,30);
    # + 10*0.5*(0.6,0.8,0) + 20*0.5*(0,0,-1) = (6.6, -11.2, 20)
    np.testing.assert_allclose(s.to_patient(105, 10, 20), [6.6, -11.2, 20], atol=1e-9)
    inst, x, y, d = s.from_patient(np.array([6.6, -11.2, 20]) + 1.5 * SAG_N)
    assert inst == 105 and x == pytest.approx(10) and y == pytest.approx(20) and d == pytest.approx(1.5)
    inst, _, _, d = s.from_patient(np.array([6.6, -11.2, 20]) + 2.5 * SAG_N)  # nearer the next slice
    assert inst == 104 and d == pytest.approx(1.5)


def test_slices_at_mm_offsets_from_the_middle(oblique_sag):
    s = oblique_sag
    assert middle_slice_index(s) == 3
    # normal (-0.8, 0.6, 0) points right; flipped towards patient left (+x): (0.8, -0.6, 0)
    np.testing.assert_allclose(lps_oriented_normal(s), [0.8, -0.6, 0])
    # slice k lies (3 - k) * 4 mm left of the middle: +8.4 mm -> k=1 (8 mm), -8.4 -> k=5, +100 -> k=0;
    # canonical index j = 6 - k
    assert slices_at_offsets(s, [8.4, -8.4, 0, 100]).tolist() == [5, 1, 3, 6]
    assert slices_at_offsets(s, [5.0], reference=0).tolist() == [1]  # 4 mm left of k=6 (j=0) is k=5 (j=1)
    assert slice_window(s, 1, 5).tolist() == [0, 0, 1, 2, 3]
    assert slice_window(s, 3, 3, step=2).tolist() == [1, 3, 5]


# Tilted axial stack: two sub-stacks of 3 slices 5 mm apart, 32 x 32 at 1 mm, row (1, 0, 0).
# A: col (0, 0.8, 0.6), normal (0, -0.6, 0.8), centred on (0, 0, 0) -> L3/L4 point (0, 0, 1) is 0.8 mm
#    above the middle plane; planes at -5 / +5 mm give distances 5.8 (rejected) and 4.2.
# B: col (0, 0.8, -0.6), normal (0, 0.6, 0.8), centred on (0, 10, -30) -> L4/L5 point (0, 10, -31) is
#    0.8 mm below its middle plane; distances 4.2 (below) and 5.8 (above, rejected).
A_COL, A_N = np.array([0, 0.8, 0.6]), np.array([0, -0.6, 0.8])
B_COL, B_N = np.array([0, 0.8, -0.6]), np.array([0, 0.6, 0.8])
ROW = np.array([1.0, 0, 0])
LEVELS = {"l3_l4": (0.0, 0.0, 1.0), "l4_l5": (0.0, 10.0, -31.0)}


def _corner(center, col):
    return np.asarray(center) - 15.5 * ROW - 15.5 * col  # first-pixel centre of a 32 x 32, 1 mm image


@pytest.fixture
def tilted_axial(tmp_path):
    slices = []
    for j in (-1, 0, 1):
        slices.append((51 + j, _corner(np.array([0, 0, 0]) + 5 * j * A_N, A_COL), ROW, A_COL))
        slices.append((71 + j, _corner(np.array([0, 10, -30]) + 5 * j * B_N, B_COL), ROW, B_COL))
    return read_series(_write(tmp_path / "1" / "20", slices))


def test_tilted_axial_order_and_per_slice_planes(tilted_axial):
    s = tilted_axial
    # ordered head to foot by image centre along the mean normal: A (z 4, 0, -4) then B (z -26, -30, -34)
    assert s.instance_numbers.tolist() == [52, 51, 50, 72, 71, 70]
    np.testing.assert_allclose(s.normals[0], A_N)
    np.testing.assert_allclose(s.normals[3], B_N)
    np.testing.assert_allclose(s.centers[1], [0, 0, 0], atol=1e-9)


def test_axial_level_assignment_uses_each_slice_plane(tilted_axial):
    table = assign_axial_levels([tilted_axial], LEVELS).set_index("instance_number")
    assert table["level"].fillna("-").to_dict() == {70: "l4_l5", 71: "l4_l5", 72: "-", 50: "-", 51: "l3_l4",
                                                     52: "l3_l4"}
    np.testing.assert_allclose(table.loc[[70, 71, 72, 50, 51, 52], "distance_mm"], [4.2, 0.8, 5.8, 5.8, 0.8, 4.2])
    # in-plane pixel of (0, 0, 1) on slice 51: x = 15.5 + 0, y = 15.5 + (0, 0, 1).(0, 0.8, 0.6) = 16.1
    assert table.loc[51, ["x", "y"]].tolist() == pytest.approx([15.5, 16.1])
    strict = assign_axial_levels([tilted_axial], LEVELS, max_distance_mm=1.0)
    assert strict["level"].notna().sum() == 2


def test_nearest_axial_slice_over_several_series(tilted_axial, tmp_path):
    far = read_series(_write(tmp_path / "1" / "21", [(1, (-15.5, -15.5, 100.0), ROW, (0, 1, 0))]))
    best = nearest_axial_slice([far, tilted_axial], LEVELS["l3_l4"])
    assert best[:2] == (1, 1) and best[2] == pytest.approx(0.8)
    assert nearest_axial_slice([tilted_axial], (0, 0, 200)) is None


def test_projection_between_series_uses_the_tilted_plane(tilted_axial, tmp_path):
    # a plain sagittal series through x = 0: row (0, 1, 0), col (0, 0, -1), one slice at x = 0
    sag = read_series(_write(tmp_path / "1" / "30", [(1, (0.0, -20.0, 20.0), (0, 1, 0), (0, 0, -1))],
                             shape=(64, 64), spacing=(1.0, 1.0)))
    # pixel (x=20, y=20) of the sagittal slice is (0, 0, 0): the middle of sub-stack A
    inst, x, y, d = project_point(sag, 1, 20, 20, tilted_axial)
    assert inst == 51 and (x, y, d) == pytest.approx((15.5, 15.5, 0.0))
    # (0, 10, -30): the middle of sub-stack B, in its plane, although A's extended planes pass nearby
    inst, x, y, d = project_point(sag, 1, 30, 50, tilted_axial)
    assert inst == 71 and (x, y, d) == pytest.approx((15.5, 15.5, 0.0))


def test_roi_crop_in_mm_is_resampled_exactly(tmp_path):
    ramp = np.arange(40)[None, :] + 100 * np.arange(30)[:, None]  # value = x + 100 y, exact under bilinear
    s = read_series(_write(tmp_path / "1" / "40", [(1, (5.0, 6.0, 7.0), SAG_ROW, SAG_COL)], shape=(30, 40),
                           spacing=(0.5, 0.25), pixels=ramp))
    center = s.to_patient(1, 20, 10)
    roi = crop_roi(s, center, size_mm=4.0, out_size=4)
    # sample centres at -1.5, -0.5, 0.5, 1.5 mm: x 20 + (-6, -2, 2, 6), y 10 + (-3, -1, 1, 3)
    expected = (20 + np.array([-6, -2, 2, 6]))[None, :] + 100 * (10 + np.array([-3, -1, 1, 3]))[:, None]
    np.testing.assert_allclose(roi[0], expected, atol=1e-3)
    # a point 3 mm off the plane projects onto it; beyond the image edge the ROI is 0
    assert crop_roi(s, center + 3 * SAG_N, 4.0, 4)[0] == pytest.approx(expected, abs=1e-3)
    edge = crop_roi(s, s.to_patient(1, 0, 0), 4.0, 4, slices=[0])
    assert edge.shape == (1, 4, 4) and edge[0, 0, 0] == 0 and edge[0, 3, 3] > 0
    # the square drawn for that crop: 2 mm either side is 8 columns (0.25 mm) and 4 rows (0.5 mm), also off-plane
    assert roi_square(s, center, 4.0, 0) == pytest.approx((12.0, 6.0, 28.0, 14.0))
    assert roi_square(s, center + 3 * SAG_N, 4.0, 0) == pytest.approx((12.0, 6.0, 28.0, 14.0))


def test_roi_crop_reads_only_a_window_of_the_slice_and_matches_sampling_the_whole_slice(tmp_path):
    from scipy.ndimage import map_coordinates

    rng = np.random.default_rng(1)
    s = read_series(_write(tmp_path / "1" / "40", [(1, (5.0, 6.0, 7.0), SAG_ROW, SAG_COL)], shape=(30, 40),
                           spacing=(0.5, 0.25), pixels=rng.integers(0, 1000, (30, 40))))
    for _ in range(60):  # squares inside, across the edges of, and wholly outside the slice
        center = s.to_patient(1, *rng.uniform(-30, 70, 2))
        size, n, order = rng.uniform(1, 30), int(rng.integers(2, 24)), int(rng.integers(0, 4))
        x0, y0, x1, y1 = roi_square(s, center, size, 0)
        steps = (np.arange(n) + 0.5) / n
        yy, xx = np.meshgrid(y0 + steps * (y1 - y0), x0 + steps * (x1 - x0), indexing="ij")
        whole = map_coordinates(np.asarray(s.pixels[0], np.float32), [yy, xx], order=order, mode="constant")
        np.testing.assert_array_equal(crop_roi(s, center, size, n, order=order)[0], whole)


def test_volume_affine_matches_per_slice_geometry_for_a_regular_stack(oblique_sag):
    s = oblique_sag
    # voxel (x=3, y=5, slice 4) -> slice 4's pixel (3, 5); the slice step is 4 mm along the normal
    np.testing.assert_allclose(s.affine @ [3, 5, 4, 1], [*s.pixel_to_patient(4, 3, 5), 1], atol=1e-9)
    np.testing.assert_allclose(s.affine[:3, 2], -4 * SAG_N, atol=1e-9)  # one slice step towards patient left
    with pytest.raises(KeyError, match="no InstanceNumber 999; it has 101..107"):
        s.to_patient(999, 0, 0)
