"""Folds (grouped by study, stratified, seeded) and the image-free prior."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from kaggle_folder import make_tables, write_folder

from rsna2024.baselines.prior import evaluate_prior, fit_prior, prior_oof
from rsna2024.constants import LABELS, PRED_COLUMNS, TARGET_COLUMNS
from rsna2024.data.contract import labels_long
from rsna2024.data.folds import assign_folds, compute_folds, load_folds, make_folds, severity_profile
from rsna2024.errors import DataError

N, M, S = LABELS


def _strata(n=400, seed=0):
    rng = np.random.default_rng(seed)
    keys = rng.choice(["common", "middle", "rare", "very-rare"], size=n, p=(0.7, 0.25, 0.04, 0.01))
    return np.arange(10_000, 10_000 + n), keys


# --------------------------------------------------------------------------- folds
def test_every_study_in_exactly_one_fold_and_sizes_balanced():
    ids, keys = _strata()
    folds = assign_folds(ids, keys, n_folds=5, seed=1)
    assert sorted(folds["study_id"]) == sorted(ids) and folds["study_id"].is_unique
    sizes = folds["fold"].value_counts()
    assert set(sizes.index) == set(range(5)) and sizes.max() - sizes.min() <= 1


def test_each_stratum_is_spread_evenly_over_the_folds():
    ids, keys = _strata()
    folds = assign_folds(ids, keys, n_folds=5, seed=1).set_index("study_id")
    table = pd.crosstab(pd.Series(keys, index=ids), folds.loc[ids, "fold"].to_numpy())
    assert (table.max(axis=1) - table.min(axis=1) <= 1).all(), table


def test_folds_are_deterministic_for_a_seed_and_change_with_it():
    ids, keys = _strata()
    a, b, c = (assign_folds(ids, keys, seed=s) for s in (3, 3, 4))
    assert a.equals(b)
    assert not a["fold"].equals(c["fold"])


def test_too_few_studies_or_folds():
    with pytest.raises(DataError, match="3 studies cannot fill 5 folds"):
        assign_folds([1, 2, 3], ["a", "a", "a"])
    with pytest.raises(ValueError, match="at least 2"):
        assign_folds([1, 2, 3], ["a", "a", "a"], n_folds=1)


def test_severity_profile_is_the_worst_label_per_group():
    wide = make_tables(2)["train.csv"]
    wide.loc[:, list(TARGET_COLUMNS)] = N
    wide.loc[0, "spinal_canal_stenosis_l4_l5"] = S
    wide.loc[0, "right_neural_foraminal_narrowing_l2_l3"] = M
    wide.loc[0, "left_subarticular_stenosis_l1_l2"] = np.nan  # missing counts as nothing found
    wide.loc[1, "left_subarticular_stenosis_l5_s1"] = M
    wide.loc[1, "right_subarticular_stenosis_l5_s1"] = S
    assert severity_profile(wide).tolist() == ["s2-f1-a0", "s0-f0-a2"]


def test_make_folds_writes_refuses_to_overwrite_and_reads_back(tmp_path):
    data = write_folder(tmp_path / "d", n_studies=30)
    path = make_folds(data)
    assert path == data / "folds.csv"
    folds = load_folds(path, study_ids=pd.read_csv(data / "train.csv")["study_id"])
    assert list(folds.columns) == ["study_id", "fold"] and len(folds) == 30
    assert folds["fold"].value_counts().tolist() == [6] * 5
    assert folds.equals(compute_folds(data))
    with pytest.raises(FileExistsError, match="folds.csv exists"):
        make_folds(data, seed=7)
    make_folds(data, seed=7, overwrite=True)
    assert not load_folds(path)["fold"].equals(folds["fold"])
    other = make_folds(data, out=tmp_path / "k3.csv", n_folds=3)
    assert sorted(load_folds(other)["fold"].unique()) == [0, 1, 2]


@pytest.mark.parametrize("text, message", [
    ("study_id,fold\n1,0\n1,1\n2,1\n", "duplicate (study_id) 1 at line(s) 2, 3"),
    ("study_id,fold\n1,0\n2,2\n", "expected every fold 0..k-1"),
    ("study_id,fold\n1,0\n2,x\n", "'fold' must hold integers; line(s) 3"),
    ("study_id\n1\n", "missing column(s) ['fold']"),
])
def test_load_folds_rejects_bad_files(tmp_path, text, message):
    (tmp_path / "folds.csv").write_text(text)
    with pytest.raises(DataError) as err:
        load_folds(tmp_path / "folds.csv")
    assert message in str(err.value) and "folds.csv" in str(err.value)


def test_load_folds_checks_the_studies_match(tmp_path):
    (tmp_path / "folds.csv").write_text("study_id,fold\n1,0\n2,1\n5,1\n")
    with pytest.raises(DataError, match=r"1 missing: 3; 1 unknown: 5\).*--overwrite"):
        load_folds(tmp_path / "folds.csv", study_ids=[1, 2, 3])


# --------------------------------------------------------------------------- prior
def _wide(labels_of_first_target):
    n = len(labels_of_first_target)
    wide = make_tables(n)["train.csv"]
    wide.loc[:, list(TARGET_COLUMNS)] = N
    wide[TARGET_COLUMNS[0]] = labels_of_first_target
    return wide


def test_fit_prior_reweights_frequencies_by_class_weight():
    long = labels_long(_wide([N, N, M, S, np.nan]))
    weighted = fit_prior(long, pseudo_count=0).set_index(["condition", "level"])
    plain = fit_prior(long, weighted=False, pseudo_count=0).set_index(["condition", "level"])
    # labelled: 2 N, 1 M, 1 S (the missing one ignored) -> plain .5/.25/.25; x (1, 2, 4) -> 2/2/4 of 8
    assert plain.loc[("spinal_canal_stenosis", "l1_l2")].tolist() == [0.5, 0.25, 0.25]
    assert weighted.loc[("spinal_canal_stenosis", "l1_l2")].tolist() == [0.25, 0.25, 0.5]
    assert weighted.loc[("spinal_canal_stenosis", "l2_l3")].tolist() == [1.0, 0.0, 0.0]
    assert len(weighted) == 25


def test_pseudo_counts_keep_unseen_classes_possible():
    long = labels_long(_wide([N, N, M, S, np.nan]))
    weighted = fit_prior(long, pseudo_count=0.5).set_index(["condition", "level"])
    # counts 2/1/1 + .5 -> 2.5/1.5/1.5; x (1, 2, 4) -> 2.5/3/6 of 11.5
    assert weighted.loc[("spinal_canal_stenosis", "l1_l2")].tolist() == pytest.approx([2.5 / 11.5, 3 / 11.5, 6 / 11.5])
    # 5 Normal/Mild and nothing else -> 5.5/.5/.5 -> 5.5/1/2 of 8.5
    assert weighted.loc[("spinal_canal_stenosis", "l2_l3")].tolist() == pytest.approx([5.5 / 8.5, 1 / 8.5, 2 / 8.5])
    # a target whose rows are all missing gets the pseudo counts alone
    no_rows = fit_prior(long[long["level"] != "l5_s1"], weighted=False).set_index(["condition", "level"])
    assert no_rows.loc[("spinal_canal_stenosis", "l5_s1")].tolist() == pytest.approx([1 / 3] * 3)


def test_prior_oof_uses_only_the_other_folds():
    wide = _wide([N, N, S, S])
    folds = pd.DataFrame({"study_id": wide["study_id"], "fold": [0, 0, 1, 1]})
    oof = prior_oof(wide, folds, weighted=False, pseudo_count=0).set_index("row_id")
    first = [f"{s}_{TARGET_COLUMNS[0]}" for s in wide["study_id"]]
    # fold 0 is predicted from fold 1 (both Severe) and the other way round
    assert oof.loc[first[0], list(PRED_COLUMNS)].tolist() == [0.0, 0.0, 1.0]
    assert oof.loc[first[3], list(PRED_COLUMNS)].tolist() == [1.0, 0.0, 0.0]
    assert len(oof) == 100


def test_evaluate_prior_reads_folds_csv_or_computes_the_default(tmp_path, caplog):
    data = write_folder(tmp_path / "d", n_studies=60, seed=3)
    with caplog.at_level(logging.INFO, logger="rsna2024"):
        in_memory = evaluate_prior(data)
    assert "computed in memory" in caplog.text and not (data / "folds.csv").exists()
    make_folds(data)
    assert evaluate_prior(data) == in_memory  # the written file holds the same default folds
    assert evaluate_prior(data, folds_path=data / "folds.csv") == in_memory
    other = make_folds(data, out=tmp_path / "other.csv", seed=9)
    assert evaluate_prior(data, folds_path=other) != in_memory
    plain = evaluate_prior(data, weighted=False)
    assert in_memory["total"] < plain["total"]
    assert set(in_memory) == {"total", "spinal", "foraminal", "subarticular", "any_severe_spinal"}
