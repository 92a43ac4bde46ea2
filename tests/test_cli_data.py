"""The data commands end to end through ``rsna2024.cli.main``: validate, folds, prior, score."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from kaggle_folder import link_realdata, make_tables, write_folder

from rsna2024.cli import main
from rsna2024.data.contract import load_labels_wide
from rsna2024.data.folds import load_folds
from rsna2024.data.prior import evaluate_prior, prior_oof
from rsna2024.metric import format_scores


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


def test_prior_prints_the_scores_of_evaluate_prior(tmp_path, capsys):
    data = write_folder(tmp_path / "d", n_studies=40, seed=5)
    assert run(capsys, "folds", "--data", data)[0] == 0
    code, out, _ = run(capsys, "prior", "--data", data)
    assert code == 0
    assert out.strip() == format_scores(evaluate_prior(data), title="image-free prior, k-fold CV")
    for key in ("total", "spinal", "foraminal", "subarticular", "any_severe_spinal"):
        assert key in out


def test_score_scores_an_oof_file_and_names_unknown_rows(tmp_path, capsys):
    data = write_folder(tmp_path / "d", n_studies=30, seed=2)
    run(capsys, "folds", "--data", data)
    wide, folds = load_labels_wide(data), load_folds(data / "folds.csv")
    oof = prior_oof(wide, folds)
    oof.to_csv(tmp_path / "oof.csv", index=False)
    code, out, _ = run(capsys, "score", "--data", data, "--submission", tmp_path / "oof.csv")
    assert code == 0 and total_line(out) == pytest.approx(evaluate_prior(data)["total"], abs=5e-5)
    # an OOF file of a single fold is scored over its own rows
    part = oof[oof["row_id"].str.split("_").str[0].astype(int).isin(folds.loc[folds["fold"] == 0, "study_id"])]
    part.to_csv(tmp_path / "fold0.csv", index=False)
    assert run(capsys, "score", "--data", data, "--submission", tmp_path / "fold0.csv")[0] == 0
    bad = pd.concat([part, part.iloc[:1].assign(row_id="999_spinal_canal_stenosis_l1_l2")])
    bad.to_csv(tmp_path / "bad.csv", index=False)
    code, _, err = run(capsys, "score", "--data", data, "--submission", tmp_path / "bad.csv")
    assert code == 2 and "999_spinal_canal_stenosis_l1_l2" in err and "not in" in err
    part.assign(severe=-1.0).to_csv(tmp_path / "neg.csv", index=False)
    code, _, err = run(capsys, "score", "--data", data, "--submission", tmp_path / "neg.csv")
    assert code == 2 and "negative" in err


@pytest.mark.realdata
def test_prior_on_the_real_labels_through_the_cli(tmp_path, capsys):
    data = link_realdata(tmp_path / "real")
    code, out, _ = run(capsys, "prior", "--data", data)
    assert code == 0
    assert total_line(out) == pytest.approx(round(evaluate_prior(data)["total"], 4), abs=1e-12)
    assert total_line(out) == pytest.approx(0.792, abs=0.01)
    code, out, _ = run(capsys, "validate", "--data", data)
    assert code == 0 and "studies: 1975" in out and "missing labels: 572" in out


def test_console_script_entry_point():
    script = Path(sys.executable).with_name("rsna2024")
    result = subprocess.run([str(script), "validate", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--data" in result.stdout
