"""The keypoint tasks trained for real (tiny models, 2 folds of the test phantom): bitwise resume, OOF files,
``rsna2024 coords`` (out of fold and test mean; missing and unreadable series warn and give empty rows) and
``rsna2024 keypoint-report``."""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from rsna2024.cli import main as cli_main
from rsna2024.constants import AXIAL_T2, CONDITION_NAMES, CONDITION_SERIES, CONDITIONS
from rsna2024.data.folds import assign_folds
from rsna2024.errors import ConfigError
from rsna2024.keypoints.coords import predict_coordinates
from rsna2024.keypoints.studies import StudySeries
from rsna2024.training.checkpoint import load_checkpoint
from rsna2024.training.config import config_from_dict
from rsna2024.training.trainer import train_fold

TASKS = ("keypoint_sagt2", "keypoint_sagt1", "keypoint_axial")
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(task: str, epochs: int = 1, **data):
    """A tiny CPU config of ``task``: 2 folds, 32 px, tiny Unet, batch 4, augmentation on."""
    flip = 0.5 if task == "keypoint_axial" else 0.0
    return config_from_dict({
        "name": task, "task": task, "folds": 2, "epochs": epochs, "batch_size": 4, "workers": 0, "device": "cpu",
        "seed": 3, "model": {"name": "keypoint_tiny"}, "optim": {"lr": 3e-3},
        "data": {"image_size": 32, "slices": 5 if task == "keypoint_sagt2" else 3, "sigma": 1.5,
                 "augment": {"hflip": flip}, **data}})


@pytest.fixture(scope="module")
def folds_file(phantom_dir, tmp_path_factory):
    studies = pd.read_csv(phantom_dir / "train.csv")["study_id"]
    path = tmp_path_factory.mktemp("kp_folds") / "folds.csv"
    assign_folds(studies, np.zeros(len(studies)), n_folds=2, seed=0).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def runs(phantom_dir, phantom_cache, folds_file, tmp_path_factory):
    """The three tiny keypoint runs, both folds trained (Sag T1 with the spatial cross-entropy, so the coordinate
    tests read both kinds of model output)."""
    out = tmp_path_factory.mktemp("kp_runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for task in TASKS:
            for fold in (0, 1):
                cfg = tiny_config(task, loss="spatial_ce" if task == "keypoint_sagt1" else "mse")
                train_fold(cfg, phantom_dir, fold, out=out, cache=phantom_cache, folds_file=folds_file)
    finally:
        torch.set_num_threads(threads)
    return {task: out / task for task in TASKS}


def _missing_series(phantom_dir):
    """(study, series type) of the training study the test phantom made lack a sagittal series."""
    for study in json.loads((phantom_dir / "phantom" / "studies.json").read_text()):
        role = study["quirks"]["missing_series"]
        if study["split"] == "train" and role:
            return study["study_id"], {"sag_t1": "Sagittal T1", "sag_t2": "Sagittal T2/STIR"}[role]
    raise AssertionError("the test phantom has no study lacking a series")


def test_interrupted_fold_resumes_to_the_same_weights(phantom_dir, phantom_cache, folds_file, tmp_path):
    cfg = tiny_config("keypoint_sagt2", epochs=2)

    class Interrupt(Exception):
        pass

    def stop_after_first(epoch, record):
        if epoch == 0:
            raise Interrupt

    train_fold(cfg, phantom_dir, 0, out=tmp_path / "a", cache=phantom_cache, folds_file=folds_file)
    with pytest.raises(Interrupt):
        train_fold(cfg, phantom_dir, 0, out=tmp_path / "b", cache=phantom_cache, folds_file=folds_file,
                   callbacks=[stop_after_first])
    assert load_checkpoint(tmp_path / "b" / cfg.name / "fold0_last.pt")["epoch"] == 0
    train_fold(cfg, phantom_dir, 0, out=tmp_path / "b", cache=phantom_cache, folds_file=folds_file)
    a = load_checkpoint(tmp_path / "a" / cfg.name / "fold0_last.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / cfg.name / "fold0_last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    done = json.loads((tmp_path / "b" / cfg.name / "fold0_done.json").read_text())
    assert done["metric"] == "median_error_mm" and np.isfinite(done["best_value"])


def test_sagittal_flip_is_refused():
    with pytest.raises(ConfigError, match="hflip"):
        from rsna2024.training.task import create_task

        create_task(tiny_config("keypoint_sagt1", augment={"hflip": 0.5}))


def test_unknown_keypoint_loss_is_refused():
    with pytest.raises(ConfigError, match="spatial_ce"):
        tiny_config("keypoint_sagt2", loss="l1")


def test_fold_outputs_are_oof_points(runs, folds_file):
    folds = pd.read_csv(folds_file)
    for task, run in runs.items():
        for fold in (0, 1):
            oof = pd.read_csv(run / f"oof_fold{fold}.csv")
            assert set(oof["study_id"]) <= set(folds.loc[folds["fold"] == fold, "study_id"])
            assert (oof["fold"] == fold).all() and oof["x"].notna().all()
            per_sample = {"keypoint_sagt2": 5, "keypoint_sagt1": 10, "keypoint_axial": 10}[task]
            assert len(oof) == per_sample * oof["study_id"].nunique() or task == "keypoint_axial"


def test_coords_oof_rows_and_missing_series(runs, phantom_dir, phantom_cache, folds_file, tmp_path, caplog):
    out = tmp_path / "coords.csv"
    args = ["coords", "--data", str(phantom_dir), "--runs", *map(str, runs.values()), "--split", "train",
            "--out", str(out), "--cache", str(phantom_cache), "--folds", str(folds_file), "--device", "cpu"]
    with caplog.at_level(logging.WARNING, logger="rsna2024"):
        assert cli_main(args) == 0
    table = pd.read_csv(out)
    studies = pd.read_csv(phantom_dir / "train.csv")["study_id"]
    assert sorted(table["study_id"].unique()) == sorted(studies)
    assert len(table) == 25 * len(studies)
    assert list(table.columns[:9]) == ["study_id", "series_id", "instance_number", "condition", "level", "x", "y",
                                       "confidence", "fold"]
    folds = pd.read_csv(folds_file).set_index("study_id")["fold"]
    filled = table.dropna(subset=["x"])
    assert (filled["fold"].to_numpy() == folds.loc[filled["study_id"]].to_numpy()).all()  # out of fold

    lacking, series_type = _missing_series(phantom_dir)
    rows = table[table["study_id"] == lacking]
    of_type = rows["condition"].isin([CONDITION_NAMES[c] for c in CONDITIONS if CONDITION_SERIES[c] == series_type])
    assert rows.loc[of_type, ["series_id", "instance_number", "x", "y"]].isna().all().all()
    assert any(str(lacking) in r.getMessage() and series_type in r.getMessage() for r in caplog.records)
    if series_type != "Sagittal T2/STIR":  # the other series types of that study are predicted
        assert rows.loc[~of_type, "x"].notna().any()

    # every filled row: a real instance of its series; x_mm is that stored pixel in patient mm
    desc = pd.read_csv(phantom_dir / "train_series_descriptions.csv")
    studies_ = StudySeries(phantom_cache, desc, "train")
    for r in filled.sample(20, random_state=0).itertuples():
        s = studies_.load(r.study_id, r.series_id)
        np.testing.assert_allclose(s.to_patient(int(r.instance_number), r.x, r.y), [r.x_mm, r.y_mm, r.z_mm],
                                   atol=1e-6)
    assert cli_main(args) == 2  # refuses to overwrite
    assert cli_main(args + ["--overwrite"]) == 0


def test_coords_test_split_averages_the_folds(runs, phantom_dir, phantom_cache):
    table = predict_coordinates(phantom_dir, list(runs.values()), "test", phantom_cache, device="cpu")
    test_ids = pd.read_csv(phantom_dir / "test_series_descriptions.csv")["study_id"].unique()
    assert sorted(table["study_id"].unique()) == sorted(test_ids) and len(table) == 25 * len(test_ids)
    assert (table["fold"] == -1).all() and table["x"].notna().mean() > 0.8


def test_slice_search_keeps_the_surest_nearby_slice(runs, phantom_dir, phantom_cache, folds_file):
    plain = predict_coordinates(phantom_dir, [runs["keypoint_sagt1"]], "train", phantom_cache, device="cpu",
                                folds_path=folds_file).dropna(subset=["x"])
    searched = predict_coordinates(phantom_dir, [runs["keypoint_sagt1"]], "train", phantom_cache, device="cpu",
                                   folds_path=folds_file, slice_search_mm=8.0).dropna(subset=["x"])
    both = plain.merge(searched, on=["study_id", "condition", "level"], suffixes=("", "_s"))
    assert len(both) == len(plain) > 0
    # the usual centre slice is one of the candidates, so the kept one is at least as sure
    assert (both["confidence_s"] >= both["confidence"] - 1e-6).all()
    studies = StudySeries(phantom_cache, pd.read_csv(phantom_dir / "train_series_descriptions.csv"), "train")
    for r in both.itertuples():
        s = studies.load(r.study_id, r.series_id)
        offsets = s.slice_offsets
        moved = abs(offsets[s.index_of(int(r.instance_number_s))] - offsets[s.index_of(int(r.instance_number))])
        assert moved <= 8.0 + 1e-6
    assert (both["instance_number_s"] != both["instance_number"]).any()  # the search does pick other slices


def test_coords_warns_for_an_unreadable_series(runs, phantom_dir, phantom_cache, folds_file, tmp_path, caplog):
    cache = tmp_path / phantom_cache.name
    shutil.copytree(phantom_cache, cache)
    desc = pd.read_csv(phantom_dir / "train_series_descriptions.csv")
    victim = desc[desc["series_description"] == "Sagittal T1"].iloc[0]
    (cache / "series" / str(victim.study_id) / f"{victim.series_id}.npy").unlink()
    with caplog.at_level(logging.WARNING, logger="rsna2024"):
        table = predict_coordinates(phantom_dir, [runs["keypoint_sagt1"]], "train", cache, device="cpu",
                                    folds_path=folds_file)
    rows = table[(table["study_id"] == victim.study_id) & table["condition"].str.contains("Foraminal")]
    assert len(rows) == 10 and rows["x"].isna().all()
    assert any(str(victim.study_id) in r.getMessage() and "cannot read" in r.getMessage() for r in caplog.records)
    # runs of only some tasks leave the other rows empty; other studies are filled
    assert table.loc[table["condition"].str.contains("Foraminal") & (table["study_id"] != victim.study_id),
                     "x"].notna().any()


def test_keypoint_report_writes_its_tables(runs, phantom_dir, phantom_cache, folds_file, tmp_path):
    coords = tmp_path / "coords.csv"
    assert cli_main(["coords", "--data", str(phantom_dir), "--runs", *map(str, runs.values()), "--split", "train",
                     "--out", str(coords), "--cache", str(phantom_cache), "--folds", str(folds_file),
                     "--device", "cpu"]) == 0
    out = tmp_path / "report"
    assert cli_main(["keypoint-report", "--data", str(phantom_dir), "--coords", str(coords), "--out", str(out),
                     "--cache", str(phantom_cache), "--overlays", "2"]) == 0
    errors = pd.read_csv(out / "errors.csv")
    assert set(errors["series_type"]) == {"Sagittal T1", "Sagittal T2/STIR", "Axial T2"}
    assert {"median_mm", "p90_mm", "points", "predicted"} <= set(errors.columns)
    overall = errors[errors["level"] == "all"].set_index("series_type")
    assert (overall["median_mm"] > 0).all() and (overall["p90_mm"] >= overall["median_mm"]).all()
    axial = pd.read_csv(out / "axial_slices.csv")
    assert list(axial["level"]) == ["l1_l2", "l2_l3", "l3_l4", "l4_l5", "l5_s1", "all"]
    assert axial["within_one_slice"].between(0, 1).all()
    pngs = sorted((out / "overlays").glob("*.png"))
    assert len(pngs) == 2 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    text = (out / "report.md").read_text()
    assert "3-D error" in text and "overlays/" in text
    points = pd.read_csv(out / "points.csv")
    # a perfect prediction scores 0 mm: the true coordinates as their own prediction
    truth = pd.read_csv(phantom_dir / "train_label_coordinates.csv")
    from rsna2024.keypoints.report import keypoint_report

    perfect = keypoint_report(phantom_dir, truth, tmp_path / "perfect", phantom_cache, overlays=0)
    assert perfect["points"]["error_mm"].max() < 1e-6
    assert (perfect["axial_slices"]["within_one_slice"] == 1.0).all()
    assert len(points) == len(truth)


def test_axial_slice_share_needs_every_side_within_one_slice():
    from rsna2024.keypoints.report import axial_slice_table

    rows = [  # study 1: both sides within one; study 2: right two slices off; study 3: left unpredicted
        (1, "Left Subarticular Stenosis", 0, 5), (1, "Right Subarticular Stenosis", 1, 6),
        (2, "Left Subarticular Stenosis", 0, 5), (2, "Right Subarticular Stenosis", 2, 7),
        (3, "Left Subarticular Stenosis", np.nan, -1), (3, "Right Subarticular Stenosis", 0, 4),
    ]
    errors = pd.DataFrame([{"study_id": s, "condition": c, "level": "L4/L5", "series_type": AXIAL_T2,
                            "slice_diff": d, "pred_slice": p} for s, c, d, p in rows])
    table = axial_slice_table(errors).set_index("level")
    assert table.loc["l4_l5", "levels"] == 3
    assert table.loc["l4_l5", "within_one_slice"] == pytest.approx(1 / 3)
    assert table.loc["all", "unpredicted"] == 0  # study 3 still predicted its right side


def test_axial_sides_of_a_level_share_the_slice_with_the_highest_summed_confidence():
    from rsna2024.keypoints.coords import CoordinatePredictor
    from rsna2024.keypoints.predict import POINT_COLUMNS

    def row(condition, slice_index, confidence):
        return {**dict.fromkeys(POINT_COLUMNS, 0.0), "study_id": 1, "series_id": 7, "level": "L4/L5",
                "condition": condition, "slice_index": slice_index, "confidence": confidence, "fold": 0}

    # slice 3: left 0.6 + right 0.1 = 0.7; slice 4: left 0.5 + right 0.9 = 1.4 -> both sides on slice 4,
    # though the left side alone would prefer slice 3
    table = pd.DataFrame([row("Left Subarticular Stenosis", 3, 0.6), row("Right Subarticular Stenosis", 3, 0.1),
                          row("Left Subarticular Stenosis", 4, 0.5), row("Right Subarticular Stenosis", 4, 0.9)])
    predictor = CoordinatePredictor.__new__(CoordinatePredictor)
    predictor.study_folds = {1: 0}
    shared = predictor._combine(table, one_slice_per_level=True)
    assert sorted(shared["slice_index"]) == [4, 4] and len(shared) == 2
    separate = predictor._combine(table)
    assert dict(zip(separate["condition"], separate["slice_index"])) == {
        "Left Subarticular Stenosis": 3, "Right Subarticular Stenosis": 4}
