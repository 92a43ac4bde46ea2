"""Train-time augmentation: points move with the image; the flip swaps left and right targets; reproducible."""
from __future__ import annotations

import numpy as np
import pytest

from rsna2024.keypoints.augment import AugmentConfig, KeypointAugment, hflip


def _dots(shape, points):
    """An image with a small bright square at point k in channel k only."""
    img = np.zeros((*shape, len(points)), np.float32)
    for k, (x, y) in enumerate(points):
        img[int(round(y)) - 1:int(round(y)) + 2, int(round(x)) - 1:int(round(x)) + 2, k] = 1.0
    return img


def _centroid(img, channel):
    weight = img[..., channel]
    ys, xs = np.mgrid[:img.shape[0], :img.shape[1]]
    return np.array([(xs * weight).sum(), (ys * weight).sum()]) / weight.sum()


def test_points_move_with_the_image():
    points = np.array([[20.0, 30.0], [45.0, 12.0], [np.nan, np.nan]])
    img = _dots((64, 64), points[:2])
    aug = KeypointAugment(AugmentConfig(p_affine=1.0, p_blur=0.0, p_channel_shuffle=0.0, rotate=15, shear=10))
    for seed in range(5):
        out, moved = aug(img, points, seed)
        assert out.shape == img.shape and np.isnan(moved[2]).all()
        for k in range(2):
            assert np.abs(_centroid(out, k) - moved[k]).max() < 0.5, (seed, k)


def test_same_seed_same_draw():
    img = np.random.default_rng(0).random((32, 32, 5), dtype=np.float32)
    aug = KeypointAugment(AugmentConfig(p_affine=1.0, p_blur=1.0, p_channel_shuffle=1.0, hflip=0.5), [(0, 1)])
    a = aug(img, np.array([[3.0, 4.0], [10.0, 11.0]]), 7)
    b = aug(img, np.array([[3.0, 4.0], [10.0, 11.0]]), 7)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_hflip_mirrors_and_swaps_pairs():
    img = _dots((20, 30), [[5.0, 10.0], [22.0, 4.0]])
    out, p = hflip(img, np.array([[5.0, 10.0], [22.0, 4.0]]), [(0, 1)])
    np.testing.assert_array_equal(out, img[:, ::-1])
    # row 0 now holds the other target, mirrored: x -> 29 - x
    np.testing.assert_allclose(p, [[7.0, 4.0], [24.0, 10.0]])
    assert np.abs(_centroid(out, 1) - p[0]).max() < 1e-9  # the dot of old target 1 is target 0 now


def test_probabilities_are_checked():
    with pytest.raises(ValueError, match="p_blur"):
        AugmentConfig(p_blur=1.5)
