"""The official metric against hand-worked values, scikit-learn, and the submission checks."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss

from rsna2024.constants import LABELS, PRED_COLUMNS, TARGET_COLUMNS
from rsna2024.errors import SubmissionError
from rsna2024.metric import (
    EPS,
    check_submission,
    format_scores,
    score,
    score_labelled_rows,
    solution_from_labels,
    weighted_log_loss,
)

N, M, S = LABELS  # Normal/Mild, Moderate, Severe
# (row_id, true label or None, prediction normal_mild/moderate/severe)
HAND_ROWS = [
    ("1_spinal_canal_stenosis_l1_l2", N, (0.5, 0.3, 0.2)),
    ("1_spinal_canal_stenosis_l2_l3", S, (0.2, 0.3, 0.5)),
    ("1_spinal_canal_stenosis_l3_l4", None, (0.0, 0.0, 1.0)),  # missing label: dropped, severe 1.0 ignored
    ("1_left_neural_foraminal_narrowing_l1_l2", M, (0.1, 0.1, 0.2)),  # sums to .4: normalised to .25/.25/.5
    ("1_right_subarticular_stenosis_l5_s1", N, (1.0, 0.0, 0.0)),  # exactly 1 and 0: clipped
    ("2_spinal_canal_stenosis_l1_l2", M, (0.3, 0.1, 0.1)),  # sums to .5: normalised to .6/.2/.2
    ("2_spinal_canal_stenosis_l5_s1", N, (0.9, 0.05, 0.05)),
    ("2_right_neural_foraminal_narrowing_l3_l4", S, (0.5, 0.5, 0.0)),  # true class predicted 0
    ("2_left_subarticular_stenosis_l2_l3", S, (0.25, 0.25, 0.5)),
    ("3_spinal_canal_stenosis_l1_l2", None, (0.3, 0.3, 0.4)),  # study 3: no labelled spinal row
    ("3_left_subarticular_stenosis_l1_l2", N, (0.8, 0.1, 0.1)),
]
WEIGHT = {N: 1.0, M: 2.0, S: 4.0}


def hand_tables(rows=HAND_ROWS) -> tuple[pd.DataFrame, pd.DataFrame]:
    sol = pd.DataFrame({"row_id": [r for r, _, _ in rows]})
    for j, col in enumerate(PRED_COLUMNS):
        sol[col] = [np.nan if lab is None else float(LABELS.index(lab) == j) for _, lab, _ in rows]
    sol["sample_weight"] = [np.nan if lab is None else WEIGHT[lab] for _, lab, _ in rows]
    sub = pd.DataFrame([p for _, _, p in rows], columns=list(PRED_COLUMNS))
    sub.insert(0, "row_id", sol["row_id"])
    return sol, sub


def test_hand_worked_three_studies():
    sol, sub = hand_tables()
    got = score(sol, sub)
    ln = math.log
    # spinal: rows 1_l1_l2 (w1, p .5), 1_l2_l3 (w4, p .5), 2_l1_l2 (w2, p .2 after /.5), 2_l5_s1 (w1, p .9)
    spinal = (1 * -ln(0.5) + 4 * -ln(0.5) + 2 * -ln(0.2) + 1 * -ln(0.9)) / 8
    # foraminal: moderate p .25 after normalising (w2); severe predicted 0 -> eps / (1 + eps) (w4)
    foraminal = (2 * -ln(0.25) + 4 * -ln(EPS / (1 + EPS))) / 6
    # subarticular: normal predicted 1 -> (1 - eps) / (1 + eps) (w1); severe p .5 (w4); normal p .8 (w1)
    subarticular = (1 * -ln((1 - EPS) / (1 + EPS)) + 4 * -ln(0.5) + 1 * -ln(0.8)) / 6
    # any_severe: study 1 severe (weight 4), max labelled severe .5 (the unlabelled row's 1.0 is dropped);
    # study 2 not severe (weight 2: a moderate row), max severe as submitted .1 (not the normalised .2);
    # study 3 has no labelled spinal row and no term.
    any_severe = (4 * -ln(0.5) + 2 * -ln(1 - 0.1)) / 6
    assert got["spinal"] == pytest.approx(spinal, rel=1e-12)
    assert got["foraminal"] == pytest.approx(foraminal, rel=1e-12)
    assert got["subarticular"] == pytest.approx(subarticular, rel=1e-12)
    assert got["any_severe_spinal"] == pytest.approx(any_severe, rel=1e-12)
    assert got["total"] == pytest.approx((spinal + foraminal + subarticular + any_severe) / 4, rel=1e-12)
    assert list(got) == ["total", "spinal", "foraminal", "subarticular", "any_severe_spinal"]


def test_any_severe_scalar_weights_the_fourth_term_in_the_mean():
    """The published scorer: np.average(terms, weights=[1, 1, 1, any_severe_scalar])."""
    sol, sub = hand_tables()
    one, two = score(sol, sub), score(sol, sub, any_severe_scalar=2.0)
    assert two["any_severe_spinal"] == one["any_severe_spinal"]  # the term itself is unchanged
    assert two["spinal"] == one["spinal"]
    three = one["spinal"] + one["foraminal"] + one["subarticular"]
    assert two["total"] == pytest.approx((three + 2 * one["any_severe_spinal"]) / 5, rel=1e-12)
    assert score(sol, sub, any_severe_scalar=0.0)["total"] == pytest.approx(three / 3, rel=1e-12)


def test_any_severe_weight_is_the_max_labelled_spinal_weight():
    """Same predictions; study 2's label changes from Moderate to Normal/Mild: its weight drops from 2 to 1."""
    rows = [r if r[0] != "2_spinal_canal_stenosis_l1_l2" else (r[0], N, r[2]) for r in HAND_ROWS]
    got = score(*hand_tables(rows))
    assert got["any_severe_spinal"] == pytest.approx((4 * -math.log(0.5) + 1 * -math.log(0.9)) / 5, rel=1e-12)


def test_row_order_does_not_matter():
    sol, sub = hand_tables()
    shuffled = sub.sample(frac=1.0, random_state=3).reset_index(drop=True)
    assert score(sol, shuffled) == score(sol, sub)
    assert score(sol.iloc[::-1].reset_index(drop=True), shuffled) == score(sol, sub)


def test_matches_sklearn_log_loss_per_group():
    """Random probabilities over 40 studies; each term recomputed with scikit-learn's log_loss."""
    rng = np.random.default_rng(7)
    studies = range(100, 140)
    rows = []
    for s in studies:
        for t in TARGET_COLUMNS:
            lab = None if rng.random() < 0.05 else LABELS[rng.choice(3, p=(0.6, 0.25, 0.15))]
            p = rng.dirichlet((1, 1, 1)) * 0.98 + 0.0066
            rows.append((f"{s}_{t}", lab, tuple(p / p.sum())))
    sol, sub = hand_tables(rows)
    got = score(sol, sub)
    labelled = sol["sample_weight"].notna()
    sol, sub = sol[labelled], sub[labelled]
    y = sol[list(PRED_COLUMNS)].to_numpy().argmax(axis=1)
    for group, pattern in (("spinal", "spinal"), ("foraminal", "foraminal"), ("subarticular", "subarticular")):
        m = sol["row_id"].str.contains(pattern).to_numpy()
        want = log_loss(y[m], sub[list(PRED_COLUMNS)].to_numpy()[m], labels=[0, 1, 2],
                        sample_weight=sol["sample_weight"].to_numpy()[m])
        assert got[group] == pytest.approx(want, rel=1e-10)
    spinal = sol["row_id"].str.contains("spinal").to_numpy()
    study = sol["row_id"].str.split("_").str[0][spinal]
    per = pd.DataFrame({"study": study, "y": y[spinal] == 2, "p": sub["severe"].to_numpy()[spinal],
                        "w": sol["sample_weight"].to_numpy()[spinal]}).groupby("study").max()
    want = log_loss(per["y"].astype(int), per["p"], labels=[0, 1], sample_weight=per["w"])
    assert got["any_severe_spinal"] == pytest.approx(want, rel=1e-10)


def test_weighted_log_loss_clips_then_normalises_rows():
    truth = np.array([[0, 1, 0], [0, 0, 1]])
    # row 1: [.1, .3, 0] -> [.1, .3, eps] -> moderate .3 / (.4 + eps); row 2: [0, 0, 1] -> (1 - eps) / (1 + eps)
    assert weighted_log_loss(truth, np.array([[0.1, 0.3, 0.0], [0.0, 0.0, 1.0]]), np.array([2.0, 4.0])) == \
        pytest.approx((2 * -math.log(0.3 / (0.4 + EPS)) + 4 * -math.log((1 - EPS) / (1 + EPS))) / 6, rel=1e-12)
    # the scorer clips before it normalises: [2, 6, 0] counts as [1 - eps, 1 - eps, eps], not [.25, .75, 0]
    assert weighted_log_loss(truth[:1], np.array([[2.0, 6.0, 0.0]]), np.array([1.0])) == \
        pytest.approx(-math.log((1 - EPS) / (2 - EPS)), rel=1e-12)
    assert math.isnan(weighted_log_loss(truth[:0], truth[:0], np.array([])))


def test_solution_from_labels_keeps_missing_as_nan():
    wide = pd.DataFrame({"study_id": [5]} | {t: [S] for t in TARGET_COLUMNS})
    wide.loc[0, TARGET_COLUMNS[1]] = np.nan
    wide.loc[0, TARGET_COLUMNS[2]] = M
    sol = solution_from_labels(wide)
    assert len(sol) == 25 and sol["row_id"].iloc[0] == "5_spinal_canal_stenosis_l1_l2"
    assert sol.iloc[0][list(PRED_COLUMNS)].tolist() == [0.0, 0.0, 1.0] and sol["sample_weight"].iloc[0] == 4.0
    assert sol.iloc[1][list(PRED_COLUMNS) + ["sample_weight"]].isna().all()
    assert sol.iloc[2][list(PRED_COLUMNS)].tolist() == [0.0, 1.0, 0.0] and sol["sample_weight"].iloc[2] == 2.0


def test_a_group_without_labelled_rows_is_nan_and_shown_as_such():
    rows = [r for r in HAND_ROWS if "foraminal" not in r[0]]
    got = score(*hand_tables(rows))
    assert math.isnan(got["foraminal"]) and math.isnan(got["total"]) and not math.isnan(got["spinal"])
    text = format_scores(got, "partial")
    assert "foraminal" in text and "n/a" in text and f"{got['spinal']:.4f}" in text


# --------------------------------------------------------------------------- submission checks
@pytest.mark.parametrize("value, problem", [(np.nan, "NaN"), (np.inf, "infinite"), (-0.1, "negative"),
                                            ("abc", "NaN or non-numeric")])
def test_bad_values_name_the_row(value, problem):
    sol, sub = hand_tables()
    sub["moderate"] = sub["moderate"].astype(object)
    sub.loc[4, "moderate"] = value
    with pytest.raises(SubmissionError, match=problem) as err:
        score(sol, sub)
    assert "1_right_subarticular_stenosis_l5_s1" in str(err.value)


def test_missing_and_extra_row_ids_are_named_with_counts():
    sol, sub = hand_tables()
    sub = sub.drop(index=[0, 5])
    extra = pd.DataFrame([["77_spinal_canal_stenosis_l1_l2", 1, 0, 0]], columns=sub.columns)
    with pytest.raises(SubmissionError) as err:
        score(sol, pd.concat([sub, extra]))
    msg = str(err.value)
    assert "2 row_id(s) missing" in msg and "1_spinal_canal_stenosis_l1_l2" in msg
    assert "2_spinal_canal_stenosis_l1_l2" in msg
    assert "1 unexpected row_id(s): 77_spinal_canal_stenosis_l1_l2" in msg


def test_many_missing_row_ids_list_a_few_and_count_the_rest():
    ids = [f"{s}_spinal_canal_stenosis_l1_l2" for s in range(10, 30)]
    sub = pd.DataFrame({"row_id": ids[:5], "normal_mild": 1.0, "moderate": 0.0, "severe": 0.0})
    with pytest.raises(SubmissionError, match=r"15 row_id\(s\) missing: .*\(and 10 more\)"):
        check_submission(sub, expected_row_ids=ids)


def test_missing_columns_duplicates_and_malformed_ids():
    sol, sub = hand_tables()
    with pytest.raises(SubmissionError, match=r"missing column\(s\) \['severe'\]"):
        score(sol, sub.drop(columns="severe"))
    with pytest.raises(SubmissionError, match="appear more than once: 1_spinal_canal_stenosis_l1_l2"):
        check_submission(pd.concat([sub, sub.iloc[:1]]))
    bad = sub.copy()
    bad.loc[0, "row_id"] = "1_spinal_stenosis_l1_l2"
    with pytest.raises(SubmissionError, match="malformed row_id.*1_spinal_stenosis_l1_l2"):
        check_submission(bad)


# --------------------------------------------------------------------------- partial submissions
def hand_long(rows=HAND_ROWS) -> pd.DataFrame:
    """The hand rows as long labels (``row_id``, ``label_index``; -1 = missing), as ``labels_long`` gives."""
    return pd.DataFrame({"row_id": [r for r, _, _ in rows],
                         "label_index": [-1 if lab is None else LABELS.index(lab) for _, lab, _ in rows]})


def test_score_labelled_rows_scores_the_rows_a_partial_file_holds():
    _, sub = hand_tables()
    part = sub[~sub["row_id"].str.startswith("2_")]  # study 2's four labelled rows have no prediction
    got, coverage = score_labelled_rows(hand_long(), part)
    ln = math.log
    spinal = (1 * -ln(0.5) + 4 * -ln(0.5)) / 5  # study 1's two labelled spinal rows
    foraminal = -ln(0.25)  # one moderate row (weight 2) alone
    subarticular = (1 * -ln((1 - EPS) / (1 + EPS)) + 1 * -ln(0.8)) / 2
    any_severe = -ln(0.5)  # study 1 only
    assert got["spinal"] == pytest.approx(spinal, rel=1e-12)
    assert got["foraminal"] == pytest.approx(foraminal, rel=1e-12)
    assert got["subarticular"] == pytest.approx(subarticular, rel=1e-12)
    assert got["any_severe_spinal"] == pytest.approx(any_severe, rel=1e-12)
    assert (coverage.labelled, coverage.scored) == (9, 5)
    assert coverage.missing == ("2_left_subarticular_stenosis_l2_l3", "2_right_neural_foraminal_narrowing_l3_l4",
                                "2_spinal_canal_stenosis_l1_l2", "2_spinal_canal_stenosis_l5_s1")
    assert coverage.format().startswith("scored 5 of 9 labelled rows; 4 labelled rows have no prediction (e.g. "
                                        "2_left_subarticular_stenosis_l2_l3")


def test_a_complete_file_covers_every_labelled_row():
    _, sub = hand_tables()
    got, coverage = score_labelled_rows(hand_long(), sub, require_all=True)
    assert coverage.format() == "scored 9 of 9 labelled rows" and coverage.missing == ()
    assert not math.isnan(got["total"])


def test_require_all_refuses_a_partial_file_naming_it():
    _, sub = hand_tables()
    with pytest.raises(SubmissionError, match=r"^oof.csv: scored 8 of 9 labelled rows; 1 labelled rows have no "
                                              r"prediction \(e.g. 2_spinal_canal_stenosis_l5_s1\); expected a "):
        score_labelled_rows(hand_long(), sub.drop(index=6), name="oof.csv", require_all=True)


def test_unknown_rows_and_bad_values_in_a_partial_file_are_errors():
    _, sub = hand_tables()
    extra = pd.DataFrame([["12345_spinal_canal_stenosis_l1_l2", 1, 0, 0]], columns=sub.columns)
    with pytest.raises(SubmissionError, match=r"^oof.csv: 1 row_id\(s\) not in data/train.csv: 12345_spinal"):
        score_labelled_rows(hand_long(), pd.concat([sub.iloc[:3], extra]), name="oof.csv",
                            labels_name="data/train.csv")
    nan = sub.iloc[:3].copy()
    nan.loc[1, "severe"] = np.nan
    with pytest.raises(SubmissionError, match=r"^oof.csv: 1 row\(s\) hold NaN .*1_spinal_canal_stenosis_l2_l3"):
        score_labelled_rows(hand_long(), nan, name="oof.csv")
