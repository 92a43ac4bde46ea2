"""Keypoint samples on the phantom: the right slices and targets per series type; left and right T1 samples
never confused; the dataset's axial flip swaps left and right targets."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from rsna2024.constants import LEVELS
from rsna2024.data.contract import load_coordinates, load_series_descriptions
from rsna2024.keypoints.augment import AugmentConfig, KeypointAugment
from rsna2024.keypoints.datasets import KeypointDataset
from rsna2024.keypoints.heatmaps import decode_heatmaps, resize_points
from rsna2024.keypoints.samples import AXIAL_FLIP_PAIRS, FORAMINAL, SUBARTICULAR, study_samples
from rsna2024.keypoints.studies import StudySeries


@pytest.fixture(scope="module")
def setup(phantom_dir, phantom_cache):
    desc = load_series_descriptions(phantom_dir, "train")
    labels = load_coordinates(phantom_dir, desc)
    truth = pd.read_csv(phantom_dir / "phantom" / "landmarks.csv").set_index(["study_id", "structure", "level"])
    return StudySeries(phantom_cache, desc, "train"), labels, truth


def _landmark(truth, study, structure, level):
    return truth.loc[(study, structure, level), ["x_mm", "y_mm", "z_mm"]].to_numpy(float)


def _samples(studies, labels, task, **kw):
    out, reasons = [], []
    for sid in studies.study_ids:
        samples, why = study_samples(task, studies, sid, labels[labels["study_id"] == sid], **kw)
        out.extend(samples)
        if why:
            reasons.append((sid, why))
    return out, reasons


def test_left_and_right_t1_samples_are_never_confused(setup):
    studies, labels, truth = setup
    samples, _ = _samples(studies, labels, "sagt1", n_slices=3, offset_mm=16.8)
    assert len(samples) >= 10
    for s in samples:
        side = s.kind.split(":")[1]
        other = "right" if side == "left" else "left"
        assert all(c == FORAMINAL[side] for c, _ in s.targets)
        series = studies.load(s.study_id, s.series_id)
        for k, (_, level) in enumerate(s.targets):
            own = _landmark(truth, s.study_id, FORAMINAL[side], level)
            opposite = _landmark(truth, s.study_id, FORAMINAL[other], level)
            _, _, z = series.plane_coordinates(own)
            _, _, z_opp = series.plane_coordinates(opposite)
            # the centre slice lies by its own side's foramen (foramina sit about 15-19 mm off the midline, more
            # with the phantom's per-study scale and tilt; the slice at 16.8 mm) and far from the other side's
            assert abs(z[s.centre]) < 12.0, (s.kind, level, z[s.centre])
            assert abs(z_opp[s.centre]) > 20.0, (s.kind, level, z_opp[s.centre])
            if np.isfinite(s.points[k]).all():  # the target is its own side's landmark, seen on the centre slice
                mm = series.pixel_to_patient(s.centre, *s.points[k])
                assert np.linalg.norm(mm - own) < 12.0
                assert np.linalg.norm(mm - opposite) > 20.0
        # patient left is +x (LPS): the left sample's slice is left of the right one's
        x_centre = series.centers[s.centre][0]
        assert (x_centre > series.centers[series.shape[0] // 2][0]) == (side == "left")


def test_sagt2_and_axial_samples_hold_their_landmarks(setup):
    studies, labels, truth = setup
    sag, reasons = _samples(studies, labels, "sagt2", n_slices=5)
    assert {why for _, why in reasons} == {"no Sagittal T2/STIR series"} or not reasons
    for s in sag:
        assert len(s.slices) == 5 and s.slices[2] == s.centre
        series = studies.load(s.study_id, s.series_id)
        for k, (cond, level) in enumerate(s.targets):
            if np.isfinite(s.points[k]).all():
                _, _, z = series.plane_coordinates(_landmark(truth, s.study_id, cond, level))
                assert abs(z[s.centre]) < 6.0  # the mid-sagittal slice passes by the canal
    axial, _ = _samples(studies, labels, "axial", n_slices=3)
    assert {s.kind for s in axial} == {f"axial:{lv}" for lv in LEVELS}
    for s in axial:
        assert s.targets == tuple((c, s.kind[6:]) for c in SUBARTICULAR)
        series = studies.load(s.study_id, s.series_id)
        left, right = s.points
        if np.isfinite(left).all() and np.isfinite(right).all():
            assert left[0] > right[0]  # canonical axial: patient right on the image left
        assert s.distance_mm <= 5.0
        for cond, level in s.targets:
            _, _, z = series.plane_coordinates(_landmark(truth, s.study_id, cond, level))
            assert abs(z[s.centre]) < 5.0


def test_axial_flip_swaps_left_and_right_targets(setup):
    studies, labels, _ = setup
    axial, _ = _samples(studies, labels, "axial", n_slices=3)
    sample = next(s for s in axial if np.isfinite(s.points).all())
    plain = KeypointDataset([sample], studies, (64, 48), sigma=1.5)
    flip = AugmentConfig(p_affine=0.0, p_blur=0.0, p_channel_shuffle=0.0, hflip=1.0)
    flipped = KeypointDataset([sample], studies, (64, 48), sigma=1.5, augment=KeypointAugment(flip, AXIAL_FLIP_PAIRS))
    a, b = plain[0], flipped[0]
    torch.testing.assert_close(b["image"], a["image"].flip(-1))
    pa, pb = decode_heatmaps(a["target"].numpy())[0], decode_heatmaps(b["target"].numpy())[0]
    # map 0 (left) of the flipped item is the mirrored right point, and vice versa
    np.testing.assert_allclose(pb[0], [48 - 1 - pa[1, 0], pa[1, 1]], atol=1e-3)
    np.testing.assert_allclose(pb[1], [48 - 1 - pa[0, 0], pa[0, 1]], atol=1e-3)
    # and the flipped left target sits on the (patient) left half of the image again: x > right's x
    assert pb[0, 0] > pb[1, 0]


def test_dataset_targets_follow_the_resize(setup):
    studies, labels, _ = setup
    sag, _ = _samples(studies, labels, "sagt2", n_slices=5)
    s = sag[0]
    item = KeypointDataset([s], studies, (96, 64), sigma=2.0)[0]
    assert item["image"].shape == (5, 96, 64) and item["target"].shape == (5, 96, 64)
    shape = studies.load(s.study_id, s.series_id).pixels.shape[1:]
    decoded = resize_points(decode_heatmaps(item["target"].numpy())[0], (96, 64), shape)
    ok = item["mask"].numpy()
    assert ok.sum() == np.isfinite(s.points).all(axis=1).sum()
    assert np.abs(decoded[ok] - s.points[ok]).max() < 0.5
