"""Which axial slice each level gets (rsna2024.dicom.levels, used by the axial keypoint samples): axial series split
into blocks of contiguous parallel slices; blocks assigned to levels in spine order, robust to a shared offset of
the level points; a missing block leaves only its own level out; continuous stacks keep the nearest slice."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rsna2024.constants import AXIAL_T2, LEVELS
from rsna2024.data.contract import load_series_descriptions
from rsna2024.dicom.geometry import lps_oriented_normal, nearest_axial_slice
from rsna2024.dicom.levels import axial_blocks, level_slices, level_spacing
from rsna2024.dicom.series import Series
from rsna2024.keypoints.samples import axial_samples
from rsna2024.keypoints.studies import StudySeries

# A hand-built lumbar spine along patient z (LPS: +z superior): disc heights (mm) and the tilt of each disc
DISC_Z = dict(zip(LEVELS, (0.0, -36.0, -72.0, -106.0, -140.0)))
DISC_TILT = dict(zip(LEVELS, (-8.0, -3.0, 2.0, 8.0, 16.0)))
PIXELS, PIXEL_MM = 20, 5.0  # every slice: 20 x 20 pixels of 5 mm, centred on the canal (x = y = 0)


def _normal(tilt_deg: float) -> np.ndarray:
    t = np.deg2rad(tilt_deg)
    return np.array([0.0, -np.sin(t), np.cos(t)])  # row (1, 0, 0) x column (0, cos t, sin t)


def _series(slices, series_id: int = 1, reverse: bool = False) -> Series:
    """An axial series of slices ``(centre (3,), tilt_deg)``, listed superior first (or ``reverse``d)."""
    slices = list(slices)[::-1] if reverse else list(slices)
    positions, cols = [], []
    for centre, tilt in slices:
        t = np.deg2rad(tilt)
        col = np.array([0.0, np.cos(t), np.sin(t)])
        positions.append(np.asarray(centre) - (PIXELS - 1) / 2 * PIXEL_MM * (np.array([1.0, 0, 0]) + col))
        cols.append(col)
    n = len(slices)
    return Series(np.zeros((n, PIXELS, PIXELS), np.float32), np.arange(1, n + 1), positions, [(1.0, 0, 0)] * n,
                  cols, [(PIXEL_MM, PIXEL_MM)] * n, study_id=7, series_id=series_id)


def _block(level: str, n: int = 3, gap: float = 4.0, shift: float = 0.0):
    """One disc's stack: ``n`` slices ``gap`` apart along the disc's tilted normal, centred on the disc."""
    normal = _normal(DISC_TILT[level])
    centre = np.array([0.0, 0.0, DISC_Z[level] + shift])
    return [(centre - (k - (n - 1) / 2) * gap * normal, DISC_TILT[level]) for k in range(n)]


def _per_disc(levels=LEVELS, **kw) -> Series:
    return _series([s for lv in levels for s in _block(lv)], **kw)


def _continuous(top: float, bottom: float, gap: float = 4.0, tilt: float = 0.0, **kw) -> Series:
    normal = _normal(tilt)
    return _series([(z * normal, tilt) for z in np.arange(top, bottom - 1e-6, -gap)], **kw)


def _points(shift: float = 0.0, levels=LEVELS) -> dict[str, np.ndarray]:
    return {lv: np.array([0.0, 0.0, DISC_Z[lv] + shift]) for lv in levels}


def _block_of(series: Series, index: int) -> int:
    return next(k for k, b in enumerate(axial_blocks(series)) if index in b)


# ------------------------------------------------------------------------------------------------ blocks
def test_blocks_split_at_orientation_changes_and_large_steps():
    assert [len(b) for b in axial_blocks(_continuous(10.0, -150.0))] == [41]
    tilted = _per_disc()
    assert [b.tolist() for b in axial_blocks(tilted)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11], [12, 13, 14]]
    # parallel per-disc stacks (all at one tilt) split at the jumps between them
    parallel = _series([(np.array([0.0, 0.0, DISC_Z[lv] - k * 4.0]), 5.0) for lv in LEVELS for k in range(3)])
    assert [len(b) for b in axial_blocks(parallel)] == [3] * 5
    # evenly spaced slices split where the orientation turns (3 degrees), not elsewhere
    turn = _series([(np.array([0.0, 0.0, -4.0 * k]), 0.0 if k < 4 else 3.0) for k in range(8)])
    assert [b.tolist() for b in axial_blocks(turn)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    # a step of 1.5 typical steps stays inside the block; one of 2.5 starts a new one
    z = [0.0, -4.0, -8.0, -12.0, -18.0, -22.0, -26.0, -36.0, -40.0]
    gaps = _series([(np.array([0.0, 0.0, v]), 0.0) for v in z])
    assert [b.tolist() for b in axial_blocks(gaps)] == [[0, 1, 2, 3, 4, 5, 6], [7, 8]]


# ------------------------------------------------------------------------------------------------ per-disc stacks
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("shift", [0.0, 15.0, -15.0])
def test_a_shared_offset_keeps_every_level_on_its_own_block(shift, reverse):
    series = _per_disc(reverse=reverse)
    found, missing = level_slices([series], _points(shift))
    assert not missing
    for k, lv in enumerate(LEVELS):
        block = _block_of(series, found[lv].index)
        assert block == (4 - k if reverse else k), (lv, block)
        # within its block the slice nearest the point
        _, _, z = series.plane_coordinates(_points(shift)[lv])
        members = axial_blocks(series)[block]
        assert found[lv].index == members[np.argmin(np.abs(z[members]))]
    if shift:  # the old rule (nearest slice within 5 mm) finds no slice for any level here
        assert all(nearest_axial_slice([series], p) is None for p in _points(shift).values())


@pytest.mark.parametrize("shift", [0.0, 10.0, -10.0])
def test_a_missing_block_leaves_only_its_own_level_without_a_slice(shift):
    kept = [lv for lv in LEVELS if lv != "l3_l4"]
    series = _per_disc(kept)
    found, missing = level_slices([series], _points(shift))
    assert set(found) == set(kept) and set(missing) == {"l3_l4"}
    assert [_block_of(series, found[lv].index) for lv in kept] == [0, 1, 2, 3]


def test_a_level_point_far_from_every_slice_still_gets_the_block_that_belongs_to_it():
    points = _points()
    points["l1_l2"] = points["l1_l2"] + np.array([0.0, 0.0, 25.0])  # 25 mm above its block, 11 mm from the next
    series = _per_disc()
    found, missing = level_slices([series], points, max_distance_mm=5.0)
    assert not missing and found["l1_l2"].distance_mm > 20.0
    assert [_block_of(series, found[lv].index) for lv in LEVELS] == [0, 1, 2, 3, 4]
    # a block a whole spine away is never taken: a level above the stack's reach finds none
    far = level_slices([_per_disc(["l5_s1"])], {"l1_l2": _points()["l1_l2"]})
    assert far[0] == {} and "no axial slice shows the level point" in far[1]["l1_l2"]


# ------------------------------------------------------------------------------------------------ continuous stacks
@pytest.mark.parametrize("tilt", [0.0, 6.0])
def test_continuous_stack_with_exact_points_keeps_the_nearest_slice(tilt):
    series = _continuous(12.0, -152.0, tilt=tilt)
    points = {lv: p + np.array([3.0, -2.0, 1.3]) for lv, p in _points().items()}
    found, missing = level_slices([series], points)
    assert not missing
    for lv, p in points.items():
        assert (found[lv].series, found[lv].index) == nearest_axial_slice([series], p)[:2]


def test_continuous_stack_levels_keep_their_order_and_spacing():
    series = _continuous(12.0, -152.0)
    points = _points()
    points["l2_l3"] = points["l1_l2"] + np.array([0.0, 0.0, -2.0])  # L2/L3 predicted on top of L1/L2
    found, _ = level_slices([series], points)
    height = series.centers @ lps_oriented_normal(series)
    h = [height[found[lv].index] for lv in LEVELS]
    assert all(a > b for a, b in zip(h, h[1:]))  # superior to inferior
    assert h[0] - h[1] >= 17.0  # half the level spacing (median neighbour distance 35 mm) apart
    assert h[0] - h[1] <= 24.0  # ... and no farther than the two points need (each moves the least it can)
    for lv in LEVELS[2:]:  # the levels whose points did not crowd keep their nearest slices
        assert found[lv].index == nearest_axial_slice([series], points[lv])[1]
    # the slice search around a level never reaches a neighbouring level's slice
    for k, lv in enumerate(LEVELS):
        window = height[list(found[lv].window)]
        if k > 0:
            assert window.max() < h[k - 1]
        if k < len(LEVELS) - 1:
            assert window.min() > h[k + 1]


def test_continuous_stack_covering_part_of_the_spine_leaves_the_other_levels_out():
    series = _continuous(DISC_Z["l3_l4"] + 10.0, DISC_Z["l5_s1"] - 10.0)
    found, missing = level_slices([series], _points())
    assert set(found) == {"l3_l4", "l4_l5", "l5_s1"} and set(missing) == {"l1_l2", "l2_l3"}
    for lv in found:
        assert found[lv].index == nearest_axial_slice([series], _points()[lv])[1]


# ------------------------------------------------------------------------------------------------ several series
def test_the_series_covering_most_levels_gives_them_all():
    full = _per_disc(series_id=1)
    lower = _continuous(DISC_Z["l3_l4"] + 10.0, DISC_Z["l5_s1"] - 10.0, series_id=2)
    found, _ = level_slices([lower, full], _points())
    assert {lv: h.series for lv, h in found.items()} == dict.fromkeys(LEVELS, 1)
    # where the per-disc series lacks the lower levels, the other series fills them in
    upper = _per_disc(["l1_l2", "l2_l3"], series_id=1)
    found, missing = level_slices([lower, upper], _points())
    assert not missing
    assert {lv: h.series for lv, h in found.items()} == {"l1_l2": 1, "l2_l3": 1, "l3_l4": 0, "l4_l5": 0,
                                                          "l5_s1": 0}


# ------------------------------------------------------------------------------------------------ samples
def test_axial_samples_search_inside_the_level_block_only():
    series = _per_disc()
    samples, missing = axial_samples([series], _points(12.0), search_mm=10.0)
    assert not missing
    by_level = {lv: sorted(s.centre for s in samples if s.kind == f"axial:{lv}") for lv in LEVELS}
    assert by_level == {lv: axial_blocks(series)[k].tolist() for k, lv in enumerate(LEVELS)}
    plain, _ = axial_samples([series], _points(12.0))
    assert [s.centre for s in plain] == [b[0] for b in axial_blocks(series)]  # the top slice, nearest the points
    assert all(abs(s.distance_mm - (12.0 - 4.0) * 1.0) < 1.5 for s in plain)
    points = _points()
    points.pop("l4_l5")
    _, missing = axial_samples([series], points)
    assert missing == {"l4_l5": "no Sagittal T2 level point"}


# ------------------------------------------------------------------------------------------------ phantom
def test_phantom_per_disc_blocks_survive_a_shared_offset(phantom_dir, phantom_cache):
    """On the phantom's own series (stacks reversed, mirrored, numbered out of order), each per-disc series splits
    into one block per disc, and true level points moved along the spine keep every level on its block: by 15 mm
    where every level has its block, by 0.4 level spacings where only L3/L4 to L5/S1 have (the phantom's small
    spines have discs 28 mm apart; beyond half a spacing a shift by one level fits the points as well)."""
    truth = pd.read_csv(phantom_dir / "phantom" / "landmarks.csv").set_index(["study_id", "structure", "level"])
    studies = StudySeries(phantom_cache, load_series_descriptions(phantom_dir, "train"), "train")
    checked = 0
    for sid in studies.study_ids:
        points = {lv: truth.loc[(sid, "spinal_canal_stenosis", lv), ["x_mm", "y_mm", "z_mm"]].to_numpy(float)
                  for lv in LEVELS}
        for series in studies.series(sid, AXIAL_T2):
            blocks = axial_blocks(series)
            if len(blocks) == 1:
                continue
            assert len(blocks) in (3, 5) and {len(b) for b in blocks} == {3}, series.name
            exact, _ = level_slices([series], points)
            assert len(exact) == len(blocks)
            up = lps_oriented_normal(series)
            offset = 15.0 if len(blocks) == 5 else 0.4 * level_spacing(points)
            for shift in (offset, -offset):
                moved, _ = level_slices([series], {lv: p + shift * up for lv, p in points.items()})
                assert {lv: _block_of(series, h.index) for lv, h in moved.items()} == \
                    {lv: _block_of(series, h.index) for lv, h in exact.items()}, (series.name, shift)
            checked += 1
    assert checked >= 3


def test_the_study_report_shows_the_axial_slices_the_pipeline_takes():
    from rsna2024.inference.study_report import _axial_levels

    # level points 14 mm below their discs: no slice is within 5 mm of any, yet each level keeps its own block
    series, points = _per_disc(), _points(shift=-14.0)
    used = pd.DataFrame([{"condition": "spinal_canal_stenosis", "level": lv, "x_mm": p[0], "y_mm": p[1], "z_mm": p[2]}
                         for lv, p in points.items()])
    table = _axial_levels([series], used, None, 5.0)
    found, missing = level_slices([series], points, LEVELS, 5.0)
    chosen = table[table["chosen"]].set_index("level")
    assert missing == {} and {lv: int(i) for lv, i in chosen["slice_index"].items()} == \
        {lv: hit.index for lv, hit in found.items()}
    # each level: its own block of 3 slices, the inferior one (4 mm below the disc along its normal) shown
    assert chosen["slice_index"].tolist() == [3 * i + 2 for i in range(len(LEVELS))]
    assert table.groupby("level").size().eq(3).all()
    expected = [14.0 * np.cos(np.deg2rad(DISC_TILT[lv])) - 4.0 for lv in LEVELS]
    np.testing.assert_allclose(chosen.loc[list(LEVELS), "distance_mm"], expected, atol=1e-6)
