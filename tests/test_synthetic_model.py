"""The phantom's model: anatomy geometry, severity as anatomy, labels, slice plans, quirks, learnability."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from kaggle_folder import REALDATA as REAL

from rsna2024.constants import CONDITION_SERIES, CONDITIONS, LABELS, LEVELS, REAL_CLASS_FREQUENCIES, TARGET_COLUMNS
from rsna2024.synthetic.anatomy import DISC_INDEX, NARROWING_RANGES, rotation_matrix, sample_anatomy
from rsna2024.synthetic.generate import PRIMARY_ROLE
from rsna2024.synthetic.labels import MISSING, class_frequencies, labels_frame, mask_missing, sample_classes
from rsna2024.synthetic.quirks import TEST_QUIRKS, QuirkRates, StudyQuirks, draw_quirks
from rsna2024.synthetic.render import CSF, FAT, NERVE, Appearance, render_slice, tissue_map
from rsna2024.synthetic.series import SIZES, SlicePlan, plan_series

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
                assert dist <= sl.gap / 2 + 1e-9, (seed, cond, level, dist)


def test_full_size_matches_real_acquisitions():
    anat = _anatomy(1)
    rng = np.random.default_rng(2)
    for _ in range(10):
        plans = plan_series(anat, rng, SIZES["full"], dict(sag_t1=1, sag_t2=2, axial=3), StudyQuirks())
        for p in plans:
            sl = p.slices[0]
            assert 384 <= sl.rows <= 512
            if p.role.startswith("sag"):
                assert 15 <= len(p.slices) <= 20 and 0.5 <= sl.pixel <= 0.9 and 3.0 <= sl.gap <= 4.5


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
    none = draw_quirks(np.random.default_rng(0), splits, QuirkRates(0, 0, 0, 0, 0, 0, ensure_each=True))
    assert all(q == StudyQuirks() for q in none)


# ---------------------------------------------------------------- learnability
def _box(img: np.ndarray, x: float, y: float, r: int) -> float:
    x, y = int(round(x)), int(round(y))
    return float(img[y - r:y + r + 1, x - r:x + r + 1].mean())


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
