"""The phantom's model: anatomy geometry, severity as anatomy, labels, slice plans, quirks, learnability."""
from __future__ import annotations

import math
from dataclasses import fields, replace

import numpy as np
import pandas as pd
import pytest
from kaggle_folder import REALDATA as REAL

from rsna2024.constants import CONDITION_SERIES, CONDITIONS, LABELS, LEVELS, REAL_CLASS_FREQUENCIES, TARGET_COLUMNS
from rsna2024.synthetic.anatomy import DISC_INDEX, NARROWING_RANGES, rotation_matrix, sample_anatomy
from rsna2024.synthetic.generate import PRIMARY_ROLE
from rsna2024.synthetic.labels import MISSING, class_frequencies, labels_frame, mask_missing, sample_classes
from rsna2024.synthetic.quirks import ORIENTATION_KINDS, TEST_QUIRKS, QuirkRates, StudyQuirks, draw_quirks
from rsna2024.synthetic.render import CSF, FAT, NERVE, Appearance, render_slice, tissue_map, upsample2
from rsna2024.synthetic.series import MARGIN, SIZES, SlicePlan, orient, plan_series
from rsna2024.synthetic.spread import (
    guess_errors,
    mean_position_guess,
    planned_coordinates,
    series_type,
    spread_table,
)

ALL_NORMAL = np.zeros(len(TARGET_COLUMNS), dtype=int)


def _anatomy(seed: int = 0, classes=ALL_NORMAL):
    return sample_anatomy(np.random.default_rng(seed), np.asarray(classes))


# ---------------------------------------------------------------- anatomy geometry
def test_curve_coordinates_hand_computed():
    anat = replace(_anatomy(), rotation=np.eye(3), shift=np.zeros(3), radius=300.0)
    assert np.allclose(anat.to_patient(5.0, 0.0, 0.0), [5.0, 0.0, 0.0])
    s30 = 300.0 * math.pi / 6  # 30 degrees along the arc
    assert np.allclose(anat.to_patient(0.0, 0.0, s30), [0.0, 300 - 300 * math.cos(math.pi / 6), 150.0])
    assert np.allclose(anat.to_patient(0.0, 10.0, s30), [0.0, 300 - 290 * math.cos(math.pi / 6), 145.0])
    assert np.allclose(anat.tangent(s30), [0.0, 0.5, math.cos(math.pi / 6)])
    w, u, s = anat.to_local(np.array([[0.0, 300 - 290 * math.cos(math.pi / 6), 145.0]]))
    assert np.allclose([w[0], u[0], s[0]], [0.0, 10.0, s30])


def test_pose_rotation_hand_computed_and_round_trip():
    assert np.allclose(rotation_matrix(90, 0, 0) @ [0, 1, 0], [0, 0, 1])  # pitch about x: posterior -> superior
    assert np.allclose(rotation_matrix(0, 0, 90) @ [1, 0, 0], [0, 1, 0])  # yaw about z: left -> posterior
    anat = replace(_anatomy(), rotation=rotation_matrix(0, 0, 90), shift=np.array([1.0, 2.0, 3.0]), radius=300.0)
    assert np.allclose(anat.to_patient(5.0, 0.0, 0.0), [1.0, 7.0, 3.0])
    anat = _anatomy(3)
    rng = np.random.default_rng(1)
    w, u, s = rng.uniform(-40, 40, 50), rng.uniform(-30, 60, 50), rng.uniform(-100, 100, 50)
    back = anat.to_local(anat.to_patient(w, u, s))
    assert np.allclose(np.stack(back), np.stack([w, u, s]), atol=1e-9)


def test_landmarks_sit_in_their_structures_at_every_severity():
    for seed in range(6):
        classes = np.full(len(TARGET_COLUMNS), seed % 3)
        anat = _anatomy(seed, classes)
        for level in LEVELS:
            tissue = {c: int(tissue_map(anat, anat.landmark(c, level)[None])[0]) for c in CONDITIONS}
            assert tissue["spinal_canal_stenosis"] == CSF
            for side in ("left", "right"):
                assert tissue[f"{side}_neural_foraminal_narrowing"] in (FAT, NERVE)
                assert tissue[f"{side}_subarticular_stenosis"] in (CSF, NERVE)
        lm = anat.landmarks()
        assert len(lm) == 6 * len(LEVELS)


# ---------------------------------------------------------------- severity is anatomy
def test_narrowing_fractions_follow_the_class_ranges():
    classes = np.arange(len(TARGET_COLUMNS)) % 3
    anat = _anatomy(5, classes)
    for j, target in enumerate(TARGET_COLUMNS):
        cond, level = next((c, target[len(c) + 1:]) for c in CONDITIONS if target.startswith(c))
        lo, hi = NARROWING_RANGES[classes[j]]
        assert lo <= anat.narrowing[cond][DISC_INDEX[level]] <= hi, target
    for (lo1, hi1), (lo2, hi2) in zip(NARROWING_RANGES, NARROWING_RANGES[1:]):
        assert lo1 < lo2 < hi1 < hi2  # neighbouring classes overlap a little


def _with_narrowing(anat, condition: str, level: str, fraction: float):
    narrowing = {c: v.copy() for c, v in anat.narrowing.items()}
    narrowing[condition][DISC_INDEX[level]] = fraction
    return replace(anat, narrowing=narrowing)


@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.8])
def test_canal_depth_at_the_disc_shrinks_by_the_fraction(fraction):
    """Along the mid-sagittal AP line through the disc, CSF spans 2 * canal half-depth * (1 - fraction)."""
    anat = _with_narrowing(_anatomy(2), "spinal_canal_stenosis", "l4_l5", fraction)
    s = anat.disc_s[DISC_INDEX["l4_l5"]]
    step = 0.01
    u = np.arange(anat.canal_u - 15, anat.canal_u + 15, step)
    lab = tissue_map(anat, anat.to_patient(np.zeros_like(u), u, np.full_like(u, s)))
    assert (lab == CSF).sum() * step == pytest.approx(2 * anat.canal_ap * (1 - fraction), abs=2 * step)


@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.8])
def test_foraminal_area_shrinks_by_the_fraction(fraction):
    """In the (s, u) plane through the left foramen's centre, fat + root area = pi * rs * ru * (1 - fraction)."""
    anat = _with_narrowing(_anatomy(4), "left_neural_foraminal_narrowing", "l3_l4", fraction)
    w0, u0, s0 = anat.landmark_local("left_neural_foraminal_narrowing", "l3_l4")
    step = 0.05
    ss, uu = np.meshgrid(np.arange(s0 - 9, s0 + 9, step), np.arange(u0 - 6, u0 + 6, step))
    lab = tissue_map(anat, anat.to_patient(np.full(ss.size, w0), uu.ravel(), ss.ravel()))
    area = np.isin(lab, (FAT, NERVE)).sum() * step**2
    assert area == pytest.approx(math.pi * anat.foramen_rs * anat.foramen_ru * (1 - fraction), rel=0.03)


# ---------------------------------------------------------------- labels
def test_label_frequencies_of_500_studies_match_the_real_ones():
    observed = mask_missing(np.random.default_rng(1), sample_classes(np.random.default_rng(0), 500))
    freq = class_frequencies(observed)
    for cond in CONDITIONS:
        targets = [t for t in TARGET_COLUMNS if t.startswith(cond)]
        phantom = np.mean([freq[t] for t in targets], axis=0)
        real = np.mean([REAL_CLASS_FREQUENCIES[t] for t in targets], axis=0)
        assert np.abs(phantom - real).max() < 0.03, (cond, phantom, real)
    for t in TARGET_COLUMNS:  # per target too, with a looser bound (500 draws each)
        assert np.abs(np.subtract(freq[t], REAL_CLASS_FREQUENCIES[t])).max() < 0.08, t


@pytest.mark.realdata
def test_real_class_frequencies_match_the_real_train_csv():
    if not REAL.is_dir():
        pytest.skip(f"real label files not found in {REAL}")
    real = pd.read_csv(REAL / "train.csv")
    for t in TARGET_COLUMNS:
        counts = real[t].value_counts(normalize=True)
        assert np.allclose([counts.get(lab, 0.0) for lab in LABELS], REAL_CLASS_FREQUENCIES[t], atol=1e-3), t


def test_missing_labels_about_one_percent_and_correlated_severity():
    classes = sample_classes(np.random.default_rng(0), 4000)
    observed = mask_missing(np.random.default_rng(1), classes)
    rate = (observed == MISSING).mean()
    assert 0.005 < rate < 0.02
    assert 0.03 < (observed == MISSING).any(axis=1).mean() < 0.2  # concentrated in some studies
    assert ((observed == classes) | (observed == MISSING)).all()
    sick = (classes > 0).astype(float)
    corr = np.corrcoef(sick[:, TARGET_COLUMNS.index("spinal_canal_stenosis_l4_l5")],
                       sick[:, TARGET_COLUMNS.index("left_subarticular_stenosis_l4_l5")])[0, 1]
    assert corr > 0.1  # one spine degenerates as a whole


def test_labels_frame_writes_the_real_strings():
    df = labels_frame([11, 22], np.array([[0] * 24 + [2], [MISSING] + [1] * 24]))
    assert list(df.columns) == ["study_id", *TARGET_COLUMNS]
    assert df.iloc[0, -1] == "Severe" and df.iloc[1, 2] == "Moderate"
    assert pd.isna(df.iloc[1, 1]) and df.iloc[0, 1] == "Normal/Mild"


# ---------------------------------------------------------------- slice plans
def test_slice_plan_geometry_hand_computed():
    sl = SlicePlan(centre=np.zeros(3), row_dir=np.array([0.0, 1, 0]), col_dir=np.array([0.0, 0, -1]), rows=4, cols=4,
                   pixel=2.0, thickness=3.0, gap=3.5, instance_number=1)
    assert np.allclose(sl.position, [0.0, -3.0, 3.0])
    assert np.allclose(sl.normal, [-1.0, 0.0, 0.0])  # posterior x inferior = patient right
    x, y, d = sl.project(np.array([1.0, 1.0, -1.0]))
    assert (x, y, d) == pytest.approx((2.0, 2.0, -1.0))
    pts = sl.points()
    assert pts.shape == (16, 3) and np.allclose(pts[0], sl.position) and np.allclose(pts[5], [0.0, -1.0, 1.0])
    g = sl.geometry()
    assert tuple(g.spacing) == (2.0, 2.0) and g.spacing_between_slices == 3.5
    assert np.allclose(sl.to_patient(2.0, 2.0), [0.0, 1.0, -1.0])
    assert np.allclose(sl.to_patient(np.array([0.0, 1.0]), np.zeros(2)), [[0.0, -3.0, 3.0], [0.0, -1.0, 3.0]])


def test_upsample2_keeps_pixel_centres_aligned():
    """Fine pixel j lies at coarse coordinate (j - 0.5) / 2: a linear ramp stays a ramp, clamped at the edges."""
    ramp = np.tile(np.arange(5.0), (3, 1))
    up = upsample2(ramp)
    assert up.shape == (6, 10)
    assert np.allclose(up[0], np.clip((np.arange(10) - 0.5) / 2, 0, 4))
    assert np.allclose(up[:, 4], 1.75)  # constant along the other axis
    assert np.allclose(upsample2(ramp.T), up.T)


@pytest.mark.parametrize("size", ["small", "full"])
def test_every_landmark_falls_inside_its_series(size):
    """Over many random studies, each condition's landmark lies in the image and within half a gap of a slice."""
    rng = np.random.default_rng(0)
    quirks = StudyQuirks()
    for seed in range(60):
        anat = _anatomy(seed, rng.integers(0, 3, len(TARGET_COLUMNS)))
        plans = {p.role: p for p in plan_series(anat, rng, SIZES[size], dict(sag_t1=1, sag_t2=2, axial=3), quirks)}
        for cond in CONDITIONS:
            plan = plans[PRIMARY_ROLE[CONDITION_SERIES[cond]]]
            for level in LEVELS:
                sl, x, y, dist = plan.nearest_slice(anat.landmark(cond, level))
                assert 0 <= x <= sl.cols - 1 and 0 <= y <= sl.rows - 1, (seed, cond, level)
                for v, n in ((x, sl.cols), (y, sl.rows)):  # (v + 0.5) / n: fraction of the field of view
                    assert MARGIN - 1e-9 <= (v + 0.5) / n <= 1 - MARGIN + 1e-9, (seed, cond, level, v, n)
                assert dist <= sl.gap / 2 + 1e-9, (seed, cond, level, dist)


@pytest.mark.parametrize("size", ["small", "full"])
def test_sizes_match_real_acquisitions(size):
    """Matrices, pixel spacing, slice counts and gaps vary per series within real-like ranges."""
    spec = SIZES[size]
    rng = np.random.default_rng(2)
    matrices, spacings, sag_counts = [], [], []
    for seed in range(20):
        anat = _anatomy(seed)
        for p in plan_series(anat, rng, spec, dict(sag_t1=1, sag_t2=2, axial=3), StudyQuirks()):
            sl = p.slices[0]
            assert sl.rows == sl.cols and sl.rows in spec.matrices
            matrices.append(sl.rows)
            spacings.append(sl.pixel)
            if p.role.startswith("sag"):
                sag_counts.append(len(p.slices))
                assert 3.0 <= sl.gap <= 4.8 and 2.2 <= sl.thickness <= sl.gap
    lo, hi = (384, 1024) if size == "full" else (96, 192)
    assert min(matrices) >= lo and max(matrices) <= hi and len(set(matrices)) >= 4
    assert np.mean(np.array(matrices) <= (640 if size == "full" else 160)) > 0.6  # mostly the common sizes
    assert max(spacings) / min(spacings) > 1.8  # pixel spacing varies
    bounds = (0.15, 1.0) if size == "full" else (0.75, 4.0)
    assert bounds[0] <= min(spacings) and max(spacings) <= bounds[1]
    assert len(set(sag_counts)) >= 3 and min(sag_counts) >= spec.sag_slices[0]


def test_small_size_stays_cheap():
    """The small size's pixels per study stay near those of a fixed 128 px matrix (it drives test speed)."""
    spec = SIZES["small"]
    mean_pixels = np.dot(np.square(spec.matrices), spec.matrix_weights)
    assert mean_pixels < 1.25 * 128**2


def test_label_positions_spread_over_the_image():
    """Over 30 planned studies, every condition and level's label points spread over the image on both axes,
    and the constant mean-position answer misses by centimetres."""
    coords, planes = planned_coordinates(30, "small", seed=1)
    table = spread_table(coords)
    assert len(table) == len(CONDITIONS) * len(LEVELS)
    assert (table.min() > 0.07).all(), table  # real data: about 0.15; the old phantom: 0.02
    assert (table.median() > 0.11).all(), table
    errors = guess_errors(coords, lambda i, x, y: planes[i].to_patient(x, y))
    assert np.median(errors) > 15.0
    for kind, part in coords.assign(error=errors).groupby(series_type(coords)):
        assert part.error.median() > 15.0, kind


def test_mean_position_guess_hand_computed():
    coords = pd.DataFrame({"condition": ["A", "A", "B"], "level": ["L1/L2"] * 3, "x": [10.0, 90.0, 5.0],
                           "y": [20.0, 20.0, 7.0], "rows": [100, 200, 50], "cols": [100, 100, 50]})
    guess = mean_position_guess(coords)  # A: mean x/cols = 0.5, mean y/rows = (0.2 + 0.1) / 2
    assert np.allclose(guess.x, [50.0, 50.0, 5.0]) and np.allclose(guess.y, [15.0, 30.0, 7.0])
    table = spread_table(coords)
    assert table.loc[("A", "L1/L2"), "x"] == pytest.approx(np.std([0.1, 0.9], ddof=1))
    errors = guess_errors(coords, lambda i, x, y: np.array([x, y, 0.0]) * 2.0)  # 2 mm pixels
    assert np.allclose(errors, [2 * np.hypot(40, 5), 2 * np.hypot(40, 10), 0.0])


# ---------------------------------------------------------------- orientation variants
def _standard_plans(seed: int, size: str = "small"):
    anat = _anatomy(seed)
    return anat, {p.role: p for p in plan_series(anat, np.random.default_rng(seed), SIZES[size],
                                                 dict(sag_t1=1, sag_t2=2, axial=3), StudyQuirks())}


def test_orient_stores_the_same_plane_mirrored_flipped_or_transposed():
    _, plans = _standard_plans(0)
    for role in ("sag_t2", "axial"):
        sl = plans[role].slices[1]
        grid = sl.points().reshape(sl.rows, sl.cols, 3)
        cases = {(True, False, False): grid[:, ::-1], (False, True, False): grid[::-1],
                 (True, True, False): grid[::-1, ::-1], (False, False, True): grid.transpose(1, 0, 2),
                 (True, False, True): grid.transpose(1, 0, 2)[:, ::-1]}
        for flags, expected in cases.items():
            other = orient(sl, *flags)
            assert np.allclose(other.points().reshape(other.rows, other.cols, 3), expected, atol=1e-9), flags
            assert np.allclose(other.centre, sl.centre)
        standard = plans[role].orientation()
        assert (standard["x_toward"], standard["y_toward"]) == \
            (("posterior", "inferior") if role == "sag_t2" else ("left", "posterior"))


@pytest.mark.parametrize("kind", ORIENTATION_KINDS)
def test_every_orientation_variant_keeps_labels_on_their_landmarks(kind):
    """With a variant forced on every series: recorded directions follow it, and each label maps back to its
    true landmark within half a pixel in the plane and half a gap across it."""
    quirks = StudyQuirks(**{kind: ("sag_t1", "sag_t2", "axial")})
    expected_x = {"sag_t1": "posterior", "sag_t2": "posterior", "axial": "left"}
    expected_y = {"sag_t1": "inferior", "sag_t2": "inferior", "axial": "posterior"}
    flip = {"posterior": "anterior", "inferior": "superior", "left": "right"}
    for seed in range(6):
        anat = _anatomy(seed, np.random.default_rng(seed).integers(0, 3, len(TARGET_COLUMNS)))
        plans = plan_series(anat, np.random.default_rng(seed), SIZES["small"], dict(sag_t1=1, sag_t2=2, axial=3),
                            quirks)
        for plan in plans:
            record = plan.orientation()
            assert record[kind] and sum(record[k] for k in ORIENTATION_KINDS) == 1
            x, y = expected_x[plan.role], expected_y[plan.role]
            if kind == "transposed":
                x, y = y, x
            x = flip[x] if kind == "flipped_rows" else x
            y = flip[y] if kind == "flipped_columns" else y
            assert (record["x_toward"], record["y_toward"]) == (x, y), (plan.role, record)
            sagittal = plan.role.startswith("sag")
            along = np.array([sl.centre for sl in plan.slices])[:, 0 if sagittal else 2]  # LPS: +left, +head
            # canonical order: sagittal right to left (along grows), axial head to foot (along shrinks)
            assert (along[-1] > along[0]) == (sagittal != (kind == "reversed_stack")), (plan.role, record)
            assert record["stack_order"] == ("right_to_left" if along[-1] > along[0] else "left_to_right") \
                if sagittal else ("foot_to_head" if along[-1] > along[0] else "head_to_foot")
        for cond in CONDITIONS:
            plan = next(p for p in plans if p.role == PRIMARY_ROLE[CONDITION_SERIES[cond]])
            for level in LEVELS:
                true = anat.landmark(cond, level)
                sl, x, y, dist = plan.nearest_slice(true)
                assert 0 <= x <= sl.cols - 1 and 0 <= y <= sl.rows - 1 and dist <= sl.gap / 2 + 1e-9
                diff = true - sl.to_patient(x, y)
                assert abs(diff @ sl.normal) == pytest.approx(dist)
                assert np.linalg.norm(diff - (diff @ sl.normal) * sl.normal) < 1e-6


# ---------------------------------------------------------------- quirks
def test_quirk_rates_are_checked_and_ensure_each_forces_every_kind():
    with pytest.raises(ValueError, match="second_axial"):
        QuirkRates(second_axial=1.5)
    splits = ["train"] * 8 + ["test"] * 2
    forced = draw_quirks(np.random.default_rng(0), splits, replace(TEST_QUIRKS, second_axial=1e-9, missing_series=1e-9))
    for kind in ("second_axial", "missing_series", "instance_offset", "shuffled_instances", "odd_slice_size",
                 "rescale"):
        assert any(q.any(kind) for q in forced[:8]), kind
    assert all(q.missing_series is None for q in forced[8:])  # test studies keep all series
    for q in forced:
        assert set(q.instance_offset) | set(q.rescale) | set(q.shuffled_instances) <= set(q.roles())
    zero = {f.name: 0.0 for f in fields(QuirkRates) if f.name != "ensure_each"}
    none = draw_quirks(np.random.default_rng(0), splits, QuirkRates(**zero, ensure_each=True))
    assert all(q == StudyQuirks() for q in none)


def test_test_quirks_put_every_orientation_variant_on_both_planes():
    """ensure_each forces each orientation kind onto a sagittal and an axial series of the training studies,
    and the standard orientation stays common."""
    splits = ["train"] * 8 + ["test"] * 2
    for rates in (TEST_QUIRKS, replace(TEST_QUIRKS, **{k: 1e-9 for k in ORIENTATION_KINDS})):
        quirks = draw_quirks(np.random.default_rng(0), splits, rates)
        for kind in ORIENTATION_KINDS:
            for plane in ("sagittal", "axial"):
                assert any(q.shows(kind, plane) for q in quirks[:8]), (kind, plane)
        for q in quirks:
            for kind in ORIENTATION_KINDS:
                assert set(getattr(q, kind)) <= set(q.roles())
    plain = sum(not any(r in getattr(q, k) for k in ORIENTATION_KINDS[1:]) for q in quirks for r in q.roles())
    assert plain > 0.5 * sum(len(q.roles()) for q in quirks)


# ---------------------------------------------------------------- learnability
def _box(img: np.ndarray, x: float, y: float, r: int) -> float:
    x, y = int(round(x)), int(round(y))
    return float(img[max(y - r, 0):y + r + 1, max(x - r, 0):x + r + 1].mean())  # clipped at the image border


def learnability_stats(n_studies: int = 24, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Per condition, the statistic's values for class 0, 1, 2 (see the test below)."""
    rng = np.random.default_rng(seed)
    stats = {"spinal_canal_stenosis": {0: [], 1: [], 2: []}, "left_neural_foraminal_narrowing": {0: [], 1: [], 2: []}}
    for i in range(n_studies):
        classes = ((np.arange(len(TARGET_COLUMNS)) + i) % 3)  # every class at every level
        anat = sample_anatomy(rng, classes)
        look = Appearance.sample(rng, anat.to_patient(0.0, 0.0, 0.0))
        plans = {p.role: p for p in plan_series(anat, rng, SIZES["small"], dict(sag_t1=1, sag_t2=2, axial=3),
                                                StudyQuirks())}
        for cond, role in (("spinal_canal_stenosis", "sag_t2"), ("left_neural_foraminal_narrowing", "sag_t1")):
            for level in LEVELS:
                sl, x, y, _ = plans[role].nearest_slice(anat.landmark(cond, level))
                img = render_slice(anat, look, sl.points(), (sl.rows, sl.cols), plans[role].contrast, 1000.0, rng)
                if cond == "spinal_canal_stenosis":
                    k = DISC_INDEX[level]
                    mid_s = (anat.disc_s[k] + anat.disc_s[k + 1]) / 2
                    xr, yr, _ = sl.project(anat.to_patient(0.0, anat.canal_u, mid_s))
                    value = _box(img, x, y, 2) / _box(img, xr, yr, 2)
                else:
                    value = _box(img, x, y, 1) / np.percentile(img, 99)
                stats[cond][int(classes[TARGET_COLUMNS.index(f"{cond}_{level}")])].append(value)
    return {cond: [np.array(by_class[c]) for c in range(3)] for cond, by_class in stats.items()}


def test_a_simple_image_statistic_separates_the_classes_with_overlap():
    """On the real slice plans of small studies: canal and foramen brightness at the landmark drop with severity.

    Spinal: mean T2 (or STIR) intensity around the canal point on its sagittal slice, relative to the
    canal at mid-vertebra. Foraminal: mean T1 intensity around the foramen point relative to the
    image's 99th percentile. Class means are ordered (the task is learnable) and neighbouring
    classes' ranges overlap (it is not trivial).
    """
    for cond, values in learnability_stats().items():
        means = [v.mean() for v in values]
        assert means[0] > means[1] > means[2], (cond, means)
        assert values[1].max() > values[0].min() and values[2].max() > values[1].min(), cond  # overlap
