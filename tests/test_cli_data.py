"""The data commands end to end through ``rsna2024.cli.main``: validate, folds, prior, score."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from kaggle_folder import link_realdata, make_tables, write_folder

from rsna2024.baselines.prior import prior_oof
from rsna2024.cli import main
from rsna2024.constants import TARGET_COLUMNS
from rsna2024.data.contract import load_labels_wide
from rsna2024.data.folds import load_folds


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def total_line(text: str) -> float:
    return float(next(line for line in text.splitlines() if line.strip().startswith("total")).split()[-1])


def test_validate_prints_the_summary_and_fails_on_bad_input(tmp_path, capsys):
    data = write_folder(tmp_path / "d", n_studies=5, images=True)
    code, out, _ = run(capsys, "validate", "--data", data)
    assert code == 0 and "studies: 5" in out and "train images: 5 studies" in out and "result: OK" in out
    tables = make_tables(5)
    tables["train.csv"].loc[2, "spinal_canal_stenosis_l1_l2"] = "Normal"
    bad = write_folder(tmp_path / "bad", tables=tables)
    code, out, _ = run(capsys, "validate", "--data", bad)
    assert code == 1 and "unknown spinal_canal_stenosis_l1_l2 value(s) Normal at line(s) 4" in out
    assert "images: not checked" in out and "result: FAILED" in out


def test_validate_passes_on_the_phantom(phantom_dir, capsys):
    code, out, _ = run(capsys, "validate", "--data", phantom_dir)
    assert code == 0, out
    assert "studies: 8 (train.csv)" in out and "train images: 8 studies" in out and "test images: 2 studies" in out


def test_folds_writes_once_and_overwrites_only_when_asked(tmp_path, capsys):
    data = write_folder(tmp_path / "d", n_studies=20)
    code, out, _ = run(capsys, "folds", "--data", data)
    assert code == 0 and str(data / "folds.csv") in out
    first = load_folds(data / "folds.csv")
    assert first["fold"].value_counts().tolist() == [4] * 5
    code, _, err = run(capsys, "folds", "--data", data, "--seed", "1")
    assert code == 2 and "folds.csv exists" in err and "--overwrite" in err
    assert load_folds(data / "folds.csv").equals(first)
    code, _, _ = run(capsys, "folds", "--data", data, "--seed", "1", "--overwrite")
    assert code == 0 and not load_folds(data / "folds.csv").equals(first)


def _all_normal_folder(root, n_studies: int = 10):
    """A folder whose every label is Normal/Mild: the prior and the scores of constant predictions are known."""
    tables = make_tables(n_studies)
    tables["train.csv"].loc[:, list(TARGET_COLUMNS)] = "Normal/Mild"
    return write_folder(root, tables=tables)


def test_prior_prints_the_hand_computed_scores(tmp_path, capsys):
    data = _all_normal_folder(tmp_path / "d")
    code, out, _ = run(capsys, "prior", "--data", data)
    assert code == 0 and out.splitlines()[0] == "image-free prior, k-fold CV"
    # 10 studies in 5 folds: each prediction comes from 8 Normal/Mild studies. Counts 8, 0, 0 plus 0.5 each,
    # times the class weights 1, 2, 4: 8.5, 1, 2 of 11.5. Every row is Normal/Mild with weight 1.
    per_row = -math.log(8.5 / 11.5)
    any_severe = -math.log(1 - 2 / 11.5)
    values = {line.split()[0]: float(line.split()[1]) for line in out.splitlines()[1:]}
    assert values == pytest.approx({"spinal": per_row, "foraminal": per_row, "subarticular": per_row,
                                    "any_severe_spinal": any_severe, "total": (3 * per_row + any_severe) / 4},
                                   abs=5e-5)


def test_score_reports_how_many_labelled_rows_it_scored(tmp_path, capsys):
    data = _all_normal_folder(tmp_path / "d")
    train = pd.read_csv(data / "train.csv")
    train.loc[0, TARGET_COLUMNS[0]] = None  # one missing label: 249 labelled rows
    train.to_csv(data / "train.csv", index=False)
    sub = pd.DataFrame({"row_id": [f"{s}_{t}" for s in train["study_id"] for t in TARGET_COLUMNS],
                        "normal_mild": 0.7, "moderate": 0.2, "severe": 0.1})
    expected = (3 * -math.log(0.7) - math.log(0.9)) / 4
    sub.to_csv(tmp_path / "all.csv", index=False)
    code, out, err = run(capsys, "score", "--data", data, "--submission", tmp_path / "all.csv", "--require-all")
    assert code == 0 and total_line(out) == pytest.approx(expected, abs=5e-5)
    assert out.splitlines()[-1] == "scored 249 of 249 labelled rows"
    part = sub.iloc[25:200]  # studies 2 to 8 (the first holds the missing label)
    part.to_csv(tmp_path / "part.csv", index=False)
    code, out, _ = run(capsys, "score", "--data", data, "--submission", tmp_path / "part.csv")
    assert code == 0 and total_line(out) == pytest.approx(expected, abs=5e-5)
    assert out.splitlines()[-1].startswith("scored 175 of 249 labelled rows; 74 labelled rows have no prediction "
                                           f"(e.g. {train['study_id'].iloc[0]}_")
    code, out, err = run(capsys, "score", "--data", data, "--submission", tmp_path / "part.csv", "--require-all")
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.strip().startswith(f"rsna2024 score: error: {tmp_path / 'part.csv'}: scored 175 of 249 labelled rows; "
                                  f"74 labelled rows have no prediction (e.g. ")
    assert err.strip().endswith("(and 71 more)); expected a prediction for every labelled row")


def test_score_refuses_unknown_rows_and_bad_values(tmp_path, capsys):
    data = write_folder(tmp_path / "d", n_studies=6, seed=2)
    sub = pd.DataFrame({"row_id": [f"{s}_{t}" for s in pd.read_csv(data / "train.csv")["study_id"][:2]
                                   for t in TARGET_COLUMNS], "normal_mild": 0.5, "moderate": 0.3, "severe": 0.2})
    bad = pd.concat([sub, sub.iloc[:1].assign(row_id="999_spinal_canal_stenosis_l1_l2")])
    bad.to_csv(tmp_path / "bad.csv", index=False)
    code, _, err = run(capsys, "score", "--data", data, "--submission", tmp_path / "bad.csv")
    assert code == 2 and err.strip() == (f"rsna2024 score: error: {tmp_path / 'bad.csv'}: 1 row_id(s) not in "
                                         f"{data / 'train.csv'}: 999_spinal_canal_stenosis_l1_l2")
    for column, value, problem in (("severe", -1.0, "negative"), ("moderate", None, "NaN or non-numeric")):
        sub.assign(**{column: value}).to_csv(tmp_path / "v.csv", index=False)
        code, _, err = run(capsys, "score", "--data", data, "--submission", tmp_path / "v.csv")
        assert code == 2 and f"{tmp_path / 'v.csv'}: 50 row(s) hold {problem} values" in err


def test_score_of_prior_oof_file_matches_the_prior_command(tmp_path, capsys):
    """The OOF file ``prior_oof`` gives, written to disk and scored, reproduces the prior's figure."""
    data = write_folder(tmp_path / "d", n_studies=30, seed=2)
    run(capsys, "folds", "--data", data)
    prior_oof(load_labels_wide(data), load_folds(data / "folds.csv")).to_csv(tmp_path / "oof.csv", index=False)
    code, scored, _ = run(capsys, "score", "--data", data, "--submission", tmp_path / "oof.csv", "--require-all")
    assert code == 0
    assert total_line(scored) == total_line(run(capsys, "prior", "--data", data)[1])


@pytest.mark.realdata
def test_prior_on_the_real_labels_through_the_cli(tmp_path, capsys):
    data = link_realdata(tmp_path / "real")
    code, out, _ = run(capsys, "prior", "--data", data)
    assert code == 0 and total_line(out) == pytest.approx(0.792, abs=0.01)  # the real prior's known figure
    code, out, _ = run(capsys, "validate", "--data", data)
    assert code == 0 and "studies: 1975" in out and "missing labels: 572" in out


def test_console_script_entry_point():
    script = Path(sys.executable).with_name("rsna2024")
    result = subprocess.run([str(script), "validate", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--data" in result.stdout
