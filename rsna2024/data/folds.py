"""Cross-validation folds: ``folds.csv`` (``study_id, fold``), grouped by study, stratified on severity.

Every later stage reads this one file, so all out-of-fold numbers of the kit share the same split.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rsna2024.constants import GROUP_OF_CONDITION
from rsna2024.data.contract import check_unique, integer_column, labels_long, load_labels_wide, read_csv
from rsna2024.errors import DataError
from rsna2024.utils.io import atomic_to_csv, check_overwrite
from rsna2024.utils.logging import get_logger
from rsna2024.utils.messages import describe_items

FOLDS_FILE = "folds.csv"
log = get_logger(__name__)


def severity_profile(wide: pd.DataFrame) -> pd.Series:
    """Per study a stratum key such as ``'s2-f1-a0'``: the worst label (0 Normal/Mild, 1 Moderate,
    2 Severe; missing counts as 0) in the spinal, foraminal and subarticular groups."""
    long = labels_long(wide)
    long["group"] = long["condition"].map(GROUP_OF_CONDITION)
    worst = long.assign(sev=long["label_index"].clip(lower=0)).pivot_table(
        index="study_id", columns="group", values="sev", aggfunc="max")
    key = "s" + worst["spinal"].astype(str) + "-f" + worst["foraminal"].astype(str) + "-a" + \
        worst["subarticular"].astype(str)
    return key.reindex(wide["study_id"].to_numpy())


def assign_folds(study_ids, strata, n_folds: int = 5, seed: int = 42) -> pd.DataFrame:
    """Stratified, seeded assignment of studies to ``n_folds`` folds.

    Studies of each stratum are shuffled and dealt round-robin, the dealer continuing across strata,
    so fold sizes differ by at most one and every stratum, however rare, is spread as evenly as it can be.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    table = pd.DataFrame({"study_id": np.asarray(study_ids, dtype="int64"), "stratum": np.asarray(strata)})
    if len(table) < n_folds:
        raise DataError(f"{len(table)} studies cannot fill {n_folds} folds")
    rng = np.random.default_rng(seed)
    fold = np.empty(len(table), dtype="int64")
    start = 0
    for _, rows in sorted(table.groupby("stratum").indices.items()):
        rows = rng.permutation(rows)
        fold[rows] = (start + np.arange(len(rows))) % n_folds
        start = (start + len(rows)) % n_folds
    # Which fold number each dealt slot becomes is itself random, so seeds also move small folds.
    fold = rng.permutation(n_folds)[fold]
    return pd.DataFrame({"study_id": table["study_id"], "fold": fold}).sort_values("study_id", ignore_index=True)


def make_folds(data_dir: str | Path, out: str | Path | None = None, n_folds: int = 5, seed: int = 42,
               overwrite: bool = False) -> Path:
    """Write ``folds.csv`` (default ``<data_dir>/folds.csv``) for the studies of ``train.csv``; returns its path.

    Refuses to replace an existing file unless ``overwrite`` is set.
    """
    out = Path(out) if out is not None else Path(data_dir) / FOLDS_FILE
    check_overwrite(out, overwrite)
    folds = compute_folds(data_dir, n_folds=n_folds, seed=seed)
    atomic_to_csv(folds, out)
    log.info("wrote %s: %d studies in %d folds (seed %d)", out, len(folds), n_folds, seed)
    return out


def compute_folds(data_dir: str | Path, n_folds: int = 5, seed: int = 42) -> pd.DataFrame:
    """The ``study_id, fold`` table :func:`make_folds` writes, without writing it."""
    wide = load_labels_wide(data_dir)
    return assign_folds(wide["study_id"], severity_profile(wide).to_numpy(), n_folds=n_folds, seed=seed)


def load_folds(path: str | Path, study_ids=None) -> pd.DataFrame:
    """Read ``folds.csv`` and check it: integer ``study_id`` and ``fold``, each study once, folds
    numbered 0..k-1 with none empty, and (when ``study_ids`` is given) exactly those studies."""
    path = Path(path)
    df = read_csv(path, ("study_id", "fold"))
    df["study_id"] = integer_column(df, "study_id", path)
    df["fold"] = integer_column(df, "fold", path)
    check_unique(df, ["study_id"], path)
    k = int(df["fold"].max()) + 1 if len(df) else 0
    if df["fold"].min() < 0 or set(df["fold"]) != set(range(k)) or k < 2:
        raise DataError(f"{path}: folds {sorted(set(df['fold']))}; expected every fold 0..k-1 (k >= 2) to hold studies")
    if study_ids is not None:
        want, have = set(map(int, study_ids)), set(df["study_id"])
        absent, unknown = sorted(want - have), sorted(have - want)
        if absent or unknown:
            raise DataError(f"{path}: does not match the labels' studies ({len(absent)} missing: "
                            f"{describe_items(absent) or '-'}; {len(unknown)} unknown: {describe_items(unknown) or '-'}); "
                            f"rerun `rsna2024 folds --overwrite`")
    return df[["study_id", "fold"]]
