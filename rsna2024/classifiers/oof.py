"""Out-of-fold files of stage 2, in submission format, and their scores.

Every OOF file holds all 25 row ids of each study it covers (``row_id, normal_mild, moderate, severe``,
rows summing to 1) plus a ``source`` column saying where each row comes from:

- ``model``: predicted by this experiment's model;
- ``fallback``: one of the model's conditions, but its input (point or series) was missing, so the row is
  the training folds' prior (logged when it happens);
- ``prior``: a condition this model does not predict (a split model's other groups), filled with the
  training folds' prior so that the file is a complete submission and its score is defined.

An ensemble averages, per row, the files whose ``source`` is ``model`` (:func:`blend_oof`; a row no file
predicts keeps the prior). The metric reads only the four submission columns, so the files score as
they are (``rsna2024 score``).

Per experiment folder: ``oof_fold{k}.csv`` (fold k's studies, on stage 1's predicted points),
``oof_true_points_fold{k}.csv`` (the same studies on the true points) and, once every fold is there, the
merged ``oof.csv`` and ``oof_true_points.csv`` (:func:`merge_folds`).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from rsna2024.baselines.prior import fit_prior
from rsna2024.classifiers.samples import row_grid
from rsna2024.constants import PRED_COLUMNS
from rsna2024.data.contract import labels_long
from rsna2024.metric import SUBMISSION_COLUMNS, score, solution_from_long
from rsna2024.utils.io import atomic_to_csv, atomic_write_text
from rsna2024.utils.logging import get_logger

log = get_logger(__name__)
SOURCES = ("model", "fallback", "prior")
OOF_COLUMNS = (*SUBMISSION_COLUMNS, "source")
POINT_SETS = {"predicted": "oof", "true": "oof_true_points"}  # which points -> file stem


def oof_name(points: str, fold: int | None = None) -> str:
    """``oof_fold3.csv``, ``oof_true_points.csv``, ... for ``points`` in :data:`POINT_SETS`."""
    stem = POINT_SETS[points]
    return f"{stem}_fold{fold}.csv" if fold is not None else f"{stem}.csv"


def fold_prior(wide: pd.DataFrame, train_studies) -> pd.DataFrame:
    """The weight-aware prior (``condition, level`` + the three columns) fitted on the training studies."""
    return fit_prior(labels_long(wide[wide["study_id"].isin([int(s) for s in train_studies])]))


def prior_rows(study_ids, prior: pd.DataFrame) -> pd.DataFrame:
    """All 25 rows of each study (``row_id, condition, level`` + the prior's three columns)."""
    return row_grid(study_ids).merge(prior, on=["condition", "level"], how="left", validate="many_to_one")


def assemble_oof(study_ids, predictions: pd.DataFrame, prior: pd.DataFrame, conditions: Sequence[str]) -> pd.DataFrame:
    """The OOF table of ``study_ids`` (module docstring): ``predictions`` (``row_id`` + the three columns,
    rows the model predicted) win; rows of ``conditions`` without a prediction are ``fallback``, the
    others ``prior``. Rows are normalised to sum 1."""
    table = prior_rows(study_ids, prior)
    table["source"] = np.where(table["condition"].isin(list(conditions)), "fallback", "prior")
    pred = predictions.set_index("row_id")[list(PRED_COLUMNS)]
    unknown = pred.index.difference(table["row_id"])
    if len(unknown):
        raise ValueError(f"predictions for row ids outside the studies: {list(unknown[:3])}")
    hit = table["row_id"].isin(pred.index)
    table.loc[hit, list(PRED_COLUMNS)] = pred.loc[table.loc[hit, "row_id"]].to_numpy()
    table.loc[hit, "source"] = "model"
    values = table[list(PRED_COLUMNS)].to_numpy(dtype=float)
    table[list(PRED_COLUMNS)] = values / values.sum(axis=1, keepdims=True)
    fallback = table[table["source"] == "fallback"]
    if len(fallback):
        log.warning("%d row(s) of %s fall back to the prior (point or series missing), e.g. %s",
                    len(fallback), ", ".join(conditions), ", ".join(fallback["row_id"].head(3)))
    return table[list(OOF_COLUMNS)]


def score_oof(oof: pd.DataFrame, wide: pd.DataFrame) -> dict[str, float]:
    """The competition score of an OOF table against ``train.csv`` labels of its studies."""
    studies = {int(r.split("_", 1)[0]) for r in oof["row_id"]}
    long = labels_long(wide[wide["study_id"].isin(studies)])
    return score(solution_from_long(long), oof[list(SUBMISSION_COLUMNS)])


def blend_oof(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """One family's prediction from its experiments' OOF tables (same row ids): per row id the mean of the
    tables' ``model`` rows; a row no table predicts keeps the mean of the others (prior or fallback) and
    the source ``prior``. Rows renormalised; returns ``row_id``, the three columns and ``source``."""
    ids = [frozenset(t["row_id"]) for t in tables]
    if not tables or any(i != ids[0] for i in ids[1:]):
        raise ValueError("the OOF tables to blend must be given and cover the same row ids")
    both = pd.concat(tables, ignore_index=True)
    cols = list(PRED_COLUMNS)
    model = both[both["source"] == "model"].groupby("row_id")[cols].mean()
    rest = both[~both["row_id"].isin(model.index)].groupby("row_id")[cols].mean()
    out = pd.concat([model.assign(source="model"), rest.assign(source="prior")]).reset_index()
    out[cols] = out[cols].div(out[cols].sum(axis=1), axis=0)
    return out.sort_values("row_id", ignore_index=True)


def merge_folds(run_dir: str | Path, n_folds: int, wide: pd.DataFrame | None = None) -> dict[str, Path]:
    """Concatenate ``oof_fold{k}.csv`` (and the true-point files) into ``oof.csv`` / ``oof_true_points.csv``
    once all ``n_folds`` are there; returns the merged files written (none while folds are missing). With
    ``wide`` the merged files' scores go to ``oof_scores.json`` and the log."""
    run_dir = Path(run_dir)
    written: dict[str, Path] = {}
    scores: dict[str, dict] = {}
    for points in POINT_SETS:
        parts = [run_dir / oof_name(points, k) for k in range(n_folds)]
        if not all(p.is_file() for p in parts):
            continue
        merged = pd.concat([pd.read_csv(p) for p in parts], ignore_index=True)
        dup = merged["row_id"].duplicated()
        if dup.any():
            raise ValueError(f"{run_dir}: row ids in more than one fold file, e.g. {merged['row_id'][dup].iloc[0]}")
        written[points] = atomic_to_csv(merged.sort_values("row_id", ignore_index=True), run_dir / oof_name(points))
        if wide is not None:
            scores[points] = score_oof(merged, wide)
    if scores:
        atomic_write_text(run_dir / "oof_scores.json", json.dumps(scores, indent=2))
        for points, s in scores.items():
            log.info("%s OOF on %s points: total %.4f (spinal %.4f, foraminal %.4f, subarticular %.4f, "
                     "any_severe %.4f)", run_dir.name, points, s["total"], s["spinal"], s["foraminal"],
                     s["subarticular"], s["any_severe_spinal"])
    return written
