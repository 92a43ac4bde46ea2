"""Per-series intensity normalisation: percentile clipping, then linear scaling to a fixed range."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class NormalizeParams:
    """Clip each series to its [``low_percentile``, ``high_percentile``] intensities and scale that
    range linearly onto [``out_min``, ``out_max``]. Percentiles are taken over every
    ``sample_stride``-th pixel in each in-plane direction (1 = all pixels)."""

    low_percentile: float = 0.5
    high_percentile: float = 99.5
    out_min: float = 0.0
    out_max: float = 1.0
    sample_stride: int = 2

    def __post_init__(self) -> None:
        if not 0.0 <= self.low_percentile < self.high_percentile <= 100.0:
            raise ValueError(f"need 0 <= low_percentile < high_percentile <= 100, got "
                             f"{self.low_percentile}, {self.high_percentile}")
        if self.sample_stride < 1:
            raise ValueError(f"sample_stride must be >= 1, got {self.sample_stride}")

    def to_dict(self) -> dict:
        return asdict(self)


def intensity_range(pixels: np.ndarray, params: NormalizeParams = NormalizeParams()) -> tuple[float, float]:
    """The (low, high) clipping intensities of a volume (slices x rows x columns) or a slice."""
    step = params.sample_stride
    sample = np.asarray(pixels)[..., ::step, ::step]
    low, high = np.percentile(sample, [params.low_percentile, params.high_percentile])
    return float(low), float(high)


def normalize(pixels: np.ndarray, params: NormalizeParams = NormalizeParams(),
              dtype: np.dtype | str = np.float32, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """``pixels`` clipped to the series' percentile range and scaled to [out_min, out_max].

    ``value_range`` = (low, high) skips computing :func:`intensity_range` again. A constant series
    (low == high) maps to ``out_min``. Returns a new array of ``dtype``.
    """
    low, high = intensity_range(pixels, params) if value_range is None else value_range
    scale = (params.out_max - params.out_min) / (high - low) if high > low else 0.0
    out = np.clip(np.asarray(pixels, dtype=np.float32), low, high)
    out -= low
    out *= scale
    out += params.out_min
    return out.astype(dtype, copy=False)
