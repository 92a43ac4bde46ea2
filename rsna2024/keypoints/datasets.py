"""The torch dataset of keypoint samples: canonical slices from the cache as channels, resized to the input
grid, augmented at train time, with Gaussian heatmap targets and the mask of present points."""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from rsna2024.keypoints.augment import KeypointAugment
from rsna2024.keypoints.heatmaps import gaussian_heatmaps, resize_points
from rsna2024.keypoints.samples import Sample
from rsna2024.keypoints.studies import StudySeries


def image_size(size: int | Sequence[int]) -> tuple[int, int]:
    """(rows, cols) of an ``image_size`` config value: one int (square) or [rows, cols]."""
    if isinstance(size, int):
        return size, size
    rows, cols = (int(v) for v in size)
    return rows, cols


def resize_channels(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """(C, h, w) float -> (rows, cols, C) float32, bilinear (cv2's pixel-centre mapping, as :func:`resize_points`)."""
    hwc = np.ascontiguousarray(np.moveaxis(np.asarray(image, dtype=np.float32), 0, -1))
    out = cv2.resize(hwc, (int(shape[1]), int(shape[0])), interpolation=cv2.INTER_LINEAR)
    return out.reshape(int(shape[0]), int(shape[1]), -1)


def sample_image(studies: StudySeries, sample: Sample) -> np.ndarray:
    """(C, h, w) float32 canonical slices of a sample, read from the cache."""
    series = studies.load(sample.study_id, sample.series_id)
    return np.asarray(series.pixels[list(sample.slices)], dtype=np.float32)


class KeypointDataset(Dataset):
    """Items ``{"image": (C, H, W), "target": (K, H, W), "mask": (K,), "index": i}`` of ``samples``.

    ``augment`` (train only) draws its seed from torch's generator, so the trainer's saved RNG states
    make a resumed epoch augment as the uninterrupted one would.
    """

    def __init__(self, samples: Sequence[Sample], studies: StudySeries, size: int | Sequence[int], sigma: float,
                 augment: KeypointAugment | None = None):
        self.samples = list(samples)
        self.studies = studies
        self.size = image_size(size)
        self.sigma = float(sigma)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        sample = self.samples[i]
        raw = sample_image(self.studies, sample)
        image = resize_channels(raw, self.size)
        points = resize_points(sample.points, raw.shape[1:], self.size)
        if self.augment is not None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
            image, points = self.augment(image, points, seed)
        target, mask = gaussian_heatmaps(points, self.size, self.sigma)
        return {"image": torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, -1, 0), dtype=np.float32)),
                "target": torch.from_numpy(target), "mask": torch.from_numpy(mask), "index": i}
