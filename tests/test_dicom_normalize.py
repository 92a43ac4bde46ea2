"""Percentile clipping and scaling, checked against hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest

from rsna2024.dicom.normalize import NormalizeParams, intensity_range, normalize


def test_percentiles_clip_and_scale():
    vol = np.arange(101, dtype=np.float32).reshape(1, 1, 101)  # values 0..100: percentile p is p
    params = NormalizeParams(low_percentile=10, high_percentile=90, out_min=-1, out_max=1, sample_stride=1)
    assert intensity_range(vol, params) == (10.0, 90.0)
    out = normalize(vol, params)
    # 0..10 -> -1, 50 -> 0, 90..100 -> 1, linear between
    assert out[0, 0, [0, 10, 30, 50, 90, 100]].tolist() == pytest.approx([-1, -1, -0.5, 0, 1, 1])
    assert out.dtype == np.float32


def test_default_range_and_dtype():
    rng = np.random.default_rng(0)
    vol = rng.normal(1000, 200, (3, 40, 40))
    out = normalize(vol, dtype="float16")
    assert out.dtype == np.float16 and out.min() == 0 and out.max() == 1
    # 0.5 % of the (subsampled) pixels sit at each end after clipping, within sampling error
    assert 0.002 < float((out == 1).mean()) < 0.01


def test_constant_series_maps_to_out_min():
    assert np.all(normalize(np.full((2, 4, 4), 7.0)) == 0)


@pytest.mark.parametrize("kwargs", [dict(low_percentile=60, high_percentile=40), dict(sample_stride=0)])
def test_bad_parameters_are_rejected(kwargs):
    with pytest.raises(ValueError):
        NormalizeParams(**kwargs)
