"""``rsna2024 compare`` on hand-made OOF files: accuracy, macro F1 and confusion counts by hand, family blends and
their ensemble, the prior on the same folds, the files written, narrowing to common studies, and clear errors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from rsna2024.baselines.compare import CompareError, classification_metrics, compare_runs, format_markdown
from rsna2024.baselines.prior import prior_oof
from rsna2024.cli import main
from rsna2024.constants import PRED_COLUMNS, TARGET_COLUMNS, study_row_ids
from rsna2024.metric import score, solution_from_labels

STUDIES = (10, 20)
# Study 10: spinal L1/L2 Moderate, spinal L2/L3 Severe; study 20: left subarticular L4/L5 Severe, spinal L5/S1
# unlabelled; every other target Normal/Mild. 49 labelled rows: 46 normal, 1 moderate, 2 severe.
SPECIAL = {(10, "spinal_canal_stenosis_l1_l2"): "Moderate", (10, "spinal_canal_stenosis_l2_l3"): "Severe",
           (20, "left_subarticular_stenosis_l4_l5"): "Severe", (20, "spinal_canal_stenosis_l5_s1"): np.nan}


@pytest.fixture
def data(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    wide = pd.DataFrame([{"study_id": s, **{t: SPECIAL.get((s, t), "Normal/Mild") for t in TARGET_COLUMNS}}
                         for s in STUDIES])
    wide.to_csv(d / "train.csv", index=False)
    pd.DataFrame({"study_id": STUDIES, "fold": [0, 1]}).to_csv(d / "folds.csv", index=False)
    return d


def _run(root, name, task, rows, studies=STUDIES):
    """A run folder whose OOF file predicts ``rows(row_id) -> (p0, p1, p2, source)`` for every row id."""
    run = root / "runs" / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"name": name, "task": task}))
    ids = [r for s in studies for r in study_row_ids(s)]
    table = pd.DataFrame([(r, *rows(r)) for r in ids], columns=["row_id", *PRED_COLUMNS, "source"])
    for k, s in enumerate(studies):
        table[table["row_id"].str.startswith(f"{s}_")].to_csv(run / f"oof_fold{k}.csv", index=False)
    return run


def s0_rows(r):
    return (0.1, 0.2, 0.7, "model") if r == "10_spinal_canal_stenosis_l2_l3" else (0.6, 0.3, 0.1, "model")


def split_spinal_rows(r):
    return (0.2, 0.7, 0.1, "model") if "spinal" in r else (0.6, 0.3, 0.1, "prior")


def split_subarticular_rows(r):
    return (0.3, 0.3, 0.4, "model") if "subarticular" in r else (0.5, 0.4, 0.1, "prior")


def global_rows(r):
    return (0.9, 0.05, 0.05, "model")


@pytest.fixture
def runs(tmp_path):
    return [_run(tmp_path, "s0_toy", "s0_image_classifier", s0_rows),
            _run(tmp_path, "split_a", "split_spinal", split_spinal_rows),
            _run(tmp_path, "split_b", "split_subarticular", split_subarticular_rows),
            _run(tmp_path, "global_a", "global", global_rows)]


def test_classification_metrics_hand_computed():
    truth = np.array([0, 0, 0, 1, 2, 2])
    pred = np.array([0, 0, 1, 1, 0, 2])
    accuracy, f1, matrix = classification_metrics(truth, pred)
    assert matrix.tolist() == [[2, 1, 0], [0, 1, 0], [1, 0, 1]]
    assert accuracy == pytest.approx(4 / 6)
    # F1 = 2TP / (2TP + FP + FN): class 0: 4 / (4 + 1 + 1); class 1: 2 / (2 + 1 + 0); class 2: 2 / (2 + 0 + 1)
    assert f1 == pytest.approx((4 / 6 + 2 / 3 + 2 / 3) / 3)
    # a class absent from both truth and prediction does not count
    assert classification_metrics(np.array([0, 1]), np.array([0, 1]))[1] == pytest.approx(1.0)


def test_compare_table_by_hand(data, runs, tmp_path):
    out = tmp_path / "report"
    table = compare_runs(data, runs, out_dir=out).set_index("model")
    assert list(table.index) == ["prior", "s0_toy", "split_a", "split_b", "global_a", "split", "global",
                                 "split+global"]
    assert table["kind"].tolist() == ["prior", "s0", "split", "split", "global", "family", "family", "ensemble"]
    assert table.loc["split", "runs"] == 2 and table.loc["split+global", "runs"] == 3
    assert (table["rows"] == 49).all() and (table["studies"] == 2).all()

    # S0 predicts Normal/Mild everywhere but study 10's spinal L2/L3 (Severe, right): 47 of 49 right.
    s0 = table.loc["s0_toy"]
    assert s0["accuracy"] == pytest.approx(47 / 49)
    # class 0: TP 46, FP 2, FN 0; class 1: TP 0, FN 1; class 2: TP 1, FN 1
    assert s0["macro_f1"] == pytest.approx((92 / 94 + 0 + 2 / 3) / 3)
    wide = pd.read_csv(data / "train.csv")
    oof = pd.concat([pd.read_csv(runs[0] / f"oof_fold{k}.csv") for k in (0, 1)])
    assert s0["total"] == pytest.approx(score(solution_from_labels(wide), oof[["row_id", *PRED_COLUMNS]])["total"])

    # the prior row is the prior of the same folds
    prior = prior_oof(wide, pd.read_csv(data / "folds.csv"))
    assert table.loc["prior", "total"] == pytest.approx(score(solution_from_labels(wide), prior)["total"])

    # split family: spinal rows from split_a, subarticular from split_b, foraminal (no model) the files' mean;
    # the global model says Normal/Mild everywhere (46 of 49), the ensemble averages the two families
    spinal = np.array([0.2, 0.7, 0.1])
    # split family argmax: spinal rows -> moderate (right for 1 of 9 labelled spinal rows), subarticular rows ->
    # severe (right for 1 of 20), foraminal -> normal (20 of 20)
    assert table.loc["split", "accuracy"] == pytest.approx((1 + 1 + 20) / 49)
    assert table.loc["global", "accuracy"] == pytest.approx(46 / 49)
    ensemble_spinal = (spinal + np.array([0.9, 0.05, 0.05])) / 2  # argmax normal
    ensemble_sub = (np.array([0.3, 0.3, 0.4]) + np.array([0.9, 0.05, 0.05])) / 2  # normal
    assert ensemble_spinal.argmax() == 0 and ensemble_sub.argmax() == 0
    assert table.loc["split+global", "accuracy"] == pytest.approx(46 / 49)

    for name in ["compare.csv", "compare.md", "confusion_prior.png", "confusion_s0_toy.png", "confusion_split.png",
                 "confusion_split+global.png"]:
        assert (out / name).is_file(), name
    assert (out / "confusion_s0_toy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = pd.read_csv(out / "compare.csv")
    assert written["model"].tolist() == list(table.index)
    md = (out / "compare.md").read_text().splitlines()
    assert md[0].startswith("| model | kind | runs | total |") and len(md) == 2 + len(table)
    assert f"{47 / 49:.4f}" in md[3]


def test_family_blend_values(data, runs, tmp_path):
    from rsna2024.baselines.compare import read_run
    from rsna2024.classifiers.oof import blend_oof

    tables = [read_run(r)[2] for r in runs[1:3]]
    blend = blend_oof(tables).set_index("row_id")
    np.testing.assert_allclose(blend.loc["10_spinal_canal_stenosis_l1_l2", list(PRED_COLUMNS)], [0.2, 0.7, 0.1])
    np.testing.assert_allclose(blend.loc["20_right_subarticular_stenosis_l1_l2", list(PRED_COLUMNS)], [0.3, 0.3, 0.4])
    np.testing.assert_allclose(blend.loc["20_left_neural_foraminal_narrowing_l3_l4", list(PRED_COLUMNS)],
                               [0.55, 0.35, 0.1])
    assert blend.loc["20_left_neural_foraminal_narrowing_l3_l4", "source"] == "prior"


def test_runs_covering_fewer_studies_narrow_the_table(data, runs, tmp_path, caplog):
    partial = _run(tmp_path, "s1_one_fold", "s1_condition_cnn", s0_rows, studies=(10,))
    table = compare_runs(data, [runs[0], partial]).set_index("model")
    assert (table["studies"] == 1).all() and (table["rows"] == 25).all()
    assert table.loc["s1_one_fold", "kind"] == "s1"
    assert table.loc["s0_toy", "accuracy"] == pytest.approx(table.loc["s1_one_fold", "accuracy"])
    assert "s1_one_fold covers 1 of 2 studies" in caplog.text
    assert "split" not in table.index  # no family without its runs


def test_compare_cli_prints_and_writes(data, runs, tmp_path, capsys):
    out = tmp_path / "cli_out"
    assert main(["compare", "--data", str(data), "--runs", *map(str, runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("| model | kind |") and "split+global" in printed and str(out) in printed
    assert (out / "compare.csv").is_file()
    # default output folder: beside the run folders
    assert main(["compare", "--data", str(data), "--runs", str(runs[0])]) == 0
    assert (runs[0].parent / "compare" / "compare.md").is_file()


def test_compare_errors_name_the_problem(data, runs, tmp_path, capsys):
    empty = tmp_path / "runs" / "empty"
    empty.mkdir()
    (empty / "config.yaml").write_text(yaml.safe_dump({"name": "empty", "task": "global"}))
    with pytest.raises(CompareError, match="empty: no out-of-fold file"):
        compare_runs(data, [empty])
    assert main(["compare", "--data", str(data), "--runs", str(tmp_path)]) == 2
    assert "no config.yaml" in capsys.readouterr().err
    holes = _run(tmp_path, "holes", "s2_level_embedding", s0_rows)
    part = pd.read_csv(holes / "oof_fold0.csv")
    part.iloc[1:].to_csv(holes / "oof_fold0.csv", index=False)
    with pytest.raises(CompareError, match="holes: 1 row id"):
        compare_runs(data, [holes])


def test_format_markdown_rounds_floats():
    md = format_markdown(pd.DataFrame({"model": ["a"], "total": [0.123456], "rows": [3]}))
    assert md.splitlines() == ["| model | total | rows |", "|---|---:|---:|", "| a | 0.1235 | 3 |"]
