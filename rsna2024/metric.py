"""The competition's official score and the submission checks.

Score (lower is better) = mean of four terms:

1. for each condition group (spinal; foraminal = left + right; subarticular = left + right), the
   sample-weighted multi-class log loss ``sum(w_i * -log p_i,true) / sum(w_i)`` with weights 1, 2, 4
   by the *true* class;
2. ``any_severe_spinal``: per study, label = any spinal level Severe, prediction = the max submitted
   ``severe`` over the study's labelled spinal rows, binary log loss weighted per study by the max row
   weight of those rows.

The total is the weighted mean of the four terms, weights 1, 1, 1 and ``any_severe_scalar``
(1.0 in the competition), as in the published scorer's ``np.average``.

As in the published scorer (which called scikit-learn's ``log_loss`` with eps 1e-15): predictions
are clipped to ``[eps, 1 - eps]`` and then each row renormalised to sum 1 before the log (so a value
above 1 counts as ``1 - eps``, not as its share of the row's sum); the
any_severe term takes the submitted ``severe`` values as given (clipped, not renormalised). Rows
whose label is missing are dropped from both sides; a study without a labelled spinal row has no
any_severe term.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rsna2024.constants import (
    CLASS_WEIGHTS,
    CONDITION_GROUPS,
    GROUP_OF_CONDITION,
    PRED_COLUMNS,
    SUBMISSION_COLUMNS,
    parse_row_id,
)
from rsna2024.data.contract import labels_long
from rsna2024.errors import SubmissionError
from rsna2024.utils.messages import describe_items as _some

EPS = 1e-15
GROUPS: tuple[str, ...] = tuple(CONDITION_GROUPS)
SCORE_KEYS: tuple[str, ...] = ("total", *GROUPS, "any_severe_spinal")


# --------------------------------------------------------------------------- solution tables
def solution_from_long(long: pd.DataFrame) -> pd.DataFrame:
    """The metric's solution table from long labels (``row_id`` + ``label_index``, -1 = missing).

    Columns ``row_id, normal_mild, moderate, severe, sample_weight``: one-hot truth and the true
    class's weight; rows with a missing label keep NaN in all four value columns.
    """
    idx = long["label_index"].to_numpy()
    known = idx >= 0
    onehot = np.full((len(long), 3), np.nan)
    onehot[known] = np.eye(3)[idx[known]]
    weight = np.where(known, np.asarray(CLASS_WEIGHTS)[np.clip(idx, 0, 2)], np.nan)
    out = pd.DataFrame(onehot, columns=list(PRED_COLUMNS))
    out.insert(0, "row_id", long["row_id"].to_numpy())
    out["sample_weight"] = weight
    return out


def solution_from_labels(wide: pd.DataFrame) -> pd.DataFrame:
    """The metric's solution table (see :func:`solution_from_long`) from ``train.csv``-style labels."""
    return solution_from_long(labels_long(wide))


# --------------------------------------------------------------------------- checks
def check_submission(submission: pd.DataFrame, expected_row_ids=None, name: str = "submission") -> pd.DataFrame:
    """Validate a submission-format table and return it with ``row_id`` as str.

    Raises SubmissionError naming missing columns, malformed or repeated row ids, rows holding NaN,
    infinite or negative values, and (when ``expected_row_ids`` is given) missing or extra row ids.
    Row order does not matter.
    """
    missing_cols = [c for c in SUBMISSION_COLUMNS if c not in submission.columns]
    if missing_cols:
        raise SubmissionError(f"{name}: missing column(s) {missing_cols}; expected {list(SUBMISSION_COLUMNS)}")
    sub = submission[list(SUBMISSION_COLUMNS)].copy()
    sub["row_id"] = sub["row_id"].astype(str)
    malformed = []
    for rid in sub["row_id"]:
        try:
            parse_row_id(rid)
        except ValueError:
            malformed.append(rid)
    if malformed:
        raise SubmissionError(f"{name}: {len(malformed)} malformed row_id(s) {_some(malformed)}; expected "
                              f"'<study_id>_<condition>_<level>'")
    dup = sub["row_id"][sub["row_id"].duplicated()].unique()
    if len(dup):
        raise SubmissionError(f"{name}: {len(dup)} row_id(s) appear more than once: {_some(dup)}")
    values = sub[list(PRED_COLUMNS)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    for problem, bad in (("NaN or non-numeric", np.isnan(values)), ("infinite", np.isinf(values)),
                         ("negative", values < 0)):
        rows = np.flatnonzero(bad.any(axis=1))
        if len(rows):
            raise SubmissionError(f"{name}: {len(rows)} row(s) hold {problem} values, e.g. "
                                  f"{_some(sub['row_id'].iloc[rows])}; expected finite probabilities >= 0")
    sub[list(PRED_COLUMNS)] = values
    if expected_row_ids is not None:
        expected = pd.Index(pd.Series(list(expected_row_ids), dtype=str))
        given = pd.Index(sub["row_id"])
        absent, extra = expected.difference(given, sort=True), given.difference(expected, sort=True)
        if len(absent) or len(extra):
            parts = [f"{len(absent)} row_id(s) missing: {_some(absent)}"] if len(absent) else []
            parts += [f"{len(extra)} unexpected row_id(s): {_some(extra)}"] if len(extra) else []
            raise SubmissionError(f"{name}: " + "; ".join(parts))
    return sub


# --------------------------------------------------------------------------- score
def _clip_normalise(p: np.ndarray, eps: float) -> np.ndarray:
    p = np.clip(p, eps, 1 - eps)
    return p / p.sum(axis=1, keepdims=True)


def weighted_log_loss(truth: np.ndarray, pred: np.ndarray, weight: np.ndarray, eps: float = EPS) -> float:
    """``sum(w * -log p_true) / sum(w)`` after clipping to [eps, 1-eps] and row normalisation.

    ``truth`` is one-hot (n x k), ``pred`` non-negative (n x k); NaN when there is no row.
    """
    if len(truth) == 0:
        return math.nan
    p = _clip_normalise(np.asarray(pred, dtype=float), eps)
    losses = -(np.asarray(truth, dtype=float) * np.log(p)).sum(axis=1)
    return float(np.average(losses, weights=weight))


def score(solution: pd.DataFrame, submission: pd.DataFrame, any_severe_scalar: float = 1.0,
          eps: float = EPS) -> dict[str, float]:
    """The competition score of ``submission`` against ``solution`` (see the module docstring).

    ``solution``: ``row_id, normal_mild, moderate, severe, sample_weight`` (rows with a missing label
    hold NaN); ``submission``: ``row_id, normal_mild, moderate, severe`` with exactly the same row
    ids, in any order. Returns ``total, spinal, foraminal, subarticular, any_severe_spinal``; a term
    without any labelled row is NaN, and so is then the total.
    """
    sub = check_submission(submission, expected_row_ids=solution["row_id"])
    sol = solution.assign(row_id=solution["row_id"].astype(str))
    sol = sol[sol["sample_weight"].notna()]
    merged = sol.merge(sub, on="row_id", suffixes=("_true", ""), validate="one_to_one").sort_values("row_id")
    parsed = [parse_row_id(r) for r in merged["row_id"]]
    merged["study_id"] = [p[0] for p in parsed]
    merged["group"] = [GROUP_OF_CONDITION[p[1]] for p in parsed]
    truth_cols = [f"{c}_true" for c in PRED_COLUMNS]
    scores: dict[str, float] = {}
    for group in GROUPS:
        g = merged[merged["group"] == group]
        scores[group] = weighted_log_loss(g[truth_cols].to_numpy(), g[list(PRED_COLUMNS)].to_numpy(),
                                          g["sample_weight"].to_numpy(), eps)
    spinal = merged[merged["group"] == "spinal"].groupby("study_id")
    label = spinal["severe_true"].max().to_numpy()
    pred = spinal["severe"].max().to_numpy()
    weight = spinal["sample_weight"].max().to_numpy()
    pred = np.clip(pred, eps, 1 - eps)
    binary = weighted_log_loss(np.stack([1 - label, label], axis=1), np.stack([1 - pred, pred], axis=1), weight, eps)
    scores["any_severe_spinal"] = binary
    terms = [scores[k] for k in (*GROUPS, "any_severe_spinal")]
    scores["total"] = float(np.average(terms, weights=[1.0] * len(GROUPS) + [any_severe_scalar]))
    return {k: scores[k] for k in SCORE_KEYS}


def format_scores(scores: dict, title: str) -> str:
    """A small table of the total and the four terms under ``title``."""
    lines = [title]
    for key in SCORE_KEYS:
        value = scores.get(key, math.nan)
        lines.append(f"  {key:<18} {'n/a (no labelled rows)' if math.isnan(value) else f'{value:.4f}'}")
    return "\n".join(lines)


@dataclass(frozen=True)
class Coverage:
    """Which labelled rows a (possibly partial) submission predicts."""

    labelled: int  # rows of the labels that hold a label
    missing: tuple[str, ...]  # labelled row ids without a prediction

    @property
    def scored(self) -> int:
        return self.labelled - len(self.missing)

    def format(self) -> str:
        """``'scored 120 of 125 labelled rows; 5 labelled rows have no prediction (e.g. ...)'``."""
        text = f"scored {self.scored} of {self.labelled} labelled rows"
        if self.missing:
            text += (f"; {len(self.missing)} labelled rows have no prediction "
                     f"(e.g. {_some(self.missing, show=3)})")
        return text


def score_labelled_rows(long: pd.DataFrame, submission: pd.DataFrame, name: str = "submission",
                        labels_name: str = "the labels",
                        require_all: bool = False) -> tuple[dict[str, float], Coverage]:
    """Score ``submission`` over the row ids it holds against long labels (see ``labels_long``).

    Returns the scores (as :func:`score`) and the :class:`Coverage` of the labelled rows. Raises
    SubmissionError (naming ``name``) for invalid rows (:func:`check_submission`), for row ids the labels
    (``labels_name`` in messages) do not have, and, with ``require_all``, when a labelled row has no prediction.
    """
    sub = check_submission(submission, name=name)
    row_ids = long["row_id"].astype(str)
    unknown = pd.Index(sub["row_id"]).difference(pd.Index(row_ids), sort=True)
    if len(unknown):
        raise SubmissionError(f"{name}: {len(unknown)} row_id(s) not in {labels_name}: {_some(unknown)}")
    predicted = row_ids.isin(set(sub["row_id"]))
    labelled = (long["label_index"] >= 0).to_numpy()
    coverage = Coverage(int(labelled.sum()), tuple(sorted(row_ids[labelled & ~predicted])))
    if require_all and coverage.missing:
        raise SubmissionError(f"{name}: {coverage.format()}; expected a prediction for every labelled row")
    return score(solution_from_long(long[predicted.to_numpy()]), sub), coverage
