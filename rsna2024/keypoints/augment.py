"""Train-time augmentation of keypoint samples (never cached): the points move with the image.

albumentations does the geometry (rotation, shear, scale, shift), sharpen or motion blur, and the shuffle of
channels (the slices). A horizontal flip is done here, because it must also swap the maps of paired targets
(an axial image flipped left-right shows the patient's left recess where the right one was).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np


@dataclass
class AugmentConfig:
    """Probabilities and ranges of the train-time augmentation (recipe: rotation and shear +-15 deg,
    channel shuffle p 0.5). ``hflip`` is only honoured by tasks whose targets come in left/right pairs."""

    rotate: float = 15.0  # degrees, +-
    shear: float = 15.0  # degrees, +-
    scale: float = 0.1  # relative, +-
    translate: float = 0.05  # fraction of the image size, +-
    p_affine: float = 0.8
    p_blur: float = 0.3  # one of sharpen or motion blur
    p_channel_shuffle: float = 0.5
    hflip: float = 0.0  # probability of a horizontal flip (swapping paired targets)
    enabled: bool = True

    def __post_init__(self) -> None:
        for name in ("p_affine", "p_blur", "p_channel_shuffle", "hflip"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"augment.{name} is a probability in [0, 1], got {value}")


def build_transform(cfg: AugmentConfig) -> A.Compose:
    """The albumentations pipeline (keypoints in ``xy`` pixel format, kept when they leave the image)."""
    return A.Compose([
        A.Affine(rotate=(-cfg.rotate, cfg.rotate), shear={"x": (-cfg.shear, cfg.shear), "y": (-cfg.shear, cfg.shear)},
                 scale=(1 - cfg.scale, 1 + cfg.scale),
                 translate_percent={"x": (-cfg.translate, cfg.translate), "y": (-cfg.translate, cfg.translate)},
                 border_mode=cv2.BORDER_CONSTANT, fill=0, p=cfg.p_affine),
        A.OneOf([A.Sharpen(alpha=(0.1, 0.4), lightness=(0.9, 1.1), p=1.0),
                 A.MotionBlur(blur_limit=(3, 7), p=1.0)], p=cfg.p_blur),
        A.ChannelShuffle(p=cfg.p_channel_shuffle),
    ], keypoint_params=A.KeypointParams(format="xy", remove_invisible=False))


def hflip(image: np.ndarray, points: np.ndarray, pairs: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Mirror ``image`` (H, W, C) left-right; ``x -> W - 1 - x``; the rows of each ``(i, j)`` in ``pairs`` of
    ``points`` (K, 2) are swapped (left targets become right ones)."""
    out = np.ascontiguousarray(image[:, ::-1])
    p = np.array(points, dtype=np.float64, copy=True)
    p[:, 0] = image.shape[1] - 1 - p[:, 0]
    for i, j in pairs:
        p[[i, j]] = p[[j, i]]
    return out, p


class KeypointAugment:
    """Callable ``(image (H, W, C) float32, points (K, 2) with NaN for missing, seed) -> (image, points)``.

    The seed makes every draw reproducible (the dataset takes it from torch's generator, whose state the
    trainer checkpoints, so a resumed run augments exactly as an uninterrupted one).
    """

    def __init__(self, cfg: AugmentConfig, flip_pairs: Sequence[tuple[int, int]] = ()):
        self.cfg = cfg
        self.flip_pairs = tuple(flip_pairs)
        self.transform = build_transform(cfg)

    def __call__(self, image: np.ndarray, points: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        points = np.asarray(points, dtype=np.float64)
        if not self.cfg.enabled:
            return image, points
        rng = np.random.default_rng(seed)
        if self.flip_pairs and rng.random() < self.cfg.hflip:
            image, points = hflip(image, points, self.flip_pairs)
        present = np.isfinite(points).all(axis=1)
        self.transform.set_random_seed(int(rng.integers(2**31)))
        out = self.transform(image=np.ascontiguousarray(image, dtype=np.float32),
                             keypoints=points[present].astype(np.float32))
        moved = np.full_like(points, np.nan)
        moved[present] = np.asarray(out["keypoints"], dtype=np.float64).reshape(-1, 2)[:, :2]
        return out["image"], moved
