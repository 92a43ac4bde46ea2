"""Heatmap targets and their decoding: one Gaussian map per point, peak found to sub-pixel precision.

Pixel convention (as DICOM, OpenCV and albumentations): ``(x, y)`` is a column/row position whose integer
values are pixel centres. Resizing an image of ``(rows, cols)`` to ``(height, width)`` maps
``x -> (x + 0.5) * width / cols - 0.5`` (the mapping of ``cv2.resize``); :func:`resize_points` applies it
both ways. A missing point is ``NaN``: its map is all zero and its mask entry False, so the loss ignores it.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

_LOG_FLOOR = 1e-6


def resize_points(points, from_shape: Sequence[int], to_shape: Sequence[int]) -> np.ndarray:
    """Points ``(..., 2)`` as ``(x, y)`` on an image of ``from_shape`` = (rows, cols) moved onto the same image
    resized to ``to_shape`` = (rows, cols). NaN stays NaN."""
    p = np.asarray(points, dtype=np.float64)
    scale = np.array([to_shape[1] / from_shape[1], to_shape[0] / from_shape[0]])
    return (p + 0.5) * scale - 0.5


def gaussian_heatmaps(points, shape: Sequence[int], sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Target maps ``(K, rows, cols)`` float32 with a unit-peak Gaussian of ``sigma`` px at each ``(x, y)`` of
    ``points`` ``(K, 2)``, and the mask ``(K,)`` of present points (finite and inside the image)."""
    if sigma <= 0:
        raise ValueError(f"heatmap sigma must be positive, got {sigma}")
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    rows, cols = int(shape[0]), int(shape[1])
    present = np.isfinite(p).all(axis=1)
    present &= (p[:, 0] >= -0.5) & (p[:, 0] <= cols - 0.5) & (p[:, 1] >= -0.5) & (p[:, 1] <= rows - 0.5)
    maps = np.zeros((len(p), rows, cols), dtype=np.float32)
    xs, ys = np.arange(cols, dtype=np.float64), np.arange(rows, dtype=np.float64)
    for k in np.flatnonzero(present):
        gx = np.exp(-((xs - p[k, 0]) ** 2) / (2 * sigma**2))
        gy = np.exp(-((ys - p[k, 1]) ** 2) / (2 * sigma**2))
        maps[k] = np.outer(gy, gx)
    return maps, present


def _subpixel_offset(left: torch.Tensor, centre: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Vertex of the parabola through the log of three neighbouring values (exact for a Gaussian), in
    [-0.5, 0.5]; 0 where the peak is flat or a neighbour is missing (NaN)."""
    lv, cv, rv = (torch.log(v.clamp_min(_LOG_FLOOR)) for v in (left, centre, right))
    denom = lv - 2 * cv + rv
    off = torch.where(denom < 0, 0.5 * (lv - rv) / denom, torch.zeros_like(denom))
    off = torch.where(torch.isfinite(off), off, torch.zeros_like(off))
    return off.clamp(-0.5, 0.5)


def decode_heatmaps(maps):
    """Peak of each map ``(..., rows, cols)``: points ``(..., 2)`` as sub-pixel ``(x, y)`` and confidences
    ``(...)`` (the peak value); torch tensors in, tensors out (on their device), else numpy arrays.

    The integer argmax is refined per axis by a parabola through the logarithm of the peak and its two
    neighbours (exact for a Gaussian; values below 1e-6 are floored), clipped to half a pixel.
    """
    as_numpy = not isinstance(maps, torch.Tensor)
    m = torch.from_numpy(np.asarray(maps, dtype=np.float64)) if as_numpy else maps.detach().float()
    lead, (rows, cols) = m.shape[:-2], m.shape[-2:]
    flat = m.reshape(-1, rows, cols)
    idx = flat.flatten(1).argmax(dim=1)
    iy, ix = idx // cols, idx % cols
    n = torch.arange(len(flat), device=flat.device)
    peak = flat[n, iy, ix]

    def at(y, x):
        inside = (y >= 0) & (y < rows) & (x >= 0) & (x < cols)
        values = flat[n, y.clamp(0, rows - 1), x.clamp(0, cols - 1)]
        return torch.where(inside, values, torch.full_like(values, float("nan")))

    dx = _subpixel_offset(at(iy, ix - 1), peak, at(iy, ix + 1))
    dy = _subpixel_offset(at(iy - 1, ix), peak, at(iy + 1, ix))
    points = torch.stack([ix + dx, iy + dy], dim=-1).reshape(*lead, 2)
    peak = peak.reshape(lead)
    return (points.numpy(), peak.numpy()) if as_numpy else (points, peak)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, peak_weight: float = 0.0) -> torch.Tensor:
    """Mean squared error over the maps whose ``mask`` (B, K) is True; 0 (with a gradient) if none is.

    ``peak_weight`` > 0 weighs each pixel by ``1 + peak_weight * target``, so the few pixels near a point count
    more than the wide empty background (0: the plain MSE of the recipe). It helps small models trained for few
    epochs, which otherwise settle on predicting empty maps.
    """
    err = (pred.float() - target.float()) ** 2
    if peak_weight:
        err = err * (1.0 + peak_weight * target.float())
    per_map = err.mean(dim=(-2, -1))
    weight = mask.to(per_map.dtype)
    return (per_map * weight).sum() / weight.sum().clamp_min(1.0)


#: keypoint losses: ``mse`` (the recipe's: the model outputs heatmaps) and ``spatial_ce`` (the model outputs
#: logits over the pixels of each map, trained by cross-entropy against the normalised Gaussian target)
LOSSES = ("mse", "spatial_ce")


def spatial_cross_entropy(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy between the softmax over the pixels of each map of ``logits`` (B, K, H, W) and the
    ``target`` Gaussian normalised to sum 1, averaged over the maps whose ``mask`` (B, K) is True.

    Unlike the MSE on heatmaps it has no empty-map plateau: every step moves probability towards the point, so
    small models trained from scratch on a few dozen images localise within a few epochs.
    """
    logp = torch.log_softmax(logits.float().flatten(-2), dim=-1)
    t = target.float().flatten(-2)
    t = t / t.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    per_map = -(t * logp).sum(dim=-1)
    weight = mask.to(per_map.dtype)
    return (per_map * weight).sum() / weight.sum().clamp_min(1.0)


def to_heatmaps(outputs, loss: str, sigma: float):
    """The heatmaps of a model's ``outputs`` (..., H, W) trained with ``loss``: as they are for ``mse``; for
    ``spatial_ce`` the softmax over each map's pixels times 2 pi sigma^2, so that a predicted Gaussian of the
    target's ``sigma`` peaks near 1 as an MSE heatmap does (the peak value stays comparable as a confidence).
    Torch tensors in, tensors out, else numpy arrays."""
    if loss == "mse":
        return outputs
    if loss != "spatial_ce":
        raise ValueError(f"unknown keypoint loss {loss!r}; expected one of {list(LOSSES)}")
    as_numpy = not isinstance(outputs, torch.Tensor)
    t = torch.from_numpy(np.asarray(outputs, dtype=np.float32)) if as_numpy else outputs.float()
    maps = torch.softmax(t.flatten(-2), dim=-1).reshape(t.shape) * (2 * np.pi * sigma ** 2)
    return maps.numpy() if as_numpy else maps
