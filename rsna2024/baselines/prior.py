"""The image-free floor: per condition and level, the training folds' class frequencies.

The weight-aware prior multiplies the frequencies by the metric's class weights (1, 2, 4) and
renormalises, which is the constant prediction that minimises the weighted log loss; the plain
frequencies are kept as an option for comparison.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rsna2024.constants import CLASS_WEIGHTS, CONDITIONS, LEVELS, PRED_COLUMNS
from rsna2024.data.contract import labels_long, load_labels_wide
from rsna2024.data.folds import FOLDS_FILE, compute_folds, load_folds
from rsna2024.metric import score, solution_from_long
from rsna2024.utils.logging import get_logger

log = get_logger(__name__)
#: A run folder's copy of the prior of its training labels (``condition, level`` + the three columns), written by
#: each finished fold of a stage-2 or baseline task: what ``rsna2024 predict`` falls back to without train.csv.
PRIOR_FILE = "prior.csv"
# Added to each class count (Jeffreys' 1/2); moves the real-data total by less than 0.001.
PSEUDO_COUNT = 0.5


def fit_prior(long: pd.DataFrame, weighted: bool = True, pseudo_count: float = PSEUDO_COUNT) -> pd.DataFrame:
    """Per target (``condition, level``) the predicted ``normal_mild, moderate, severe`` from labelled rows.

    ``pseudo_count`` is added to every class count, so a class the training rows never show keeps a
    small probability (with 0 it would be predicted 0 and cost -log(eps) = 34.5 per such row in a
    small dataset). A target without any labelled row gets the pseudo counts alone.
    """
    known = long[long["label_index"] >= 0]
    targets = pd.MultiIndex.from_product([CONDITIONS, LEVELS], names=["condition", "level"])
    counts = (pd.crosstab([known["condition"], known["level"]], known["label_index"])
              .reindex(index=targets, columns=range(3), fill_value=0).astype(float)) + pseudo_count
    if weighted:
        counts = counts * np.asarray(CLASS_WEIGHTS)
    probs = counts.div(counts.sum(axis=1), axis=0)
    probs.columns = list(PRED_COLUMNS)
    return probs.reset_index()


def save_prior(prior: pd.DataFrame, path: str | Path) -> Path:
    """Write a prior table (``fit_prior``'s columns) to ``path`` atomically, only when its content changes."""
    from rsna2024.utils.io import atomic_write_text

    path = Path(path)
    text = prior[["condition", "level", *PRED_COLUMNS]].to_csv(index=False)
    if not (path.is_file() and path.read_text() == text):
        atomic_write_text(path, text)
    return path


def load_prior(path: str | Path) -> pd.DataFrame:
    """A prior table written by :func:`save_prior`, checked: every (condition, level) once, probabilities that
    are finite, not negative and not all 0 (rows renormalised); DataError naming the file otherwise."""
    from rsna2024.errors import DataError

    path = Path(path)
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable prior file ({exc})") from None
    missing = [c for c in ("condition", "level", *PRED_COLUMNS) if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}")
    targets = pd.MultiIndex.from_product([CONDITIONS, LEVELS], names=["condition", "level"])
    keyed = table.set_index(["condition", "level"])
    if not keyed.index.is_unique or set(keyed.index) != set(targets):
        raise DataError(f"{path}: expected each of the {len(targets)} (condition, level) pairs exactly once")
    values = keyed.loc[targets, list(PRED_COLUMNS)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(values).all() or (values < 0).any() or (values.sum(axis=1) <= 0).any():
        raise DataError(f"{path}: probabilities must be finite, not negative and not all 0 in a row")
    out = pd.DataFrame(values / values.sum(axis=1, keepdims=True), columns=list(PRED_COLUMNS), index=targets)
    return out.reset_index()


def prior_oof(wide: pd.DataFrame, folds: pd.DataFrame, weighted: bool = True,
              pseudo_count: float = PSEUDO_COUNT) -> pd.DataFrame:
    """Out-of-fold predictions of the prior in submission format (``row_id`` + the three columns)."""
    long = labels_long(wide).merge(folds, on="study_id", how="left", validate="many_to_one")
    parts = []
    for fold in sorted(folds["fold"].unique()):
        prior = fit_prior(long[long["fold"] != fold], weighted=weighted, pseudo_count=pseudo_count)
        valid = long.loc[long["fold"] == fold, ["row_id", "condition", "level"]]
        parts.append(valid.merge(prior, on=["condition", "level"], how="left"))
    oof = pd.concat(parts, ignore_index=True)
    oof[list(PRED_COLUMNS)] = oof[list(PRED_COLUMNS)].fillna(1 / 3)  # only with pseudo_count 0 and no labels
    return oof[["row_id", *PRED_COLUMNS]]


def evaluate_prior(data_dir: str | Path, folds_path: str | Path | None = None, weighted: bool = True,
                   pseudo_count: float = PSEUDO_COUNT) -> dict[str, float]:
    """Score the prior in k-fold CV over ``folds_path`` (default ``<data_dir>/folds.csv``; when that is
    absent, the folds ``make_folds`` would write, computed in memory). Returns the metric's terms."""
    wide = load_labels_wide(data_dir)
    if folds_path is None and (Path(data_dir) / FOLDS_FILE).is_file():
        folds_path = Path(data_dir) / FOLDS_FILE
    if folds_path is None:
        log.info("no %s in %s: using the default folds (5, seed 42) computed in memory", FOLDS_FILE, data_dir)
        folds = compute_folds(data_dir)
    else:
        folds = load_folds(folds_path, study_ids=wide["study_id"])
    oof = prior_oof(wide, folds, weighted=weighted, pseudo_count=pseudo_count)
    return score(solution_from_long(labels_long(wide)), oof)
