"""The canonical orientation: every way a series can be written reads into one layout, and every stored
(InstanceNumber, x, y) maps to canonical (slice, x, y) and back exactly.

Each variant is written as real DICOM from a hand-made box: canonical pixel (k, xc, yc) lies at
``ORIGIN + xc * SX * tx + yc * SY * ty + k * DZ * tz`` with the plane's canonical directions written out
below (independently of the kit's table). The stored grid of each variant is derived by hand from the
canonical one, so every expectation is computed without the code under test.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rsna2024.dicom import read_series
from rsna2024.dicom.cache import load_cached_series, preprocess
from rsna2024.dicom.geometry import assign_axial_levels, nearest_axial_slice
from rsna2024.dicom.orientation import Orientation
from rsna2024.dicom.series import Series, canonicalize
from rsna2024.errors import DicomError
from rsna2024.synthetic.dicom_writer import SliceGeometry, write_mr_slice

# plane -> (tx: canonical row direction, ty: canonical column direction, tz: slice order), LPS
AXES = {
    "sagittal": ((0, 1, 0), (0, 0, -1), (1, 0, 0)),  # anterior left, head up, right -> left
    "coronal": ((1, 0, 0), (0, 0, -1), (0, 1, 0)),  # patient right on the left, head up, anterior -> posterior
    "axial": ((1, 0, 0), (0, 1, 0), (0, 0, -1)),  # patient right on the left, anterior up, head -> foot
}
W, H, N = 12, 8, 5  # canonical columns, rows, slices
SX, SY, DZ = 0.5, 0.75, 3.0  # mm between canonical columns, rows, slices
ORIGIN = np.array([10.0, -20.0, 30.0])
ODD = 2  # the slice written at half resolution in the odd-size variants
# in-plane variants: (transpose, stored x runs against its canonical axis, stored y runs against its axis)
IN_PLANE = {"as canonical": (False, False, False), "row reversed": (False, True, False),
            "column reversed": (False, False, True), "both reversed": (False, True, True),
            "transposed": (True, False, False), "transposed, both reversed": (True, True, True)}


class Variant:
    """A series written in one stored layout, with the hand mapping stored pixel -> canonical pixel."""

    def __init__(self, plane: str, in_plane: str, instances_descending: bool, odd: bool):
        self.plane, self.odd = plane, odd
        self.transpose, self.rev_x, self.rev_y = IN_PLANE[in_plane]
        self.tx, self.ty, self.tz = (np.array(a, dtype=float) for a in AXES[plane])
        # stored x runs along canonical x (or y if transposed), forwards or backwards
        ax, ay = (self.ty, self.tx) if self.transpose else (self.tx, self.ty)
        self.row_dir = -ax if self.rev_x else ax
        self.col_dir = -ay if self.rev_y else ay
        # stored (rows, columns) and PixelSpacing (row spacing = along col_dir, column spacing = along row_dir)
        self.shape = (W, H) if self.transpose else (H, W)
        self.spacing = (SX, SY) if self.transpose else (SY, SX)
        # stored pixel (0, 0) is the canonical corner its axes start from
        xc0, yc0 = self.canonical_xy(0, 0)
        self.instances = [100 + (N - k if instances_descending else k + 1) for k in range(N)]
        self.positions = [ORIGIN + xc0 * SX * self.tx + yc0 * SY * self.ty + k * DZ * self.tz for k in range(N)]

    def canonical_xy(self, x, y):
        """Canonical (xc, yc) of a stored pixel of a full-size slice."""
        u = (W - 1 if not self.transpose else H - 1) - x if self.rev_x else x
        v = (H - 1 if not self.transpose else W - 1) - y if self.rev_y else y
        return (v, u) if self.transpose else (u, v)

    def canonical_of(self, k: int, x, y):
        """Canonical (slice, xc, yc) of stored pixel (x, y) of slice k (the odd slice is half size)."""
        if self.odd and k == ODD:  # field of view on field of view: half-size pixel x covers full-size 2x, 2x+1
            x, y = 2 * x + 0.5, 2 * y + 0.5
        return (k, *self.canonical_xy(x, y))

    def geometry(self, k: int) -> tuple[np.ndarray, tuple[int, int], tuple[float, float]]:
        """(ImagePositionPatient, (Rows, Columns), PixelSpacing) as written for slice k."""
        if self.odd and k == ODD:  # same field of view, pixels twice as large: first centre half a pixel in
            pos = self.positions[k] + 0.5 * self.spacing[1] * self.row_dir + 0.5 * self.spacing[0] * self.col_dir
            return pos, (self.shape[0] // 2, self.shape[1] // 2), (2 * self.spacing[0], 2 * self.spacing[1])
        return self.positions[k], self.shape, self.spacing

    def patient(self, k: int, x, y) -> np.ndarray:
        """LPS point of stored pixel (x, y) of slice k, from the written tags."""
        pos, _, sp = self.geometry(k)
        return pos + x * sp[1] * self.row_dir + y * sp[0] * self.col_dir

    @staticmethod
    def value(k: int, xc, yc):
        """The pixel value written at canonical (k, xc, yc) (the odd slice holds a constant)."""
        return 1000 * k + 20 * np.asarray(yc) + np.asarray(xc)

    def write(self, folder: Path, study: int = 1, series: int = 2, marker: tuple[int, int, int] | None = None,
              ) -> Path:
        """Write the series; ``marker`` = canonical (k, xc, yc) of a pixel set to 60000 (found through
        the written geometry: the stored pixel whose centre is that patient point)."""
        for k in range(N):
            pos, shape, sp = self.geometry(k)
            if self.odd and k == ODD:
                img = np.full(shape, 1000 * k + 500)
            else:
                y, x = np.mgrid[:shape[0], :shape[1]]
                img = self.value(*self.canonical_of(k, x, y))
            if marker is not None and marker[0] == k:
                point = ORIGIN + marker[1] * SX * self.tx + marker[2] * SY * self.ty + k * DZ * self.tz
                xs, ys = (point - pos) @ self.row_dir / sp[1], (point - pos) @ self.col_dir / sp[0]
                img[int(round(ys)), int(round(xs))] = 60000
            write_mr_slice(folder / f"{self.instances[k]}.dcm", img, SliceGeometry(pos, self.row_dir, self.col_dir,
                                                                                   sp, DZ),
                           instance_number=self.instances[k], series_description=self.plane, study_id=study,
                           series_id=series)
        return folder


VARIANTS = [(plane, in_plane, desc, odd) for plane in AXES for in_plane in IN_PLANE for desc in (False, True)
            for odd in (False, True)]


def _id(v) -> str:
    return f"{v[0]}-{v[1].replace(' ', '').replace(',', '+')}-{'desc' if v[2] else 'asc'}{'-odd' if v[3] else ''}"


@pytest.mark.parametrize("variant", VARIANTS, ids=[_id(v) for v in VARIANTS])
def test_every_written_layout_reads_canonical_and_maps_back_exactly(tmp_path, variant):
    v = Variant(*variant)
    s = read_series(v.write(tmp_path / "1" / "2"))

    # the canonical grid: hand-computed directions, spacings, origin and slice order
    assert s.shape == (N, H, W)
    np.testing.assert_array_equal(s.row_dirs, np.tile(v.tx, (N, 1)))
    np.testing.assert_array_equal(s.col_dirs, np.tile(v.ty, (N, 1)))
    np.testing.assert_array_equal(s.spacings, np.tile([SY, SX], (N, 1)))
    np.testing.assert_array_equal(s.positions, [ORIGIN + k * DZ * v.tz for k in range(N)])
    assert s.instance_numbers.tolist() == v.instances
    assert s.slice_spacing == pytest.approx(DZ)
    o = s.orientation
    assert (o.plane, o.transpose, o.reversed) == (v.plane, v.transpose, variant[2])
    assert (o.flip_x, o.flip_y) == (v.rev_x, v.rev_y)
    # every canonical pixel holds the value written at its hand-computed stored pixel
    yc, xc = np.mgrid[:H, :W]
    for k in range(N):
        expected = np.full((H, W), 1000 * k + 500) if v.odd and k == ODD else v.value(k, xc, yc)
        np.testing.assert_array_equal(s.pixels[k], expected, err_msg=f"canonical slice {k}")

    # label points: stored (instance, x, y) -> patient mm -> canonical (index, xc, yc) -> back, exactly
    for k, x, y in [(1, 3, 5), (1, 3.25, 5.5), (N - 1, 0, 0), (ODD, 2, 3), (ODD, 0.75, 1.5)]:
        inst = v.instances[k]
        point = s.to_patient(inst, x, y)
        np.testing.assert_allclose(point, v.patient(k, x, y), atol=1e-12)
        index, cx, cy = s.stored_to_canonical(inst, x, y)
        assert (index, cx, cy) == v.canonical_of(k, x, y)
        np.testing.assert_allclose(s.pixel_to_patient(index, cx, cy), point, atol=1e-12)
        assert s.canonical_to_stored(index, cx, cy) == (inst, x, y)
        assert s.nearest_slice(point + 0.5 * v.tz) == pytest.approx((index, cx, cy, 0.5), abs=1e-9)
        assert s.from_patient(point - 0.5 * v.tz) == pytest.approx((inst, x, y, 0.5), abs=1e-9)
        assert s.stored_shape(inst) == ((v.shape[0] // 2, v.shape[1] // 2) if v.odd and k == ODD else v.shape)
    # vectorised: all stored pixels of one slice at once
    ys, xs = np.mgrid[:v.shape[0], :v.shape[1]]
    index, cx, cy = s.stored_to_canonical(v.instances[3], xs, ys)
    assert (index == 3).all()
    np.testing.assert_array_equal(np.stack([cx, cy]), np.stack(v.canonical_xy(xs, ys)))
    inst, bx, by = s.canonical_to_stored(index, cx, cy)
    assert (inst == v.instances[3]).all() and (bx == xs).all() and (by == ys).all()


@pytest.mark.parametrize("plane", list(AXES))
def test_canonical_corner_is_right_anterior_superior_and_a_marker_lands_where_computed(tmp_path, plane):
    v = Variant(plane, "transposed, both reversed", True, False)
    s = read_series(v.write(tmp_path / "1" / "2", marker=(3, 7, 2)))
    # the eight corner voxels of the volume; canonical (slice 0, x 0, y 0) is the most right (min x),
    # anterior (min y) and superior (max z) of them in all three canonical layouts
    corners = np.array([s.pixel_to_patient(k, x, y) for k in (0, N - 1) for x in (0, W - 1) for y in (0, H - 1)])
    first = s.pixel_to_patient(0, 0, 0)
    assert first[0] == corners[:, 0].min() and first[1] == corners[:, 1].min() and first[2] == corners[:, 2].max()
    # and the opposite corner is left, posterior, inferior
    last = s.pixel_to_patient(N - 1, W - 1, H - 1)
    assert last[0] == corners[:, 0].max() and last[1] == corners[:, 1].max() and last[2] == corners[:, 2].min()
    # the marker written at canonical (3, x 7, y 2): the brightest canonical pixel is at [3, 2, 7]
    assert np.unravel_index(np.argmax(s.pixels), s.shape) == (3, 2, 7)


def test_sagittal_written_left_to_right_with_mirrored_rows_hand_computed(tmp_path):
    """One case spelt out: sagittal files written left to right (instance 1 leftmost), rows running
    anterior (-y), columns inferior; 3 slices at x = 4, 0, -4 (instances 1, 2, 3), 4 x 6 pixels of 1 mm."""
    folder = tmp_path / "1" / "2"
    for inst, x in ((1, 4.0), (2, 0.0), (3, -4.0)):
        img = np.zeros((4, 6))
        img[1, 0] = 100 * inst  # stored row 1, column 0: (x, 10, 19) (column 0 is the most posterior)
        write_mr_slice(folder / f"{inst}.dcm", img, SliceGeometry((x, 10, 20), (0, -1, 0), (0, 0, -1), (1, 1), 4),
                       instance_number=inst, series_description="Sagittal T1", study_id=1, series_id=2)
    s = read_series(folder)
    assert s.orientation == Orientation("sagittal", flip_x=True, flip_y=False, transpose=False, reversed=True)
    assert s.instance_numbers.tolist() == [3, 2, 1]  # patient right (x = -4) first
    # canonical pixel (0, 0) of slice 0: right-most slice, anterior-most column (y = 10 - 5), top row (z = 20)
    np.testing.assert_array_equal(s.positions[0], [-4, 5, 20])
    np.testing.assert_array_equal(s.row_dirs[0], [0, 1, 0])
    # the marker at y = 10 is the most posterior column: canonical x = 5, row 1
    assert s.pixels[:, 1, 5].tolist() == [300, 200, 100]
    assert s.stored_to_canonical(1, 0, 1) == (2, 5, 1)
    assert s.canonical_to_stored(2, 5, 1) == (1, 0, 1)
    np.testing.assert_array_equal(s.to_patient(1, 0, 1), [4, 10, 19])


def test_canonicalize_matches_the_reader_and_is_idempotent(tmp_path):
    v = Variant("axial", "transposed, both reversed", True, False)
    read = read_series(v.write(tmp_path / "1" / "2"))
    # the same slices as stored, given directly: pixels as in the files, positions in file order
    stored = Series(
        pixels=np.stack([v.value(*v.canonical_of(k, *np.mgrid[:W, :H][::-1])) for k in range(N)]).astype(np.float32),
        instance_numbers=v.instances, positions=v.positions, row_dirs=[v.row_dir] * N, col_dirs=[v.col_dir] * N,
        spacings=[v.spacing] * N)
    canon = canonicalize(stored)
    np.testing.assert_array_equal(canon.pixels, read.pixels)
    for name in ("instance_numbers", "positions", "row_dirs", "col_dirs", "spacings"):
        np.testing.assert_array_equal(getattr(canon, name), getattr(read, name), err_msg=name)
    assert canon.orientation == read.orientation
    assert canonicalize(read) is read and canonicalize(canon) is canon
    with pytest.raises(ValueError, match="needs the stored geometry"):
        Series(read.pixels, read.instance_numbers, read.positions, read.row_dirs, read.col_dirs, read.spacings,
               orientation=read.orientation)


def test_cache_round_trip_gives_the_same_series_and_conversions(tmp_path):
    data = tmp_path / "data"
    variants = {21: Variant("sagittal", "transposed", True, True), 22: Variant("axial", "both reversed", False, True)}
    for sid, v in variants.items():
        v.write(data / "train_images" / "7" / str(sid), study=7, series=sid)
    pd.DataFrame({"study_id": 7, "series_id": list(variants), "series_description": ["Sagittal T1", "Axial T2"]}
                 ).to_csv(data / "train_series_descriptions.csv", index=False)
    index = preprocess(data, cache_root=tmp_path / "cache", split="train")
    slices = pd.read_csv(index.parent / "slices.csv").set_index(["series_id", "instance_number"])
    for sid, v in variants.items():
        direct = read_series(data / "train_images" / "7" / str(sid))
        cached = load_cached_series(index, 7, sid)
        for name in ("instance_numbers", "positions", "row_dirs", "col_dirs", "spacings"):
            np.testing.assert_array_equal(getattr(cached, name), getattr(direct, name), err_msg=name)
        for name in ("positions", "row_dirs", "col_dirs", "spacings", "shapes"):
            np.testing.assert_array_equal(getattr(cached.stored, name), getattr(direct.stored, name), err_msg=name)
        assert cached.orientation == direct.orientation
        xs, ys = np.array([0, 1.5, 3]), np.array([2, 0.25, 1])
        for inst in v.instances:
            np.testing.assert_array_equal(cached.to_patient(inst, xs, ys), direct.to_patient(inst, xs, ys))
            assert np.array_equal(np.stack(cached.stored_to_canonical(inst, xs, ys)),
                                  np.stack(direct.stored_to_canonical(inst, xs, ys)))
        odd = v.instances[ODD]
        assert slices.loc[(sid, odd), ["stored_rows", "stored_columns"]].tolist() == [v.shape[0] // 2, v.shape[1] // 2]
        assert slices.loc[(sid, odd), "stored_row_spacing"] == 2 * v.spacing[0]
        assert slices.loc[(sid, odd), "row_spacing"] == SY
        assert json.loads((index.parent / "series" / "7" / f"{sid}.json").read_text())["orientation"] == \
            direct.orientation.to_dict()


# ------------------------------------------------------------------------------ slices of another orientation
def _sagittal_slices(folder: Path, n: int = 5, extra: list[tuple[str, tuple, tuple, tuple]] = ()) -> Path:
    for k in range(n):
        write_mr_slice(folder / f"{k + 1}.dcm", np.full((6, 6), k), SliceGeometry((2.0 * k, 0, 0), (0, 1, 0),
                                                                                  (0, 0, -1), (1, 1), 2),
                       instance_number=k + 1, series_description="Sagittal T2/STIR", study_id=1, series_id=2)
    for i, (name, pos, row, col) in enumerate(extra):
        write_mr_slice(folder / name, np.full((6, 6), 99), SliceGeometry(pos, row, col, (1, 1), 2),
                       instance_number=50 + i, series_description="Sagittal T2/STIR", study_id=1, series_id=2)
    return folder


def test_slice_of_another_plane_or_mirrored_is_dropped_with_a_warning(tmp_path, caplog):
    folder = _sagittal_slices(tmp_path / "1" / "2", extra=[("localizer.dcm", (0, 0, 0), (1, 0, 0), (0, 1, 0)),
                                                           ("mirrored.dcm", (5, 0, 0), (0, -1, 0), (0, 0, -1))])
    with caplog.at_level(logging.WARNING):
        s = read_series(folder)
    assert s.instance_numbers.tolist() == [1, 2, 3, 4, 5]
    assert "localizer.dcm" in caplog.text and "90.0 degrees" in caplog.text
    assert "mirrored.dcm" in caplog.text and "180.0 degrees" in caplog.text


def test_tilted_sub_stack_is_kept(tmp_path, caplog):
    # a slice tilted 25 degrees about the anterior-posterior axis stays part of the series
    c = np.cos(np.deg2rad(25)), np.sin(np.deg2rad(25))
    folder = _sagittal_slices(tmp_path / "1" / "2", extra=[("tilted.dcm", (11, 0, 0), (0, 1, 0), (c[1], 0, -c[0]))])
    with caplog.at_level(logging.WARNING):
        s = read_series(folder)
    assert len(s.instance_numbers) == 6 and "dropping" not in caplog.text


def test_slices_without_a_common_orientation_are_an_error(tmp_path):
    folder = tmp_path / "1" / "2"
    for i, (row, col) in enumerate([((0, 1, 0), (0, 0, -1)), ((1, 0, 0), (0, 1, 0)), ((1, 0, 0), (0, 0, -1))]):
        write_mr_slice(folder / f"{i}.dcm", np.zeros((4, 4)), SliceGeometry((0, 0, i), row, col, (1, 1), 1),
                       instance_number=i + 1, series_description="Axial T2", study_id=1, series_id=2)
    with pytest.raises(DicomError, match="1/2: no two slices share an orientation"):
        read_series(folder)


# ------------------------------------------------------------------------------ axial levels inside the image
def _axial(z: float, x0: float, series_id: int) -> Series:
    """One 10 x 10 axial slice of 1 mm at height z covering x0..x0 + 9, y 0..9."""
    return Series(np.zeros((1, 10, 10), np.float32), [1], [(x0, 0.0, z)], [(1, 0, 0)], [(0, 1, 0)], [(1, 1)],
                  study_id=1, series_id=series_id)


def test_axial_level_is_assigned_only_where_its_point_falls_inside_the_image():
    inside, beside = _axial(0.0, 0.0, 1), _axial(0.0, 100.0, 2)
    table = assign_axial_levels([inside, beside], {"l4_l5": (5.0, 5.0, 1.0)}).set_index("series_id")
    assert table.loc[1, "level"] == "l4_l5" and table.loc[1, "distance_mm"] == 1.0
    assert table.loc[1, ["x", "y"]].tolist() == [5.0, 5.0]
    # 1 mm from the plane of series 2 but 95 mm beside its image: no level
    assert table.loc[2, "level"] is None and np.isnan(table.loc[2, "distance_mm"]) and np.isnan(table.loc[2, "x"])
    # of two levels the nearest one inside the image wins, even when the other's plane is nearer
    levels = {"l3_l4": (105.0, 5.0, 0.5), "l4_l5": (5.0, 5.0, 2.0)}
    table = assign_axial_levels([inside], levels)
    assert table["level"].tolist() == ["l4_l5"] and table["distance_mm"].tolist() == [2.0]


def test_nearest_axial_slice_prefers_slices_whose_image_holds_the_point():
    beside, inside = _axial(1.0, 100.0, 1), _axial(0.0, 0.0, 2)  # point (5, 5, 1.5): 0.5 mm and 1.5 mm away
    assert nearest_axial_slice([beside, inside], (5.0, 5.0, 1.5)) == (1, 0, 1.5)
    # with no image holding the point the nearest plane is taken
    assert nearest_axial_slice([beside, _axial(0.0, 200.0, 3)], (5.0, 5.0, 1.5)) == (0, 0, 0.5)
