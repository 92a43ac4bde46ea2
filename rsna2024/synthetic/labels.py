"""Severity labels of phantom studies, drawn from the real class frequencies per condition and level.

A study-level latent "degeneration" factor (a Gaussian copula) correlates the 25 targets of a
study as in real spines, while each target keeps exactly its real marginal frequencies. A few
studies get some labels left missing (real data: 185 of 1,975 studies, 1.2% of labels).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from rsna2024.constants import LABELS, REAL_CLASS_FREQUENCIES, TARGET_COLUMNS

MISSING = -1


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))


def sample_classes(rng: np.random.Generator, n_studies: int, correlation: float = 0.35) -> np.ndarray:
    """True class index (0 Normal/Mild, 1 Moderate, 2 Severe), shape (n_studies, 25) in TARGET_COLUMNS order."""
    if not 0.0 <= correlation < 1.0:
        raise ValueError(f"correlation must be in [0, 1), got {correlation}")
    latent = math.sqrt(correlation) * rng.standard_normal((n_studies, 1)) \
        + math.sqrt(1 - correlation) * rng.standard_normal((n_studies, len(TARGET_COLUMNS)))
    u = _normal_cdf(latent)  # uniform marginals, correlated within a study
    cum = np.array([np.cumsum(REAL_CLASS_FREQUENCIES[t])[:2] for t in TARGET_COLUMNS])  # (25, 2)
    return (u[:, :, None] > cum[None, :, :]).sum(axis=2)


def mask_missing(rng: np.random.Generator, classes: np.ndarray, study_rate: float = 0.09,
                 label_rate: float = 0.13) -> np.ndarray:
    """Observed labels: ``classes`` with some entries set to MISSING in about ``study_rate`` of studies."""
    observed = classes.copy()
    hit = (rng.random(classes.shape[0]) < study_rate)[:, None] & (rng.random(classes.shape) < label_rate)
    observed[hit] = MISSING
    return observed


def labels_frame(study_ids, observed: np.ndarray) -> pd.DataFrame:
    """A ``train.csv`` table: study_id and the 25 target columns as label strings (NaN when missing)."""
    names = np.array(LABELS + (None,), dtype=object)
    df = pd.DataFrame(names[np.where(observed == MISSING, len(LABELS), observed)], columns=list(TARGET_COLUMNS))
    df.insert(0, "study_id", np.asarray(study_ids, dtype=np.int64))
    return df


def class_frequencies(observed: np.ndarray) -> dict[str, tuple[float, float, float]]:
    """Per-target class frequencies among present labels (same layout as REAL_CLASS_FREQUENCIES)."""
    out = {}
    for j, target in enumerate(TARGET_COLUMNS):
        col = observed[:, j]
        col = col[col != MISSING]
        counts = np.bincount(col, minlength=len(LABELS)) / max(len(col), 1)
        out[target] = tuple(float(c) for c in counts)
    return out
