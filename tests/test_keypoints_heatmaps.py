"""Heatmap targets and decoding: encode then decode returns the point, also through a resize; masked loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rsna2024.keypoints.heatmaps import (
    decode_heatmaps,
    gaussian_heatmaps,
    masked_mse,
    resize_points,
    spatial_cross_entropy,
    to_heatmaps,
)


@pytest.mark.parametrize("shape,sigma", [((64, 64), 2.0), ((48, 80), 3.0), ((96, 40), 1.5)])
def test_encode_then_decode_returns_the_point(shape, sigma):
    rng = np.random.default_rng(0)
    rows, cols = shape
    points = np.column_stack([rng.uniform(1, cols - 2, 20), rng.uniform(1, rows - 2, 20)])
    maps, mask = gaussian_heatmaps(points, shape, sigma)
    assert maps.shape == (20, rows, cols) and mask.all()
    decoded, conf = decode_heatmaps(maps)
    assert np.abs(decoded - points).max() < 0.5
    assert np.abs(decoded - points).max() < 0.05  # the log-parabola refinement is exact for a Gaussian
    assert np.all(conf > 0.6) and np.all(conf <= 1.0)


@pytest.mark.parametrize("image,grid", [((512, 384), (128, 128)), ((100, 140), (64, 96)), ((37, 53), (96, 64))])
def test_decode_through_a_resize_returns_the_original_pixel(image, grid):
    rng = np.random.default_rng(1)
    rows, cols = image
    points = np.column_stack([rng.uniform(2, cols - 3, 10), rng.uniform(2, rows - 3, 10)])
    on_grid = resize_points(points, image, grid)
    maps, _ = gaussian_heatmaps(on_grid, grid, sigma=2.0)
    back = resize_points(decode_heatmaps(maps)[0], grid, image)
    # within half a pixel of the original image, whatever the scale
    assert np.abs(back - points).max() < 0.5
    np.testing.assert_allclose(resize_points(on_grid, grid, image), points, atol=1e-9)


def test_resize_points_follows_pixel_centres():
    # pixel centres 0..3 of a 4-wide image cover [-0.5, 3.5]; on an 8-wide image that is [-0.5, 7.5]
    np.testing.assert_allclose(resize_points([[-0.5, 1.5], [3.5, -0.5]], (2, 4), (4, 8)), [[-0.5, 3.5], [7.5, -0.5]])


def test_decode_of_a_model_like_map_finds_the_peak():
    maps, _ = gaussian_heatmaps([[20.3, 11.7]], (32, 40), 2.5)
    noisy = 0.8 * maps - 0.05  # scaled and shifted below zero away from the peak
    point, conf = decode_heatmaps(torch.from_numpy(noisy))  # tensors in, tensors out
    assert isinstance(point, torch.Tensor) and point.shape == (1, 2)
    assert np.abs(point[0].numpy() - [20.3, 11.7]).max() < 0.5
    assert conf[0].item() == pytest.approx(noisy.max())


def test_missing_and_outside_points_give_empty_masked_maps():
    maps, mask = gaussian_heatmaps([[np.nan, np.nan], [10.0, 5.0], [70.0, 5.0]], (16, 64), 2.0)
    assert mask.tolist() == [False, True, False]
    assert maps[0].max() == 0 and maps[2].max() == 0 and maps[1].max() > 0.9
    with pytest.raises(ValueError, match="sigma"):
        gaussian_heatmaps([[1.0, 1.0]], (4, 4), 0.0)


def test_masked_mse_ignores_masked_maps():
    target = torch.zeros(1, 2, 4, 4)
    pred = torch.zeros(1, 2, 4, 4, requires_grad=True)
    with torch.no_grad():
        pred[0, 1] = 3.0  # wrong, but masked out
    loss = masked_mse(pred, target, torch.tensor([[True, False]]))
    assert loss.item() == 0.0
    loss = masked_mse(pred, target, torch.tensor([[True, True]]))
    assert loss.item() == pytest.approx(9.0 / 2)
    loss.backward()
    assert pred.grad is not None


def test_spatial_cross_entropy_is_least_at_the_target_and_ignores_masked_maps():
    target = torch.from_numpy(gaussian_heatmaps([[5.2, 3.9], [np.nan, np.nan]], (8, 12), 1.5)[0])[None]
    mask = torch.tensor([[True, False]])
    exact = torch.log(target.clamp_min(1e-30))  # logits whose softmax is the normalised target
    flat = torch.zeros_like(target, requires_grad=True)
    best = spatial_cross_entropy(exact, target, mask)
    worse = spatial_cross_entropy(flat, target, mask)
    assert best < worse
    assert worse.item() == pytest.approx(np.log(8 * 12))  # uniform over 96 pixels
    shifted = torch.roll(exact, 2, dims=-1)
    assert spatial_cross_entropy(shifted, target, mask) > best
    wrong_masked = exact.clone()
    wrong_masked[0, 1] = torch.randn(8, 12)
    assert spatial_cross_entropy(wrong_masked, target, mask) == pytest.approx(best.item())
    worse.backward()
    assert flat.grad[0, 0].abs().sum() > 0 and flat.grad[0, 1].abs().sum() == 0
    assert spatial_cross_entropy(flat, target, torch.tensor([[False, False]])).item() == 0.0


@pytest.mark.parametrize("as_tensor", [False, True])
def test_spatial_logits_decode_to_the_point_with_a_heatmap_scale_confidence(as_tensor):
    points = np.array([[20.3, 11.7], [3.6, 25.1]])
    maps, _ = gaussian_heatmaps(points, (32, 40), 2.5)
    logits = np.log(np.maximum(maps, 1e-30)) + 7.0  # softmax ignores a constant
    logits = torch.from_numpy(logits) if as_tensor else logits
    heat = to_heatmaps(logits, "spatial_ce", 2.5)
    assert isinstance(heat, torch.Tensor) == as_tensor
    decoded, conf = decode_heatmaps(heat)
    assert np.abs(np.asarray(decoded) - points).max() < 0.05
    assert np.all(np.abs(np.asarray(conf) - 1.0) < 0.1)  # 2 pi sigma^2 x the peak probability of that Gaussian
    assert to_heatmaps(maps, "mse", 2.5) is maps
    with pytest.raises(ValueError, match="spatial_ce"):
        to_heatmaps(maps, "l1", 2.5)
